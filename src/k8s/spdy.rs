//! The little of SPDY/3.1 that a port-forward needs, for the receiver's stream through the
//! API server's WebSocket tunnel (`SPDY/3.1+portforward.k8s.io`, Kubernetes 1.31 and later,
//! as `kubectl port-forward` speaks it): the API server passes the tunnel's bytes on to the
//! kubelet as they are, and the runtime's streaming server reads SPDY, which costs it much
//! less than its WebSocket port-forward (docs/performance.md).
//!
//! What is spoken: a client's `SYN_STREAM` for the port's error stream and its data stream
//! (headers `streamtype`, `port`, `requestid`), data frames, its own `PING` now and then
//! (odd ids: the runtime's idle timeout counts SPDY frames), and the answer to a server's
//! `PING` (even ids). What
//! is read: data frames, `RST_STREAM`, `GOAWAY` and `PING`; the rest (`SYN_REPLY`,
//! `SETTINGS`, `WINDOW_UPDATE`, `HEADERS`) is skipped. The runtimes' SPDY (moby/spdystream)
//! does no flow control: the TCP connections under it are the only back-pressure.
//!
//! Header blocks are zlib streams, one context per connection, flushed after each block. They
//! are sent without SPDY's preset dictionary (no `FDICT` in the zlib header): a zlib reader
//! (Go's `zlib.NewReaderDict` included) reads such a stream as it is. The blocks the server
//! sends are never read (nothing in them is needed), so its compression context is not kept.

use flate2::{Compress, Compression, FlushCompress};

/// The stream of the port's errors (the first a client opens) and of its data.
pub const ERROR_STREAM: u32 = 1;
pub const DATA_STREAM: u32 = 3;
/// The WebSocket subprotocol of the tunnel.
pub const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// A data frame's header: the stream, the flags, the length.
pub const DATA_HEADER: usize = 8;
/// The largest payload of one frame (a 24-bit length).
pub const MAX_PAYLOAD: usize = (1 << 24) - 1;

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const FLAG_FIN: u8 = 0x01;

/// The connection's header compression (one zlib stream for all its header blocks).
pub struct Headers(Compress);

impl Default for Headers {
    fn default() -> Self {
        Headers(Compress::new(Compression::default(), true))
    }
}

impl Headers {
    /// A `SYN_STREAM` frame opening stream `id` with these headers (names in lower case).
    pub fn syn_stream(&mut self, id: u32, headers: &[(&str, &str)]) -> anyhow::Result<Vec<u8>> {
        let mut block = Vec::new();
        block.extend_from_slice(&u32::try_from(headers.len())?.to_be_bytes());
        for (name, value) in headers {
            for s in [name, value] {
                block.extend_from_slice(&u32::try_from(s.len())?.to_be_bytes());
                block.extend_from_slice(s.as_bytes());
            }
        }
        let compressed = self.compress(&block)?;
        let mut payload = Vec::with_capacity(10 + compressed.len());
        payload.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
        // No associated stream; priority 0 (the highest), slot 0.
        payload.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        payload.extend_from_slice(&compressed);
        control(SYN_STREAM, 0, &payload)
    }

    /// `block` through the connection's zlib stream, ending with a sync flush (so that the
    /// server can read the whole block now).
    fn compress(&mut self, block: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(block.len() + 64);
        let start_in = self.0.total_in();
        loop {
            let done = usize::try_from(self.0.total_in() - start_in)?;
            if out.capacity() - out.len() < 64 {
                out.reserve(block.len() + 64);
            }
            self.0
                .compress_vec(&block[done..], &mut out, FlushCompress::Sync)?;
            let done = usize::try_from(self.0.total_in() - start_in)?;
            // A sync flush is complete when all the input is taken and room was left over.
            if done == block.len() && out.capacity() > out.len() {
                return Ok(out);
            }
        }
    }
}

/// A control frame of `kind` with `payload`.
fn control(kind: u16, flags: u8, payload: &[u8]) -> anyhow::Result<Vec<u8>> {
    anyhow::ensure!(
        payload.len() <= MAX_PAYLOAD,
        "a SPDY frame's payload is too large"
    );
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    Ok(f)
}

