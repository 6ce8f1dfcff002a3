//! The words of the handshake between the driver and `promigrate receive --listen`
//! ([`crate::remote::listen`], docs/receiver.md "The stream"): the receiver's line, the
//! driver's choice of the exec's stdin/stdout, the receiver's answer to the token. Here,
//! beside the driver's side ([`super::receiver`]), so that neither imports up.

use std::time::Duration;

/// The first word of the receiver's line.
pub const LISTENING: &str = "PROMIGRATE-LISTEN";
/// The driver's word on stdin for the stream through the exec.
pub const USE_STDIO: &[u8] = b"stdio\n";
/// The receiver's answer to the right token.
pub const ACCEPTED: &[u8] = b"ok\n";
/// How long the receiver waits for the driver's choice.
pub const CHOICE_WAIT: Duration = Duration::from_secs(180);

/// The port and the token of a receiver's line (`None`: not such a line).
pub fn parse_listening(line: &str) -> Option<(u16, String)> {
    let mut w = line.split_whitespace();
    if w.next()? != LISTENING {
        return None;
    }
    let port = w.next()?.parse().ok().filter(|p| *p != 0)?;
    let token = w.next()?;
    let good = token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit());
    (good && w.next().is_none()).then(|| (port, token.to_string()))
}

/// The line a receiver says.
pub fn listening_line(port: u16, token: &str) -> String {
    format!("{LISTENING} {port} {token}\n")
}
