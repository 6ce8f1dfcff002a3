//! The driver's end of a receiver stream: requests and their replies, and file data sent
//! without waiting (a write error comes back when the file is finished).
//!
//! Several threads may have a request outstanding at once: each request has its id, a
//! reader thread hands every reply to the caller waiting for its id, and the receiver
//! answers them as they finish, not in order. A copy worker waiting for its file's fsync
//! then does not hold up the others' data and requests (each round trip through an exec
//! stream crosses the API server, the kubelet and the container runtime).

use std::collections::HashMap;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard};

use super::frame::{self, FrameError, Kind};
use super::msg::{Answer, Reply, Request};
use crate::perms::Owner;
use crate::volume::{Entry, Times};

/// What a waiting caller is given: the reply, or why the stream broke.
type Delivery = Result<Reply, String>;

/// The writing half of a stream to a receiver.
struct Writer {
    w: BufWriter<Box<dyn Write + Send>>,
    next: u32,
}

/// The callers waiting for replies; once the stream broke, why (every later call fails the
/// same way at once).
#[derive(Default)]
struct Waiting {
    callers: HashMap<u32, SyncSender<Delivery>>,
    broken: Option<String>,
}

impl Waiting {
    /// Marks the stream broken and tells every waiting caller.
    fn break_all(&mut self, why: String) {
        for (_, tx) in self.callers.drain() {
            let _ = tx.send(Err(why.clone()));
        }
        self.broken.get_or_insert(why);
    }
}

/// A connection to a receiver. Calls from several threads are outstanding together; data
/// frames are written without waiting for anything.
pub struct Receiver {
    writer: Mutex<Writer>,
    waiting: Arc<Mutex<Waiting>>,
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

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Receiver {
    /// Starts the protocol on a stream (the receiver's stdout and stdin): both sides say
    /// hello, and a receiver that is not one (a shell's "not found", another version) is
    /// named here. Then a thread reads the replies until the stream ends.
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
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        let shared = waiting.clone();
        let shown = name.clone();
        std::thread::Builder::new()
            .name("receiver-replies".into())
            .spawn(move || read_replies(r, &shared, &shown))?;
        Ok(Receiver {
            writer: Mutex::new(Writer { w, next: 0 }),
            waiting,
            name,
            read_only: false,
        })
    }

    /// The error of a call on a broken stream.
    fn broke(&self, why: impl std::fmt::Display) -> io::Error {
        io::Error::new(
            io::ErrorKind::BrokenPipe,
            format!("the stream to {} broke: {why}", self.name),
        )
    }

    /// Marks the stream broken after a write failed.
    fn write_failed(&self, e: &io::Error) -> io::Error {
        let why = format!("the stream to {} broke: {e}", self.name);
        locked(&self.waiting).break_all(why.clone());
        io::Error::new(io::ErrorKind::BrokenPipe, why)
    }

    /// Sends a request and waits for its reply (other threads' requests and data go on
    /// meanwhile).
    pub fn call(&self, req: &Request) -> io::Result<Answer> {
        let body = serde_json::to_vec(req).map_err(|e| self.broke(e))?;
        let started = std::time::Instant::now();
        let (tx, rx) = sync_channel::<Delivery>(1);
        {
            let mut w = locked(&self.writer);
            w.next = w.next.wrapping_add(1);
            let id = w.next;
            {
                let mut waiting = locked(&self.waiting);
                if let Some(b) = &waiting.broken {
                    return Err(io::Error::new(io::ErrorKind::BrokenPipe, b.clone()));
                }
                waiting.callers.insert(id, tx);
            }
            if let Err(e) =
                frame::write_frame(&mut w.w, Kind::Request, id, &body).and_then(|()| w.w.flush())
            {
                return Err(self.write_failed(&e));
            }
        }
        let got = rx.recv();
        tracing::trace!(
            "{}: {} in {:?}",
            self.name,
            String::from_utf8_lossy(&body[..body.len().min(80)]),
            started.elapsed()
        );
        match got {
            Ok(Ok(reply)) => reply.map_err(|e| e.into_io()),
            Ok(Err(why)) => Err(io::Error::new(io::ErrorKind::BrokenPipe, why)),
            // The reader ended without a word (it always says why): a broken stream.
            Err(_) => Err(self.broke("its reader ended")),
        }
    }

    /// Sends file data for `handle` at `offset` (not flushed: the next request flushes).
    pub fn write_at(&self, handle: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut w = locked(&self.writer);
        if let Some(b) = &locked(&self.waiting).broken {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, b.clone()));
        }
        let mut sent = 0;
        for chunk in data.chunks(frame::MAX_DATA) {
            let off = (offset + sent as u64).to_le_bytes();
            if let Err(e) = frame::write_frame_parts(&mut w.w, Kind::Data, handle, &[&off, chunk]) {
                return Err(self.write_failed(&e));
            }
            sent += chunk.len();
        }
        Ok(())
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

/// Reads the replies of a stream and hands each to the caller waiting for it, until the
/// stream ends; then every caller still waiting, and every later one, is told why.
fn read_replies(mut r: BufReader<Box<dyn Read + Send>>, waiting: &Mutex<Waiting>, name: &str) {
    let why = loop {
        let f = match frame::read_frame(&mut r) {
            Ok(Some(f)) => f,
            Ok(None) => break "the receiver ended the stream".to_string(),
            Err(e) => break e.to_string(),
        };
        if f.kind != Kind::Reply {
            break FrameError::Protocol(format!("an unexpected {:?} frame {}", f.kind, f.id))
                .to_string();
        }
        let Some(tx) = locked(waiting).callers.remove(&f.id) else {
            break FrameError::Protocol(format!("a reply {} that no request waits for", f.id))
                .to_string();
        };
        match serde_json::from_slice::<Reply>(&f.payload) {
            Ok(reply) => {
                let _ = tx.send(Ok(reply));
            }
            Err(e) => {
                let why = format!("a reply: {e}");
                let _ = tx.send(Err(format!("the stream to {name} broke: {why}")));
                break why;
            }
        }
    };
    locked(waiting).break_all(format!("the stream to {name} broke: {why}"));
}
