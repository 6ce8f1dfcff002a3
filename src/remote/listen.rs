//! The receiver reached through a port-forward (`promigrate receive --listen`).
//!
//! The stream through the exec's stdin/stdout crosses the API server, the kubelet, the
//! runtime and its shim; a port-forward to the pod's loopback leaves the shim and the stdio
//! pipes out, and the API server only relays its bytes (docs/receiver.md, "The stream"). The
//! exec still starts the receiver and lives as long as it does:
//!
//! 1. the receiver listens on a loopback port the kernel picks and says on its stdout
//!    `PROMIGRATE-LISTEN <port> <token>` (the token: 128 random bits, in hex);
//! 2. the driver opens a port-forward to that port and sends the token and a newline;
//!    the receiver answers `ok` and a newline, and the protocol runs on that connection;
//! 3. or, when the port-forward cannot be opened (refused, or the runtime could not
//!    connect), the driver writes `stdio` and a newline on the exec's stdin, and the
//!    protocol runs on the exec's stdin/stdout as without `--listen`.
//!
//! (When the driver's credentials may not port-forward, or it is told to use the exec, it
//! runs `receive` without `--listen`.)
//!
//! A connection that does not bring the token within [`TOKEN_WAIT`] is closed (only this
//! pod's processes and whoever may port-forward to it can reach the port at all); nothing
//! is done until one does. Without a choice within [`CHOICE_WAIT`] the receiver ends.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use super::frame::FrameError;
use crate::k8s::handshake::{ACCEPTED, CHOICE_WAIT, USE_STDIO, listening_line};

/// How long a connection has to bring the token.
const TOKEN_WAIT: Duration = Duration::from_secs(30);

/// How the driver reached the receiver.
enum Way {
    Connection(TcpStream),
    Stdio(BufReader<io::Stdin>),
    /// Stdin ended, or said something else.
    Gone(String),
}

/// A new token: 128 random bits in hex.
fn new_token() -> io::Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(io::Error::other)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Whether `conn` brings `token` (and a newline) within [`TOKEN_WAIT`] in all.
fn brings(conn: &mut TcpStream, token: &str) -> bool {
    let until = Instant::now() + TOKEN_WAIT;
    let mut got = vec![0u8; token.len() + 1];
    let mut have = 0;
    while have < got.len() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || conn.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        match conn.read(&mut got[have..]) {
            Ok(0) => return false,
            Ok(n) => have += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    got[..token.len()] == *token.as_bytes()
        && got[token.len()] == b'\n'
        && conn.set_read_timeout(None).is_ok()
}

/// `promigrate receive --listen`: says where it listens, then serves the driver on the
/// connection that brings the token, or on stdin/stdout when the driver says so.
pub fn serve_listening() -> Result<(), FrameError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let port = listener.local_addr()?.port();
    let token = new_token()?;
    let mut out = io::stdout();
    out.write_all(listening_line(port, &token).as_bytes())?;
    out.flush()?;
    let (tx, rx) = mpsc::channel();
    let by_port = tx.clone();
    // Set once the stream is chosen: the listener takes no connection after that.
    let chosen = Arc::new(AtomicBool::new(false));
    let closed = chosen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            if closed.load(Ordering::Acquire) {
                return;
            }
            // Answered by the main thread once it has chosen this connection: the driver
            // ends the exec's stdin only after the answer, so that end is never taken for
            // its choice. Handed over after the choice, it is dropped (closed) with the
            // channel.
            if brings(&mut conn, &token) {
                let _ = by_port.send(Way::Connection(conn));
                return;
            }
        }
    });
    std::thread::spawn(move || {
        let mut r = BufReader::new(io::stdin());
        let mut line = Vec::new();
        let way = match r.read_until(b'\n', &mut line) {
            Ok(_) if line == USE_STDIO => Way::Stdio(r),
            Ok(0) => Way::Gone("the driver's stdin ended".into()),
            Ok(_) => Way::Gone(format!(
                "the driver said {:?}, not a choice of stream: use the same promigrate on both sides",
                String::from_utf8_lossy(&line)
            )),
            Err(e) => Way::Gone(format!("cannot read the driver's stdin: {e}")),
        };
        let _ = tx.send(way);
    });
    let way = rx.recv_timeout(CHOICE_WAIT);
    chosen.store(true, Ordering::Release);
    // A connection handed over after the choice is dropped (closed) at once, not kept.
    drop(rx);
    match way {
        Ok(Way::Connection(mut conn)) => {
            // Replies are small writes, from several workers: none waits for the ACK of
            // the one before.
            conn.set_nodelay(true)?;
            conn.write_all(ACCEPTED)?;
            let input = conn.try_clone()?;
            super::receiver::serve(input, conn)
        }
        Ok(Way::Stdio(r)) => super::receiver::serve(r, out),
        Ok(Way::Gone(why)) => Err(FrameError::Protocol(why)),
        Err(_) => Err(FrameError::Protocol(format!(
            "no driver connected within {} s",
            CHOICE_WAIT.as_secs()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::handshake::{LISTENING, parse_listening};

    #[test]
    fn a_listening_line_is_read_back_and_nothing_else_is_one() {
        let t = new_token().unwrap();
        assert_eq!(t.len(), 32);
        assert_ne!(t, new_token().unwrap());
        let line = listening_line(41234, &t);
        assert_eq!(parse_listening(&line), Some((41234, t.clone())));
        for bad in [
            "".to_string(),
            "sh: promigrate: not found".to_string(),
            format!("{LISTENING} 0 {t}"),
            format!("{LISTENING} 70000 {t}"),
            format!("{LISTENING} 80 {}", &t[..31]),
            format!("{LISTENING} 80 {}", "g".repeat(32)),
            format!("{LISTENING} 80 {t} more"),
        ] {
            assert_eq!(parse_listening(&bad), None, "{bad}");
        }
    }

    #[test]
    fn only_a_connection_with_the_token_is_accepted() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = l.local_addr().unwrap();
        let t = new_token().unwrap();
        for (sent, accepted) in [
            (format!("{t}\n"), true),
            (format!("{}\n", new_token().unwrap()), false),
            (t.clone(), false),
        ] {
            let sent2 = sent.clone();
            let client = std::thread::spawn(move || {
                let mut c = TcpStream::connect(addr).unwrap();
                c.write_all(sent2.as_bytes()).unwrap();
                if !sent2.ends_with('\n') {
                    // A token cut short: the connection ends without its newline.
                    c.shutdown(std::net::Shutdown::Write).unwrap();
                }
                let mut answer = Vec::new();
                let _ = c.read_to_end(&mut answer);
                answer
            });
            let (mut conn, _) = l.accept().unwrap();
            let brought = brings(&mut conn, &t);
            assert_eq!(brought, accepted, "{sent:?}");
            if brought {
                conn.write_all(ACCEPTED).unwrap();
            }
            drop(conn);
            let answer = client.join().unwrap();
            assert_eq!(answer == ACCEPTED, accepted, "{sent:?}: {answer:?}");
        }
    }
}