/// The header of a data frame on `stream` carrying `len` bytes (at most [`MAX_PAYLOAD`]),
/// with FIN when `fin`.
pub fn data_header(stream: u32, fin: bool, len: usize) -> [u8; DATA_HEADER] {
    debug_assert!(len <= MAX_PAYLOAD);
    let mut h = [0u8; DATA_HEADER];
    h[..4].copy_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    h[4] = if fin { FLAG_FIN } else { 0 };
    h[5..].copy_from_slice(&(len as u32).to_be_bytes()[1..]);
    h
}

/// An empty data frame with FIN: `stream`'s sender is done (as a client says of the error
/// stream, on which it never writes).
pub fn fin(stream: u32) -> [u8; DATA_HEADER] {
    data_header(stream, true, 0)
}

/// A `PING` with `id`: the client's own have odd ids; a server's (even) are answered with
/// the same frame back.
pub fn ping(id: u32) -> Vec<u8> {
    // A 4-byte payload cannot be too large.
    control(PING, 0, &id.to_be_bytes()).unwrap_or_default()
}

/// Whether a `PING` with `id` is the server's, to be answered (a client's own come back
/// with odd ids, and are not).
pub fn is_servers_ping(id: u32) -> bool {
    id.is_multiple_of(2)
}

/// A frame read from the server, as far as a port-forward cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream: u32,
        fin: bool,
        data: Vec<u8>,
    },
    /// The server reset `stream` (an error of the protocol, or it refused the stream).
    Reset {
        stream: u32,
        status: u32,
    },
    Ping {
        id: u32,
    },
    /// The server ends the connection.
    GoAway {
        status: u32,
    },
    /// Anything else (`SYN_REPLY`, `SETTINGS`, `WINDOW_UPDATE`, `HEADERS`, ...).
    Skipped,
}

/// Frames out of the bytes the tunnel brings, whatever the WebSocket messages' boundaries.
#[derive(Default)]
pub struct Reader {
    buf: Vec<u8>,
    /// Where the unread bytes of `buf` start.
    at: usize,
}

