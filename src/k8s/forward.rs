//! A port-forward to a port on a pod's loopback, for the receiver's stream: SPDY through the
//! API server's WebSocket tunnel (as `kubectl port-forward` speaks it), or the WebSocket
//! port-forward protocol; data goes out in messages of up to 256 KiB
//! (kube-client's `portforward` sends 4 KiB ones, and only the WebSocket protocol).

use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::exec::{AtEnd, Ended, Framing, PIPE, Session, next_on_channel, send};
use super::spdy;

/// How long the error stream's end is waited for once the data stream has ended.
const ERROR_LINGER: std::time::Duration = std::time::Duration::from_secs(5);

/// How much of what the server writes on the error stream is kept.
const SAID: usize = 4 << 10;

/// How a port-forward is spoken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// SPDY/3.1 through the API server's WebSocket tunnel (Kubernetes 1.31 and later): the
    /// runtime's streaming server reads SPDY, which costs it about a quarter of its WebSocket
    /// port-forward on the test node (docs/performance.md).
    Spdy,
    /// The WebSocket port-forward protocol (`v4.channel.k8s.io`), which every API server
    /// passes on.
    WebSocket,
}

impl Protocol {
    pub fn describe(self) -> &'static str {
        match self {
            Protocol::Spdy => "SPDY through the API server's WebSocket tunnel",
            Protocol::WebSocket => "WebSocket",
        }
    }
}

/// A port-forward's data to read and write (shut `to_pod` down to end it), and its session;
/// an error the pod's side reported (no one listening on the port) is in `ended` once
/// `from_pod` has ended.
pub struct Forward {
    pub from_pod: DuplexStream,
    pub to_pod: DuplexStream,
    pub session: Session,
    pub ended: Ended,
    pub protocol: Protocol,
}

/// A connection to `port` on the loopback of pod `name` (`pods/portforward`), spoken as
/// `protocol` says.
pub async fn open(
    pods: &Api<Pod>,
    name: &str,
    port: u16,
    shown: &str,
    protocol: Protocol,
) -> anyhow::Result<Forward> {
    match protocol {
        Protocol::Spdy => through_tunnel(pods, name, port, shown).await,
        Protocol::WebSocket => websocket(pods, name, port, shown).await,
    }
}

/// The WebSocket protocol of the kubelet's streaming server: one port, channel 0 its data
/// and channel 1 its error; the first message on each channel names the port (2 bytes,
/// little-endian).
async fn websocket(pods: &Api<Pod>, name: &str, port: u16, shown: &str) -> anyhow::Result<Forward> {
    const DATA: u8 = 0;
    const ERROR: u8 = 1;
    let req = kube::core::Request::new(pods.resource_url()).portforward(name, &[port])?;
    let conn = pods.clone().into_client().connect(req).await?;
    let (sink, mut source) = conn.into_stream().split();
    let who = shown.to_string();
    let recv = move |mut from_pod_w: DuplexStream, ended_w: Ended| async move {
        // Whether each channel's first message (the port) was seen.
        let mut named = [false; 2];
        while let Some(next) = next_on_channel(&mut source).await {
            let (channel, data) = match next {
                Ok(m) => m,
                Err(e) => {
                    broke(&who, &ended_w, &e);
                    break;
                }
            };
            let rest = &data[..];
            let Some(seen) = named.get_mut(usize::from(channel)) else {
                continue;
            };
            if !*seen {
                *seen = true;
                continue;
            }
            match channel {
                DATA if from_pod_w.write_all(rest).await.is_err() => break,
                ERROR => {
                    refused(&who, &ended_w, rest);
                    break;
                }
                _ => {}
            }
        }
        from_pod_w
    };
    Ok(started(
        sink,
        Framing::Channel(DATA),
        None,
        Protocol::WebSocket,
        recv,
    ))
}

