//! An exec, and a port-forward, whose data go out in large messages, for the receiver's stream.
//!
//! kube-client 5 sends an exec's stdin as one WebSocket message per read of at most 4 KiB
//! (a `ReaderStream` in its `remote_command.rs`). Every message crosses the API server, the
//! kubelet, containerd and the shim: on the test node that cost the receiver about three
//! quarters of its throughput against `kubectl exec` (docs/performance.md). Here the channel
//! protocol of `v5.channel.k8s.io` (or v4) is spoken over kube's own upgraded connection
//! ([`kube::Client::connect`]: its TLS, credentials and protocol negotiation), with stdin
//! messages of up to [`MESSAGE`] bytes.

use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::AttachParams;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_tungstenite::tungstenite::Message;

/// The largest message of data sent (an exec's stdin, a port-forward's data).
pub(super) const MESSAGE: usize = 256 << 10;
// A SPDY data frame's length has 24 bits.
const _: () = assert!(MESSAGE <= super::spdy::MAX_PAYLOAD);
/// What is buffered between the writer and the stdin messages, and before the reader.
pub(super) const PIPE: usize = 4 << 20;
/// How often a ping goes out (kube-client's exec: every 60 s).
const PING: std::time::Duration = std::time::Duration::from_secs(30);
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
/// The exec's end: a `metav1.Status`.
const ERROR: u8 = 3;
/// v5: `[CLOSE, channel]` closes that channel (stdin's end).
const CLOSE: u8 = 255;

/// The tasks that carry an exec's or a port-forward's streams: dropping this ends them
/// (the connection closes).
pub struct Session {
    pub(super) tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Session {
    /// One session of both: dropping it ends both.
    pub fn and(mut self, mut other: Session) -> Session {
        self.tasks.append(&mut other.tasks);
        self
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Where the command's stderr goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stderr {
    /// To the log, line by line, prefixed with the pod's name (the receiver's messages).
    Log,
    /// Kept in [`Ended::stderr`] (its first [`KEPT`] bytes), for the caller's message.
    Keep,
}

/// How much of a kept stderr is kept.
const KEPT: usize = 64 << 10;

/// What the stream said of how the command ended, complete once stdout has ended.
#[derive(Clone, Default)]
pub struct Ended(Arc<Mutex<EndedState>>);

#[derive(Default)]
pub(super) struct EndedState {
    stderr: Vec<u8>,
    pub(super) failed: Option<String>,
}

impl Ended {
    pub(super) fn state(&self) -> MutexGuard<'_, EndedState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The kept stderr ([`Stderr::Keep`]), as text.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.state().stderr).into_owned()
    }

    /// The message of the exec's status when it was not `Success` (a command not found, an
    /// exit code); for a port-forward, the runtime's error or why the connection broke.
    pub fn failed(&self) -> Option<String> {
        self.state().failed.clone()
    }
}

/// The command's stdout to read, its stdin to write (shut it down to close it), and the
/// session. Its stderr goes where [`Stderr`] says; how the exec ended is in `ended` once
/// stdout has ended.
pub struct Exec {
    pub stdout: DuplexStream,
    pub stdin: DuplexStream,
    pub session: Session,
    pub ended: Ended,
    /// Whether the command's stdin can be ended while its stdout goes on (`v5.channel.k8s.io`,
    /// Kubernetes 1.30 and later); with v4 only the whole connection can be closed.
    pub ends_stdin: bool,
}

/// What the sending task does when its pipe ends.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum AtEnd {
    /// v5: closes the channel; the connection stays open for what comes back.
    CloseChannel,
    /// v4 exec: nothing (only the whole connection could be closed, which would cut what
    /// comes back).
    KeepOpen,
    /// Closes the connection (a port-forward: the pod's side of it then gets EOF).
    CloseConnection,
}

/// How the data sent is framed in each WebSocket message.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// The channel protocols' (exec, WebSocket port-forward): the channel's byte first.
    Channel(u8),
    /// A SPDY data frame on this stream (the port-forward through the tunnel).
    Spdy(u32),
}

impl Framing {
    fn head(self) -> usize {
        match self {
            Framing::Channel(_) => 1,
            Framing::Spdy(_) => super::spdy::DATA_HEADER,
        }
    }

    /// Writes the head of a message carrying `n` bytes into `buf`'s first [`Framing::head`]
    /// bytes.
    fn write(self, buf: &mut [u8], n: usize) {
        match self {
            Framing::Channel(c) => buf[0] = c,
            Framing::Spdy(id) => buf[..super::spdy::DATA_HEADER]
                .copy_from_slice(&super::spdy::data_header(id, false, n)),
        }
    }
}