impl Reader {
    /// Adds what came.
    pub fn push(&mut self, bytes: &[u8]) {
        // What was read goes; a torn frame's start moves to the front.
        self.buf.drain(..self.at);
        self.at = 0;
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, if one has come; `Err` for a frame that is not SPDY/3.
    pub fn frame(&mut self) -> anyhow::Result<Option<Frame>> {
        let rest = &self.buf[self.at..];
        if rest.len() < 8 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([0, rest[5], rest[6], rest[7]]) as usize;
        if rest.len() < 8 + len {
            return Ok(None);
        }
        let payload = &rest[8..8 + len];
        let word = |i: usize| -> Option<u32> {
            payload
                .get(i..i + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        let frame = if rest[0] & 0x80 == 0 {
            Frame::Data {
                stream: u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) & 0x7fff_ffff,
                fin: rest[4] & FLAG_FIN != 0,
                data: payload.to_vec(),
            }
        } else {
            let version = u16::from_be_bytes([rest[0], rest[1]]) & 0x7fff;
            anyhow::ensure!(
                version == VERSION,
                "the port-forward's server speaks SPDY version {version}, not 3"
            );
            let short = || anyhow::anyhow!("a SPDY control frame of {len} bytes is too short");
            match u16::from_be_bytes([rest[2], rest[3]]) {
                RST_STREAM => Frame::Reset {
                    stream: word(0).ok_or_else(short)? & 0x7fff_ffff,
                    status: word(4).ok_or_else(short)?,
                },
                PING => Frame::Ping {
                    id: word(0).ok_or_else(short)?,
                },
                GOAWAY => Frame::GoAway {
                    status: word(4).unwrap_or(0),
                },
                _ => Frame::Skipped,
            }
        };
        self.at += 8 + len;
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// The header block of a `SYN_STREAM` read back (as a server would, with a zlib reader
    /// that keeps its state from block to block).
    fn read_blocks(frames: &[Vec<u8>]) -> Vec<Vec<(String, String)>> {
        let mut z = flate2::Decompress::new(true);
        frames
            .iter()
            .map(|f| {
                assert_eq!(
                    &f[..4],
                    &[0x80, 0x03, 0x00, 0x01],
                    "a SYN_STREAM of version 3"
                );
                let len = u32::from_be_bytes([0, f[5], f[6], f[7]]) as usize;
                assert_eq!(f.len(), 8 + len);
                let mut out = Vec::with_capacity(4096);
                z.decompress_vec(&f[18..], &mut out, flate2::FlushDecompress::Sync)
                    .unwrap();
                let mut r = &out[..];
                let mut n = [0u8; 4];
                r.read_exact(&mut n).unwrap();
                (0..u32::from_be_bytes(n))
                    .map(|_| {
                        let mut s = || {
                            r.read_exact(&mut n).unwrap();
                            let mut b = vec![0u8; u32::from_be_bytes(n) as usize];
                            r.read_exact(&mut b).unwrap();
                            String::from_utf8(b).unwrap()
                        };
                        (s(), s())
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn syn_streams_carry_their_headers_through_one_zlib_stream() {
        let mut h = Headers::default();
        let a = h
            .syn_stream(
                1,
                &[
                    ("streamtype", "error"),
                    ("port", "8080"),
                    ("requestid", "0"),
                ],
            )
            .unwrap();
        let b = h
            .syn_stream(
                3,
                &[("streamtype", "data"), ("port", "8080"), ("requestid", "0")],
            )
            .unwrap();
        assert_eq!(&a[8..12], &1u32.to_be_bytes());
        assert_eq!(&b[8..12], &3u32.to_be_bytes());
        let blocks = read_blocks(&[a, b]);
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert_eq!(
            blocks[0],
            pairs(&[
                ("streamtype", "error"),
                ("port", "8080"),
                ("requestid", "0")
            ])
        );
        assert_eq!(
            blocks[1],
            pairs(&[("streamtype", "data"), ("port", "8080"), ("requestid", "0")])
        );
    }

    #[test]
    fn frames_are_read_whatever_the_messages_cut() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&data_header(3, false, 5));
        bytes.extend_from_slice(b"hello");
        bytes.extend_from_slice(&ping(7));
        // A SYN_REPLY (skipped), a reset, a data frame with FIN, a GOAWAY.
        bytes.extend_from_slice(&control(2, 0, &[0, 0, 0, 3, 0x78, 0x9c]).unwrap());
        bytes.extend_from_slice(&control(RST_STREAM, 0, &[0, 0, 0, 1, 0, 0, 0, 5]).unwrap());
        bytes.extend_from_slice(&data_header(1, true, 2));
        bytes.extend_from_slice(b"no");
        bytes.extend_from_slice(&control(GOAWAY, 0, &[0, 0, 0, 0, 0, 0, 0, 2]).unwrap());
        let want = vec![
            Frame::Data {
                stream: 3,
                fin: false,
                data: b"hello".to_vec(),
            },
            Frame::Ping { id: 7 },
            Frame::Skipped,
            Frame::Reset {
                stream: 1,
                status: 5,
            },
            Frame::Data {
                stream: 1,
                fin: true,
                data: b"no".to_vec(),
            },
            Frame::GoAway { status: 2 },
        ];
        for cut in [1, 3, 7, 8, 13, bytes.len()] {
            let mut r = Reader::default();
            let mut got = Vec::new();
            for piece in bytes.chunks(cut) {
                r.push(piece);
                while let Some(f) = r.frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, want, "in pieces of {cut} bytes");
        }
    }

    #[test]
    fn a_torn_frame_waits_and_another_version_is_an_error() {
        let mut r = Reader::default();
        let mut f = data_header(3, false, 4).to_vec();
        f.extend_from_slice(b"ab");
        r.push(&f);
        assert_eq!(r.frame().unwrap(), None);
        r.push(b"cd");
        assert!(matches!(r.frame().unwrap(), Some(Frame::Data { .. })));
        let mut other = control(PING, 0, &[0, 0, 0, 1]).unwrap();
        other[1] = 2;
        r.push(&other);
        let e = r.frame().unwrap_err().to_string();
        assert!(e.contains("SPDY version 2"), "{e}");
    }

    #[test]
    fn only_the_servers_pings_are_answered() {
        // The server's have even ids; a client's own (odd) come back as the server's echo.
        assert!(is_servers_ping(2) && is_servers_ping(0));
        assert!(!is_servers_ping(1) && !is_servers_ping(3));
        assert_eq!(ping(3), [0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 3]);
    }

    #[test]
    fn a_data_header_carries_stream_flags_and_length() {
        let h = data_header(3, true, 0x01_02_03);
        assert_eq!(h, [0, 0, 0, 3, 1, 1, 2, 3]);
        assert_eq!(fin(1), [0, 0, 0, 1, 1, 0, 0, 0]);
    }
}
