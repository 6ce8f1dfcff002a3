//! A jump host's forwarded connection (`direct-tcpip`, what `ssh -J` asks of a bastion) as
//! a socket the next SSH session runs over. libssh2 takes a file descriptor for its
//! transport, so the channel is relayed to one end of a socket pair by a thread of its own,
//! which owns the jump session and ends (closing it) when the next session closes its end.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use ssh2::{BlockDirections, Channel, Session};

use super::{SshError, SshSpec};

/// A connection from the jump host `via` (connected, authenticated: `via_spec`) to
/// `next`'s host and port, as a socket for [`super::start`]. The host name is resolved by
/// the jump host, as OpenSSH has it.
/// `wire` is a duplicate of the jump session's socket, to wait on.
pub fn forward(
    via: Session,
    wire: OwnedFd,
    via_spec: &SshSpec,
    next: &SshSpec,
) -> Result<UnixStream, SshError> {
    let mut channel = via
        .channel_direct_tcpip(&next.host, next.port, None)
        .map_err(|e| {
            // A refusal ("administratively prohibited") stays one: it is not retried.
            let refused = e.message().contains("prohibited");
            let m = format!(
                "jump host {} could not open a connection to {}:{} ({}): check that the host name and port are right as the jump host sees them, and that its sshd allows forwarding (AllowTcpForwarding)",
                via_spec.describe(),
                next.host,
                next.port,
                e.message()
            );
            if refused {
                SshError::Auth(m)
            } else {
                SshError::Connect(m)
            }
        })?;
    let io_err = |e: io::Error| {
        SshError::Connect(format!(
            "cannot relay the jump through {}: {e}",
            via_spec.describe()
        ))
    };
    let (near, far) = UnixStream::pair().map_err(io_err)?;
    near.set_nonblocking(true).map_err(io_err)?;
    via.set_blocking(false);
    let name = via_spec.describe();
    std::thread::Builder::new()
        .name("ssh-jump".into())
        .spawn(move || {
            let ended = relay(&via, &mut channel, near, &wire);
            if let Err(e) = &ended {
                // The next session sees its connection end; this says where it broke.
                tracing::warn!("the connection through jump host {name} broke: {e}");
            }
            // Closed in blocking mode (briefly): non-blocking, libssh2 gives up on the
            // close at once and keeps the session's memory.
            via.set_timeout(2_000);
            via.set_blocking(true);
            if ended.is_ok() {
                let _ = channel.close();
            }
            drop(channel);
            let _ = via.disconnect(None, "done", None);
        })
        .map_err(io_err)?;
    Ok(far)
}

/// Moves bytes both ways between `channel` and `near` until either side closes.
fn relay(
    sess: &Session,
    channel: &mut Channel,
    mut near: UnixStream,
    wire: &OwnedFd,
) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    // Bytes read from one side not yet written to the other.
    let mut down: Vec<u8> = Vec::new(); // jump host -> next session
    let mut up: Vec<u8> = Vec::new(); // next session -> jump host
    let (mut remote_eof, mut local_eof) = (false, false);
    let mut last_keepalive = std::time::Instant::now();
    loop {
        let mut moved = false;
        if down.is_empty() && !remote_eof {
            match channel.read(&mut buf) {
                Ok(0) => remote_eof = channel.eof(),
                Ok(n) => {
                    down.extend_from_slice(&buf[..n]);
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if !down.is_empty() {
            match near.write(&down) {
                Ok(n) => {
                    down.drain(..n);
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The next session is gone: so is the need for this jump.
                Err(_) => return Ok(()),
            }
        }
        if remote_eof && down.is_empty() {
            let _ = near.shutdown(std::net::Shutdown::Write);
            return Ok(());
        }
        if up.is_empty() && !local_eof {
            match near.read(&mut buf) {
                Ok(0) => local_eof = true,
                Ok(n) => {
                    up.extend_from_slice(&buf[..n]);
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => local_eof = true,
            }
        }
        if !up.is_empty() {
            match channel.write(&up) {
                Ok(n) => {
                    up.drain(..n);
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if local_eof && up.is_empty() {
            // The next session closed its end: done (the jump session closes on drop).
            let _ = channel.send_eof();
            return Ok(());
        }
        if last_keepalive.elapsed() >= std::time::Duration::from_secs(15) {
            let _ = sess.keepalive_send();
            last_keepalive = std::time::Instant::now();
        }
        if moved {
            continue;
        }
        // Nothing moved: wait for what the next try needs, and only that (a socket polled
        // for what will not be read wakes the loop at once, over and over): the jump
        // host's socket when the channel will be read, or written to (a full window waits
        // for the host's window adjust), as libssh2 says it is blocked; the next session's
        // end when it will be read or written. At most 50 ms, for libssh2's own buffers.
        let channel_wanted = (down.is_empty() && !remote_eof) || !up.is_empty();
        let wire_flags = if channel_wanted {
            match sess.block_directions() {
                BlockDirections::Outbound => PollFlags::POLLOUT,
                BlockDirections::Both => PollFlags::POLLIN | PollFlags::POLLOUT,
                _ => PollFlags::POLLIN,
            }
        } else {
            PollFlags::empty()
        };
        let mut near_flags = PollFlags::empty();
        if up.is_empty() && !local_eof {
            near_flags |= PollFlags::POLLIN;
        }
        if !down.is_empty() {
            near_flags |= PollFlags::POLLOUT;
        }
        // A descriptor with nothing asked of it is left out: its hang-up would be reported
        // whatever the flags, and wake the loop for nothing.
        let mut fds = Vec::with_capacity(2);
        if !wire_flags.is_empty() {
            fds.push(PollFd::new(wire.as_fd(), wire_flags));
        }
        if !near_flags.is_empty() {
            fds.push(PollFd::new(near.as_fd(), near_flags));
        }
        match poll(&mut fds, PollTimeout::from(50u8)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}
