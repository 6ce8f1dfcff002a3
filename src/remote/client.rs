//! The driver's end of a receiver stream: requests and their replies, and file data sent
//! without waiting (a write error comes back when the file is finished).

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use super::frame::{self, FrameError, Kind};
use super::msg::{Answer, Reply, Request};
use crate::perms::Owner;
use crate::volume::{Entry, Times};

/// The two halves of a stream to a receiver.
struct Conn {
    r: BufReader<Box<dyn Read + Send>>,
    w: BufWriter<Box<dyn Write + Send>>,
    next: u32,
    /// Set once the stream failed: every later call fails the same way at once.
    broken: Option<String>,
}

/// A connection to a receiver. Calls from several threads take turns; data frames are
/// written without waiting for anything.
pub struct Receiver {
    conn: Mutex<Conn>,
    /// What the receiver is (in messages): `pod monitoring/promigrate-receiver-x`.
    pub name: String,
    /// Its volume is mounted read-only, for a command that only reads ([`Request::Open`]).
    pub read_only: bool,
}

/// A file being written on the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle {
    /// The receiver's handle.
    pub id: u32,
    /// Where to go on writing: 0, or what a resumed file already holds.
    pub offset: u64,
}

impl Receiver {
    /// Starts the protocol on a stream (the receiver's stdout and stdin): both sides say
    /// hello, and a receiver that is not one (a shell's "not found", another version) is
    /// named here.
    pub fn connect(
        name: impl Into<String>,
        input: Box<dyn Read + Send>,
        output: Box<dyn Write + Send>,
    ) -> io::Result<Receiver> {
        let name = name.into();
        let mut r = BufReader::with_capacity(256 << 10, input);
        let mut w = BufWriter::with_capacity(frame::MAX_DATA + 64, output);
        // What came back names a failed start best ("not found" from a shell), also when
        // the hello could not be sent because the other side had already gone.
        let sent = frame::write_hello(&mut w).and_then(|()| w.flush());
        frame::read_hello(&mut r).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{name} did not start the promigrate receiver: {e}"),
            )
        })?;
        sent?;
        Ok(Receiver {
            conn: Mutex::new(Conn {
                r,
                w,
                next: 0,
                broken: None,
            }),
            name,
            read_only: false,
        })
    }

    /// Sends a request and waits for its reply.
    pub fn call(&self, req: &Request) -> io::Result<Answer> {
        let mut c = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = &c.broken {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, b.clone()));
        }
        let res = Self::round_trip(&mut c, req);
        match res {
            Ok(reply) => reply.map_err(|e| e.into_io()),
            Err(e) => {
                let msg = format!("the stream to {} broke: {e}", self.name);
                c.broken = Some(msg.clone());
                Err(io::Error::new(io::ErrorKind::BrokenPipe, msg))
            }
        }
    }

    fn round_trip(c: &mut Conn, req: &Request) -> Result<Reply, FrameError> {
        c.next = c.next.wrapping_add(1);
        let id = c.next;
        let body = serde_json::to_vec(req).map_err(|e| FrameError::Protocol(e.to_string()))?;
        frame::write_frame(&mut c.w, Kind::Request, id, &body)?;
        c.w.flush()?;
        let Some(f) = frame::read_frame(&mut c.r)? else {
            return Err(FrameError::Torn { got: 0, want: 1 });
        };
        // Replies come in order: one request at a time is outstanding.
        if f.kind != Kind::Reply || f.id != id {
            return Err(FrameError::Protocol(format!(
                "an unexpected {:?} frame {} (waiting for reply {id})",
                f.kind, f.id
            )));
        }
        serde_json::from_slice(&f.payload)
            .map_err(|e| FrameError::Protocol(format!("a reply: {e}")))
    }

    /// Sends file data for `handle` at `offset` (not flushed: the next request flushes).
    pub fn write_at(&self, handle: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut c = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = &c.broken {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, b.clone()));
        }
        let mut sent = 0;
        let res = (|| {
            for chunk in data.chunks(frame::MAX_DATA) {
                let off = (offset + sent as u64).to_le_bytes();
                frame::write_frame_parts(&mut c.w, Kind::Data, handle, &[&off, chunk])?;
                sent += chunk.len();
            }
            Ok::<_, io::Error>(())
        })();
        res.map_err(|e| {
            let msg = format!("the stream to {} broke: {e}", self.name);
            c.broken = Some(msg.clone());
            io::Error::new(io::ErrorKind::BrokenPipe, msg)
        })
    }

    /// Opens the TSDB directory `root` on the volume mounted at `mount` (as the receiver
    /// sees them); with `dry_run` its changes are only recorded.
    pub fn open(
        &self,
        mount: PathBuf,
        root: PathBuf,
        owner: Owner,
        dry_run: bool,
    ) -> io::Result<()> {
        self.call(&Request::Open {
            mount,
            root,
            owner,
            dry_run,
            read_only: self.read_only,
        })
        .map(drop)
    }

    /// Opens a file to write (see [`Request::Create`]).
    pub fn create(&self, rel: &str, resume: bool) -> io::Result<Handle> {
        match self.call(&Request::Create {
            rel: rel.into(),
            resume,
        })? {
            Answer::Opened { handle, offset } => Ok(Handle { id: handle, offset }),
            a => Err(unexpected(&a)),
        }
    }

    /// Finishes a file (see [`Request::Finish`]).
    pub fn finish(
        &self,
        h: Handle,
        mode: u32,
        times: Option<Times>,
        durable: bool,
    ) -> io::Result<()> {
        self.call(&Request::Finish {
            handle: h.id,
            mode,
            times,
            durable,
        })
        .map(drop)
    }

    /// What is at `rel`.
    pub fn stat(&self, rel: &str) -> io::Result<Entry> {
        match self.call(&Request::Stat { rel: rel.into() })? {
            Answer::Entry(e) => Ok(e),
            a => Err(unexpected(&a)),
        }
    }

    /// The names in directory `rel`.
    pub fn list(&self, rel: &str) -> io::Result<Vec<std::ffi::OsString>> {
        use std::os::unix::ffi::OsStringExt;
        match self.call(&Request::List { rel: rel.into() })? {
            Answer::Names(n) => Ok(n.into_iter().map(std::ffi::OsString::from_vec).collect()),
            a => Err(unexpected(&a)),
        }
    }

    /// A request answered yes or no.
    pub fn changed(&self, req: &Request) -> io::Result<bool> {
        match self.call(req)? {
            Answer::Changed(c) => Ok(c),
            a => Err(unexpected(&a)),
        }
    }
}

fn unexpected(a: &Answer) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the receiver answered {a:?}: use the same promigrate on both sides"),
    )
}
