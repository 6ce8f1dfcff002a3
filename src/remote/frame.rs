//! The receiver protocol's framing: a stream of frames, each checked on its own, so a cut
//! stream (a killed process, a deleted pod, a dropped exec connection) is seen as torn, and
//! damaged bytes as damaged, never taken for data.
//!
//! A stream starts with [`MAGIC`] and the protocol version (`u16`, little endian). Then:
//!
//! ```text
//! u32 len   bytes after this field up to the checksum: kind (1) + id (4) + payload
//! u8  kind  Request, Reply or Data
//! u32 id    request id (Request/Reply), file handle (Data)
//! ...       payload: JSON (Request/Reply), u64 offset + bytes (Data)
//! u32 crc   CRC32C of everything before it in the frame, len included
//! ```
//! All integers little endian.

use std::io::{self, Read, Write};

/// What a stream starts with.
pub const MAGIC: &[u8; 8] = b"PROMIGR\x01";
/// The protocol version; both ends must speak the same.
pub const VERSION: u16 = 1;
/// The largest frame accepted: a data chunk is at most [`MAX_DATA`]; a reply (the scan of
/// a target of some 100 000 files, at about 500 bytes a file) may be larger.
pub const MAX_LEN: u32 = 256 << 20;
/// The largest data chunk a sender puts in one frame.
pub const MAX_DATA: usize = 4 << 20;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A request (JSON).
    Request = 1,
    /// The reply to the request with the same id (JSON).
    Reply = 2,
    /// File data for an open handle, at an offset.
    Data = 3,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Request),
            2 => Some(Kind::Reply),
            3 => Some(Kind::Data),
            _ => None,
        }
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What it carries.
    pub kind: Kind,
    /// Request id or file handle.
    pub id: u32,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Why a stream could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream ended inside a frame: the other side died or the connection was cut.
    #[error("the stream was cut inside a frame ({got} of {want} bytes)")]
    Torn { got: usize, want: usize },
    /// A frame's checksum does not match: the bytes were damaged on the way.
    #[error("a frame failed its checksum (damaged on the way)")]
    Checksum,
    /// Not this protocol, or a frame no sender makes.
    #[error("not the promigrate receiver protocol: {0}")]
    Protocol(String),
    /// Reading the stream failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl From<FrameError> for io::Error {
    fn from(e: FrameError) -> io::Error {
        match e {
            FrameError::Io(e) => e,
            FrameError::Torn { .. } => io::Error::new(io::ErrorKind::UnexpectedEof, e.to_string()),
            other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
        }
    }
}

/// Writes the start of a stream.
pub fn write_hello(w: &mut impl Write) -> io::Result<()> {
    w.write_all(MAGIC)?;
    w.write_all(&VERSION.to_le_bytes())
}

/// Reads the start of a stream: [`MAGIC`] and the version, which must be [`VERSION`].
/// Whatever came instead is named (a shell's error message, for instance).
pub fn read_hello(r: &mut impl Read) -> Result<(), FrameError> {
    let mut b = [0u8; 10];
    let got = read_full(r, &mut b)?;
    if got < b.len() || &b[..8] != MAGIC {
        let mut seen = b[..got].to_vec();
        // Read a little more of whatever it is, to show it.
        let mut more = [0u8; 200];
        if let Ok(n) = r.read(&mut more) {
            seen.extend_from_slice(&more[..n]);
        }
        if seen.is_empty() {
            return Err(FrameError::Torn { got: 0, want: 10 });
        }
        return Err(FrameError::Protocol(format!(
            "the other side said {:?}",
            String::from_utf8_lossy(&seen).trim()
        )));
    }
    let v = u16::from_le_bytes([b[8], b[9]]);
    if v != VERSION {
        return Err(FrameError::Protocol(format!(
            "protocol version {v}, this promigrate speaks {VERSION}: use the same promigrate on both sides"
        )));
    }
    Ok(())
}

/// Writes one frame (not flushed).
pub fn write_frame(w: &mut impl Write, kind: Kind, id: u32, payload: &[u8]) -> io::Result<()> {
    write_frame_parts(w, kind, id, &[payload])
}

/// Writes one frame whose payload is the concatenation of `parts` (a data frame's offset
/// and bytes, without copying the bytes).
pub fn write_frame_parts(
    w: &mut impl Write,
    kind: Kind,
    id: u32,
    parts: &[&[u8]],
) -> io::Result<()> {
    let payload_len: usize = parts.iter().map(|p| p.len()).sum();
    let len = u32::try_from(payload_len + 5)
        .ok()
        .filter(|l| *l <= MAX_LEN)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    let mut head = [0u8; 9];
    head[..4].copy_from_slice(&len.to_le_bytes());
    head[4] = kind as u8;
    head[5..].copy_from_slice(&id.to_le_bytes());
    let mut crc = crc32c::crc32c(&head);
    for p in parts {
        crc = crc32c::crc32c_append(crc, p);
    }
    w.write_all(&head)?;
    for p in parts {
        w.write_all(p)?;
    }
    w.write_all(&crc.to_le_bytes())
}