/// A port-forward whose data go out on `sink` framed as `framing` (with what comes on
/// `extra`), and whose receiving task is `recv` (given where the pod's data go, and where
/// to say how it ended; it returns the former, which is then shut down).
fn started<S, R, F>(
    sink: S,
    framing: Framing,
    extra: Option<tokio::sync::mpsc::Receiver<Vec<u8>>>,
    protocol: Protocol,
    recv: R,
) -> Forward
where
    S: futures_util::Sink<Message> + Unpin + Send + 'static,
    R: FnOnce(DuplexStream, Ended) -> F,
    F: std::future::Future<Output = DuplexStream> + Send + 'static,
{
    let (to_pod_r, to_pod) = tokio::io::duplex(PIPE);
    let (from_pod, from_pod_w) = tokio::io::duplex(PIPE);
    let send = tokio::spawn(send(sink, to_pod_r, framing, AtEnd::CloseConnection, extra));
    let ended = Ended::default();
    let receiving = recv(from_pod_w, ended.clone());
    let recv = tokio::spawn(async move {
        let mut from_pod_w = receiving.await;
        let _ = from_pod_w.shutdown().await;
    });
    Forward {
        from_pod,
        to_pod,
        session: Session {
            tasks: vec![send, recv],
        },
        ended,
        protocol,
    }
}

/// The port-forward broke (the connection, or what came on it).
fn broke(who: &str, ended: &Ended, e: &dyn std::fmt::Display) {
    tracing::warn!("{who}: the port-forward broke: {e}");
    ended.state().failed.get_or_insert(e.to_string());
}

/// The runtime said on the error stream why it ended the port-forward.
fn refused(who: &str, ended: &Ended, said: &[u8]) {
    let why = String::from_utf8_lossy(said).trim().to_string();
    tracing::warn!("{who}: the runtime ended the port-forward: {why}");
    ended.state().failed.get_or_insert(why);
}

/// SPDY/3.1 through the API server's WebSocket tunnel ([`spdy`]): an error stream (on
/// which only the server writes) and a data stream for `port`, as `kubectl port-forward`
/// opens them. `Err` when the API server does not open the tunnel (it predates it, or the
/// feature is off) as well as for any other failure to open it.
async fn through_tunnel(
    pods: &Api<Pod>,
    name: &str,
    port: u16,
    shown: &str,
) -> anyhow::Result<Forward> {
    let ws = tunnel(pods, name, port).await?;
    let (mut sink, mut source) = ws.split();
    let mut headers = spdy::Headers::default();
    let port_s = port.to_string();
    let stream = |kind| {
        [
            ("streamtype", kind),
            ("port", port_s.as_str()),
            ("requestid", "0"),
        ]
    };
    let mut opening = headers.syn_stream(spdy::ERROR_STREAM, &stream("error"))?;
    opening.extend_from_slice(&spdy::fin(spdy::ERROR_STREAM));
    opening.extend_from_slice(&headers.syn_stream(spdy::DATA_STREAM, &stream("data"))?);
    sink.send(Message::binary(opening)).await?;

    let (pongs, pongs_r) = tokio::sync::mpsc::channel(16);
    let who = shown.to_string();
    let recv = move |mut from_pod_w: DuplexStream, ended_w: Ended| async move {
        let mut frames = spdy::Reader::default();
        // What the server wrote on the error stream, and a reset of either stream.
        let mut said = Vec::new();
        let mut reset = None;
        let (mut data_open, mut error_open) = (true, true);
        // The runtimes end the data stream before they write the error (containerd) or
        // after it (the kubelet's streaming server): once the data stream has ended, the
        // error stream's end is waited for (a little) before the data's end is passed on,
        // so that the reader finds the error in `ended` when it sees the end.
        let mut linger_until = None;
        let mut ended_early = None;
        'messages: while data_open || error_open {
            if !data_open && linger_until.is_none() {
                linger_until = Some(tokio::time::Instant::now() + ERROR_LINGER);
            }
            let next = match linger_until {
                None => source.next().await,
                Some(t) => match tokio::time::timeout_at(t, source.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
            };
            match next {
                Some(Ok(Message::Binary(d))) => frames.push(&d),
                Some(Ok(Message::Close(_))) | None => {
                    if data_open {
                        ended_early = Some("the API server closed the tunnel".to_string());
                    }
                    break;
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    broke(&who, &ended_w, &e);
                    break;
                }
            }
            loop {
                let frame = match frames.frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        broke(&who, &ended_w, &e);
                        break 'messages;
                    }
                };
                match frame {
                    spdy::Frame::Data { stream, fin, data } if stream == spdy::DATA_STREAM => {
                        if !data.is_empty() && from_pod_w.write_all(&data).await.is_err() {
                            // No one reads any more.
                            break 'messages;
                        }
                        data_open &= !fin;
                    }
                    spdy::Frame::Data { stream, fin, data } if stream == spdy::ERROR_STREAM => {
                        let room = SAID.saturating_sub(said.len());
                        said.extend_from_slice(&data[..data.len().min(room)]);
                        error_open &= !fin;
                    }
                    spdy::Frame::Reset { stream, status } => {
                        data_open &= stream != spdy::DATA_STREAM;
                        error_open &= stream != spdy::ERROR_STREAM;
                        reset.get_or_insert(format!(
                            "the server reset SPDY stream {stream} (status {status})"
                        ));
                    }
                    spdy::Frame::Ping { id } if spdy::is_servers_ping(id) => {
                        // A server that pings faster than the answers go out gets fewer.
                        let _ = pongs.try_send(spdy::ping(id));
                    }
                    spdy::Frame::GoAway { status } => {
                        if data_open {
                            ended_early = Some(format!(
                                "the server ended the SPDY connection (GOAWAY, status {status})"
                            ));
                        }
                        break 'messages;
                    }
                    _ => {}
                }
            }
        }
        if !said.is_empty() {
            refused(&who, &ended_w, &said);
        } else if let Some(r) = reset {
            broke(&who, &ended_w, &r);
        } else if let Some(why) = ended_early {
            // Not a warning: the driver's own close at the end of a run ends it this way too.
            // It is what a handshake that reads nothing more is told.
            tracing::debug!("{who}: {why}");
            ended_w.state().failed.get_or_insert(why);
        }
        from_pod_w
    };
    Ok(started(
        sink,
        Framing::Spdy(spdy::DATA_STREAM),
        Some(pongs_r),
        Protocol::Spdy,
        recv,
    ))
}