/// Sends what is written into `pipe`, framed as `framing` says, in messages of up to
/// [`MESSAGE`] bytes of data; with what comes on `extra` (a SPDY server's ping answered)
/// between them, and a ping now and then.
pub(super) async fn send<S>(
    mut sink: S,
    mut pipe: DuplexStream,
    framing: Framing,
    at_end: AtEnd,
    mut extra: Option<tokio::sync::mpsc::Receiver<Vec<u8>>>,
) where
    S: futures_util::Sink<Message> + Unpin,
{
    let head = framing.head();
    let mut buf = vec![0u8; MESSAGE + head];
    // A ping now and then, as kube-client's exec does: a connection that waits long for a
    // reply (the receiver hashing a large volume) is not dropped as idle by a load balancer
    // before the API server, and a dead one shows as an error.
    let mut ping = tokio::time::interval(PING);
    ping.tick().await;
    let mut spdy_ping: u32 = 1;
    let mut open = true;
    loop {
        tokio::select! {
            r = pipe.read(&mut buf[head..]), if open => match r {
                Ok(0) | Err(_) => {
                    open = false;
                    let sent = match (at_end, framing) {
                        (AtEnd::CloseChannel, Framing::Channel(c)) => {
                            sink.send(Message::binary(vec![CLOSE, c])).await
                        }
                        (AtEnd::CloseChannel | AtEnd::KeepOpen, _) => Ok(()),
                        (AtEnd::CloseConnection, _) => {
                            let _ = sink.close().await;
                            return;
                        }
                    };
                    if sent.is_err() {
                        return;
                    }
                }
                Ok(n) => {
                    framing.write(&mut buf, n);
                    if sink.send(Message::binary(buf[..head + n].to_vec())).await.is_err() {
                        return;
                    }
                }
            },
            m = async { extra.as_mut()?.recv().await }, if extra.is_some() => match m {
                Some(m) => {
                    if sink.send(Message::binary(m)).await.is_err() {
                        return;
                    }
                }
                None => extra = None,
            },
            _ = ping.tick() => {
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
                // Through the tunnel the WebSocket's ping ends at the API server: a SPDY
                // PING (odd: the client's) reaches the runtime, whose SPDY connection counts
                // only SPDY frames against its idle timeout (kubectl's tunnel: every 10 s).
                if let Framing::Spdy(_) = framing {
                    spdy_ping = spdy_ping.wrapping_add(2);
                    if sink.send(Message::binary(super::spdy::ping(spdy_ping))).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// The next channel message of `source`: its channel (the first byte) and its data (the
/// other messages, and empty ones, are skipped); `None` once the connection is closed or
/// ends.
pub(super) async fn next_on_channel<S>(
    source: &mut S,
) -> Option<
    Result<(u8, tokio_tungstenite::tungstenite::Bytes), tokio_tungstenite::tungstenite::Error>,
>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match source.next().await? {
            Ok(Message::Binary(d)) if !d.is_empty() => return Some(Ok((d[0], d.slice(1..)))),
            Ok(Message::Close(_)) => return None,
            Ok(_) => {}
            Err(e) => return Some(Err(e)),
        }
    }
}

/// Runs `command` in pod `name`'s (only) container, with stdin, stdout and stderr.
pub async fn exec(
    pods: &Api<Pod>,
    name: &str,
    command: &[&str],
    shown: &str,
    stderr: Stderr,
) -> anyhow::Result<Exec> {
    let ap = AttachParams::default()
        .stdin(true)
        .stdout(true)
        .stderr(true);
    let req =
        kube::core::Request::new(pods.resource_url()).exec(name, command.iter().copied(), &ap)?;
    let conn = pods.clone().into_client().connect(req).await?;
    let closes = conn.supports_stream_close();
    let (sink, mut source) = conn.into_stream().split();
    // Duplex pipes, each used one way: when a task ends (or is aborted) its end is dropped,
    // and the other side gets EOF or a broken pipe instead of waiting forever.
    let (stdin_r, stdin_w) = tokio::io::duplex(PIPE);
    let (stdout_r, mut stdout_w) = tokio::io::duplex(PIPE);
    let at_end = if closes {
        AtEnd::CloseChannel
    } else {
        AtEnd::KeepOpen
    };
    let send = tokio::spawn(send(sink, stdin_r, Framing::Channel(STDIN), at_end, None));
    let who = shown.to_string();
    let ended = Ended::default();
    let ended_w = ended.clone();
    let recv = tokio::spawn(async move {
        let mut err_line = Vec::new();
        while let Some(next) = next_on_channel(&mut source).await {
            let (channel, data) = match next {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!("{who}: the exec stream broke: {e}");
                    break;
                }
            };
            let rest = &data[..];
            match channel {
                STDOUT if stdout_w.write_all(rest).await.is_err() => break,
                STDERR if stderr == Stderr::Keep => {
                    let k = &mut ended_w.state().stderr;
                    let room = KEPT.saturating_sub(k.len());
                    k.extend_from_slice(&rest[..rest.len().min(room)]);
                }
                STDERR => {
                    err_line.extend_from_slice(rest);
                    while let Some(i) = err_line.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = err_line.drain(..=i).collect();
                        tracing::info!(
                            target: "promigrate::receiver",
                            "{who}: {}",
                            String::from_utf8_lossy(&line).trim_end()
                        );
                    }
                }
                ERROR if !rest.is_empty() => {
                    let status: serde_json::Value =
                        serde_json::from_slice(rest).unwrap_or_default();
                    if status["status"] != "Success" {
                        let message = status["message"].as_str().unwrap_or("(no message)");
                        if stderr == Stderr::Log {
                            tracing::warn!("{who}: the exec ended: {message}");
                        }
                        ended_w.state().failed = Some(message.to_string());
                    }
                }
                _ => {}
            }
        }
        let _ = stdout_w.shutdown().await;
    });
    Ok(Exec {
        stdout: stdout_r,
        stdin: stdin_w,
        session: Session {
            tasks: vec![send, recv],
        },
        ended,
        ends_stdin: closes,
    })
}