/// Reads the next frame; `None` when the stream ends cleanly between frames.
pub fn read_frame(r: &mut impl Read) -> Result<Option<Frame>, FrameError> {
    let mut head = [0u8; 9];
    let got = read_full(r, &mut head)?;
    if got == 0 {
        return Ok(None);
    }
    if got < head.len() {
        return Err(FrameError::Torn {
            got,
            want: head.len(),
        });
    }
    let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
    if !(5..=MAX_LEN).contains(&len) {
        return Err(FrameError::Protocol(format!("a frame of {len} bytes")));
    }
    let kind = Kind::from_u8(head[4])
        .ok_or_else(|| FrameError::Protocol(format!("a frame of kind {}", head[4])))?;
    let id = u32::from_le_bytes(head[5..9].try_into().expect("4 bytes"));
    // The payload and the checksum.
    let rest = len as usize - 5 + 4;
    let mut body = vec![0u8; rest];
    let got = read_full(r, &mut body)?;
    if got < rest {
        return Err(FrameError::Torn {
            got: head.len() + got,
            want: head.len() + rest,
        });
    }
    let stored = u32::from_le_bytes(body[rest - 4..].try_into().expect("4 bytes"));
    body.truncate(rest - 4);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&head), &body);
    if crc != stored {
        return Err(FrameError::Checksum);
    }
    Ok(Some(Frame {
        kind,
        id,
        payload: body,
    }))
}

/// A data frame's payload: the offset in the file and the bytes.
pub fn data_parts(payload: &[u8]) -> Result<(u64, &[u8]), FrameError> {
    if payload.len() < 8 {
        return Err(FrameError::Protocol(
            "a data frame without an offset".into(),
        ));
    }
    let off = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
    Ok((off, &payload[8..]))
}

/// Reads until `buf` is full or the stream ends; returns how much was read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(frames: &[(Kind, u32, &[u8])]) -> Vec<u8> {
        let mut v = Vec::new();
        for (k, id, p) in frames {
            write_frame(&mut v, *k, *id, p).unwrap();
        }
        v
    }

    #[test]
    fn frames_round_trip_and_a_clean_end_is_none() {
        let data = [&7u64.to_le_bytes()[..], b"chunk bytes"].concat();
        let s = stream(&[
            (Kind::Request, 1, br#"{"op":"stat"}"#),
            (Kind::Data, 9, &data),
            (Kind::Reply, 1, b""),
        ]);
        let mut r = &s[..];
        let a = read_frame(&mut r).unwrap().unwrap();
        assert_eq!(
            (a.kind, a.id, &a.payload[..]),
            (Kind::Request, 1, &br#"{"op":"stat"}"#[..])
        );
        let b = read_frame(&mut r).unwrap().unwrap();
        assert_eq!(b.kind, Kind::Data);
        assert_eq!(data_parts(&b.payload).unwrap(), (7, &b"chunk bytes"[..]));
        let c = read_frame(&mut r).unwrap().unwrap();
        assert_eq!((c.kind, c.payload.len()), (Kind::Reply, 0));
        assert!(read_frame(&mut r).unwrap().is_none());
        // The parts form writes the same bytes as the one-payload form.
        let mut parts = Vec::new();
        write_frame_parts(
            &mut parts,
            Kind::Data,
            9,
            &[&7u64.to_le_bytes(), b"chunk bytes"],
        )
        .unwrap();
        assert_eq!(parts, stream(&[(Kind::Data, 9, &data)]));
    }

    #[test]
    fn a_stream_cut_anywhere_inside_a_frame_is_torn_never_data() {
        let s = stream(&[(Kind::Request, 1, b"first"), (Kind::Data, 2, &[0u8; 100])]);
        let first = 9 + 5 + 4;
        for cut in 1..s.len() {
            let mut r = &s[..cut];
            let res = read_frame(&mut r);
            if cut < first {
                assert!(
                    matches!(res, Err(FrameError::Torn { .. })),
                    "cut at {cut}: {res:?}"
                );
                continue;
            }
            assert_eq!(res.unwrap().unwrap().payload, b"first");
            let res = read_frame(&mut r);
            if cut == first {
                assert!(res.unwrap().is_none());
            } else {
                assert!(
                    matches!(res, Err(FrameError::Torn { .. })),
                    "cut at {cut}: {res:?}"
                );
            }
        }
    }

    #[test]
    fn a_damaged_byte_fails_the_checksum_or_the_header() {
        let s = stream(&[(Kind::Data, 3, &[5u8; 64])]);
        for i in 0..s.len() {
            let mut d = s.clone();
            d[i] ^= 0x40;
            let res = read_frame(&mut &d[..]);
            assert!(
                matches!(
                    res,
                    Err(FrameError::Checksum | FrameError::Protocol(_) | FrameError::Torn { .. })
                ),
                "byte {i}: {res:?}"
            );
        }
    }

    #[test]
    fn the_hello_names_what_came_instead() {
        let mut ok = Vec::new();
        write_hello(&mut ok).unwrap();
        read_hello(&mut &ok[..]).unwrap();
        let e = read_hello(&mut &b"sh: promigrate: not found\n"[..]).unwrap_err();
        assert!(e.to_string().contains("promigrate: not found"), "{e}");
        let mut other = MAGIC.to_vec();
        other.extend_from_slice(&9u16.to_le_bytes());
        let e = read_hello(&mut &other[..]).unwrap_err();
        assert!(e.to_string().contains("version 9"), "{e}");
        assert!(matches!(
            read_hello(&mut &b""[..]),
            Err(FrameError::Torn { .. })
        ));
    }
}