/// The WebSocket upgrade of `pods/portforward` with the tunnel's subprotocol, over kube's
/// client (its TLS and credentials). kube's own `connect` is not used: it names the channel
/// protocols as the WebSocket subprotocols.
async fn tunnel(
    pods: &Api<Pod>,
    name: &str,
    port: u16,
) -> anyhow::Result<WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>> {
    use http::header::{
        CONNECTION, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
        SEC_WEBSOCKET_VERSION, UPGRADE,
    };
    let req = kube::core::Request::new(pods.resource_url()).portforward(name, &[port])?;
    let (mut parts, body) = req.into_parts();
    let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
    let h = &mut parts.headers;
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    h.insert(SEC_WEBSOCKET_KEY, HeaderValue::from_str(&key)?);
    h.insert(
        SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(spdy::TUNNEL_PROTOCOL),
    );
    let client = pods.clone().into_client();
    let res = client
        .send(http::Request::from_parts(
            parts,
            kube::client::Body::from(body),
        ))
        .await?;
    let status = res.status();
    if status != http::StatusCode::SWITCHING_PROTOCOLS {
        let body = res.into_body().collect_bytes().await.unwrap_or_default();
        let text = String::from_utf8_lossy(&body);
        let said = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| text.trim().chars().take(200).collect());
        if said.is_empty() {
            anyhow::bail!("the API server answered {status}, with no message");
        }
        anyhow::bail!("the API server answered {status}: {said}");
    }
    let header = |n| {
        res.headers()
            .get(n)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let protocol = header(SEC_WEBSOCKET_PROTOCOL);
    anyhow::ensure!(
        protocol == spdy::TUNNEL_PROTOCOL,
        "the API server chose the WebSocket subprotocol {protocol:?}, not {}",
        spdy::TUNNEL_PROTOCOL
    );
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    anyhow::ensure!(
        header(SEC_WEBSOCKET_ACCEPT) == accept,
        "the API server's WebSocket upgrade did not answer our key"
    );
    let upgraded = hyper::upgrade::on(res).await?;
    Ok(WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await)
}
