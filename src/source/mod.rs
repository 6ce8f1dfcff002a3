//! Where TSDB data is read from: a local directory, or a directory on another host over SSH
//! (SFTP). Listing, reading and the "is the server still running" probe go through here, so
//! inventory, plan, apply, verify and the format checks work the same on both. Nothing here
//! writes: local files are opened read-only, remote ones through SFTP's read mode.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub mod stat;
use crate::live::Liveness;
use crate::ssh::{self, Pool, SshSpec};
pub use stat::{Ent, Kind, Stat};

/// A TSDB directory to read.
#[derive(Clone)]
pub enum Source {
    /// A directory on this host.
    Local(PathBuf),
    /// A directory on another host, over SSH.
    Ssh {
        /// The directory there.
        root: PathBuf,
        /// Connections to the host.
        pool: Arc<Pool>,
    },
}

/// Reading a TSDB directory: the source itself ([`Source`]), or a [`View`] of it that
/// answers from a snapshot taken at the start of a scan. The scan and the format checks read
/// through this. Copies and content hashes take a [`Source`]: they never get a snapshot's
/// bytes, by type.
pub trait Tree: Sync {
    /// The directory (on its host).
    fn root(&self) -> &Path;
    /// `path` or `user@host:port:path`, for messages.
    fn describe(&self) -> String;
    /// Attributes of `rel` (`""`: the root), links not followed.
    fn stat(&self, rel: &str) -> io::Result<Stat>;
    /// The entries of directory `rel` (`""`: the root), sorted by name.
    fn list(&self, rel: &str) -> io::Result<Vec<Ent>>;
    /// Reads a whole (small) file.
    fn read(&self, rel: &str) -> io::Result<Vec<u8>>;
    /// Opens a file for reading; returns it and its attributes at open time.
    fn open(&self, rel: &str) -> io::Result<(Input, Stat)>;
}

/// A source as one scan sees it: over SSH with `read: tar`, listings, attributes and the
/// reads of the cheap checks come from one [`ssh::snapshot`] of the remote directory taken
/// at its start ([`Source::snapshot`]), instead of an SFTP round trip each; what the
/// snapshot does not hold is read from the source.
#[derive(Clone)]
pub struct View {
    live: Source,
    snap: Option<Arc<ssh::snapshot::Snapshot>>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// An open source file.
pub enum Input {
    /// A local file.
    Local(File),
    /// A remote file, read through SFTP.
    Remote(RemoteFile),
    /// A remote file whose ends (or all) a [`View`]'s snapshot holds; the rest is read
    /// through SFTP.
    Prefetched(Prefetched),
}

impl Read for Input {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Input::Local(f) => f.read(buf),
            Input::Remote(f) => f.read(buf),
            Input::Prefetched(f) => f.read(buf),
        }
    }
}

impl Seek for Input {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        match self {
            Input::Local(f) => f.seek(pos),
            Input::Remote(f) => f.seek(pos),
            Input::Prefetched(f) => f.seek(pos),
        }
    }
}

impl Source {
    /// The directory (on its host).
    pub fn root(&self) -> &Path {
        match self {
            Source::Local(p) | Source::Ssh { root: p, .. } => p,
        }
    }

    /// `path` or `user@host:port:path`, for messages.
    pub fn describe(&self) -> String {
        match self {
            Source::Local(p) => p.display().to_string(),
            Source::Ssh { root, pool, .. } => {
                format!("{}:{}", pool.spec().describe(), root.display())
            }
        }
    }

    /// The SSH host, if remote.
    pub fn ssh(&self) -> Option<&SshSpec> {
        match self {
            Source::Local(_) => None,
            Source::Ssh { pool, .. } => Some(pool.spec()),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.root().to_path_buf()
        } else {
            self.root().join(rel)
        }
    }

    /// Attributes of `rel` (`""`: the root), links not followed.
    pub fn stat(&self, rel: &str) -> io::Result<Stat> {
        let p = self.path(rel);
        match self {
            Source::Local(_) => std::fs::symlink_metadata(&p).map(|m| Stat::of(&m)),
            Source::Ssh { pool, .. } => pool.with(&format!("stat {}", p.display()), |c| {
                c.sftp()?
                    .lstat(&p)
                    .map(|s| Stat::of_sftp(&s))
                    .map_err(io::Error::from)
            }),
        }
    }

    /// The entries of directory `rel` (`""`: the root), sorted by name, with their
    /// attributes. Entries that vanish while listed are left out.
    pub fn list(&self, rel: &str) -> io::Result<Vec<Ent>> {
        let dir = self.path(rel);
        let mut out = match self {
            Source::Local(_) => {
                let mut v = Vec::new();
                for e in std::fs::read_dir(&dir)? {
                    let e = e?;
                    let m = match std::fs::symlink_metadata(e.path()) {
                        Ok(m) => m,
                        Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                        Err(err) => return Err(err),
                    };
                    let name = e
                        .file_name()
                        .into_string()
                        .map_err(|n| n.to_string_lossy().into_owned());
                    v.push(Ent {
                        name,
                        stat: Stat::of(&m),
                    });
                }
                v
            }
            Source::Ssh { pool, .. } => pool.with(&format!("list {}", dir.display()), |c| {
                let entries = c.sftp()?.readdir(&dir).map_err(io::Error::from)?;
                Ok(entries
                    .iter()
                    .map(|(p, st)| Ent {
                        name: p
                            .file_name()
                            .map(|n| n.to_os_string())
                            .unwrap_or_default()
                            .into_string()
                            .map_err(|n| n.to_string_lossy().into_owned()),
                        stat: Stat::of_sftp(st),
                    })
                    .collect())
            })?,
        };
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Reads a whole (small) file.
    pub fn read(&self, rel: &str) -> io::Result<Vec<u8>> {
        let p = self.path(rel);
        match self {
            Source::Local(_) => crate::fsutil::read_noatime(&p),
            // Read from the start on every attempt; no stat first (a round trip saved per
            // meta.json and tombstones file).
            Source::Ssh { pool, .. } => pool.with(&format!("read {}", p.display()), |c| {
                let mut v = Vec::new();
                c.sftp()?
                    .open(&p)
                    .map_err(io::Error::from)?
                    .read_to_end(&mut v)?;
                Ok(v)
            }),
        }
    }

    /// Opens a file for reading; returns it and its attributes at open time.
    pub fn open(&self, rel: &str) -> io::Result<(Input, Stat)> {
        let p = self.path(rel);
        match self {
            Source::Local(_) => {
                let f = crate::fsutil::open_noatime(&p)?;
                let st = Stat::of(&f.metadata()?);
                Ok((Input::Local(f), st))
            }
            Source::Ssh { .. } => {
                let mut f = self.remote_file(rel)?;
                let st = f.stat_now()?;
                Ok((Input::Remote(f), st))
            }
        }
    }

    /// A remote file, not opened yet (an error for a local source).
    fn remote_file(&self, rel: &str) -> io::Result<RemoteFile> {
        match self {
            Source::Ssh { pool, .. } => Ok(RemoteFile {
                pool: pool.clone(),
                path: self.path(rel),
                conn: None,
                file: None,
                pos: 0,
            }),
            Source::Local(_) => Err(io::Error::other(format!(
                "{}: a local file is not read over SFTP",
                self.path(rel).display()
            ))),
        }
    }

    /// This source as one scan sees it: answering listings, attributes and the reads of the
    /// cheap checks from one [`ssh::snapshot`] of the remote directory taken now. Local
    /// sources, `read: sftp`, and hosts where the snapshot cannot be taken are read as
    /// they are.
    pub fn snapshot(&self) -> View {
        let snap = match self {
            Source::Ssh { root, pool } if pool.spec().read == ssh::ReadVia::Tar => {
                ssh::snapshot::take(pool, root).map(Arc::new)
            }
            _ => None,
        };
        View {
            live: self.clone(),
            snap,
        }
    }

    /// Whether the Prometheus that owns this directory is running.
    pub fn probe(&self) -> Liveness {
        match self {
            Source::Local(p) => crate::live::probe(p),
            Source::Ssh { root, pool } => remote_probe(root, pool),
        }
    }
}

impl Tree for Source {
    fn root(&self) -> &Path {
        Source::root(self)
    }
    fn describe(&self) -> String {
        Source::describe(self)
    }
    fn stat(&self, rel: &str) -> io::Result<Stat> {
        Source::stat(self, rel)
    }
    fn list(&self, rel: &str) -> io::Result<Vec<Ent>> {
        Source::list(self, rel)
    }
    fn read(&self, rel: &str) -> io::Result<Vec<u8>> {
        Source::read(self, rel)
    }
    fn open(&self, rel: &str) -> io::Result<(Input, Stat)> {
        Source::open(self, rel)
    }
}

impl View {
    /// The source itself.
    pub fn live(&self) -> &Source {
        &self.live
    }

    fn snap(&self) -> Option<&ssh::snapshot::Snapshot> {
        self.snap.as_deref()
    }

    /// Whether attributes come over SFTP (an SSH source without a snapshot): SFTP
    /// (protocol 3) carries times as unsigned 32-bit seconds, so a time before 1970 arrives
    /// 2^32 s later, after 2038-01-19.
    pub fn times_over_sftp(&self) -> bool {
        matches!(self.live, Source::Ssh { .. }) && self.snap.is_none()
    }

    /// Whether the Prometheus that owns this directory is running: over SSH, the snapshot's
    /// listing command asked its lock at the start of this scan.
    pub fn probe(&self) -> Liveness {
        match (&self.live, self.snap().and_then(|s| s.lock())) {
            (Source::Ssh { root, pool }, Some(answer)) => lock_answer(root, pool, answer),
            (live, _) => live.probe(),
        }
    }
}

impl Tree for View {
    fn root(&self) -> &Path {
        self.live.root()
    }
    fn describe(&self) -> String {
        self.live.describe()
    }
    fn stat(&self, rel: &str) -> io::Result<Stat> {
        match self.snap().and_then(|s| s.stat(rel)) {
            Some(st) => Ok(st),
            None => self.live.stat(rel),
        }
    }
    fn list(&self, rel: &str) -> io::Result<Vec<Ent>> {
        match self.snap().and_then(|s| s.list(rel)) {
            Some(l) => Ok(l),
            None => self.live.list(rel),
        }
    }
    fn read(&self, rel: &str) -> io::Result<Vec<u8>> {
        match self.snap().and_then(|s| s.whole(rel)) {
            Some((data, _)) => Ok(data.to_vec()),
            None => self.live.read(rel),
        }
    }
    fn open(&self, rel: &str) -> io::Result<(Input, Stat)> {
        match self.snap().and_then(|s| s.bytes(rel)) {
            Some((head, tail, st)) => Ok((
                Input::Prefetched(Prefetched {
                    head: head.to_vec(),
                    tail: tail.to_vec(),
                    len: st.size,
                    pos: 0,
                    rest: self.live.remote_file(rel)?,
                }),
                st,
            )),
            None => self.live.open(rel),
        }
    }
}

/// The lock probe on the remote host: open `lock` read-only (never creating it) and try a
/// non-blocking flock on it, as Prometheus holds it while it runs.
fn remote_probe(root: &Path, pool: &Pool) -> Liveness {
    let cmd = format!(
        "cd {} || exit 97; {}",
        ssh::shell_quote(root),
        ssh::snapshot::LOCK_PROBE
    );
    match pool.with("probe the source lock", |c| ssh::exec(&c.sess, &cmd)) {
        Ok((_, text)) => lock_answer(root, pool, &text),
        Err(e) => Liveness::Unknown(format!("the remote lock probe failed: {e}")),
    }
}

/// What the lock probe's answer means.
fn lock_answer(root: &Path, pool: &Pool, text: &str) -> Liveness {
    match text.trim() {
        "lock 99" => Liveness::Running(format!(
            "{} is locked on {}",
            root.join("lock").display(),
            pool.spec().host
        )),
        "lock 0" => Liveness::Stopped { clean: false },
        "absent" => Liveness::Unknown(format!(
            "{} has no lock file, and promigrate cannot see the processes of {} over SSH",
            root.display(),
            pool.spec().host
        )),
        other => Liveness::Unknown(format!(
            "the remote lock probe answered `{other}` (is util-linux flock installed on {}?)",
            pool.spec().host
        )),
    }
}

/// A remote file read through SFTP. A dropped connection is re-established (with backoff)
/// and the read resumes at the offset it had reached.
pub struct RemoteFile {
    pool: Arc<Pool>,
    path: PathBuf,
    conn: Option<ssh::Conn>,
    file: Option<ssh2::File>,
    pos: u64,
}

impl RemoteFile {
    /// Opens the file at the offset reached, on a new connection when `fresh` (a retry never
    /// trusts an idle one).
    fn ensure_open(&mut self, fresh: bool) -> io::Result<()> {
        if self.conn.is_none() {
            self.conn = Some(self.pool.take_or_refuse(fresh)?);
        }
        let conn = self
            .conn
            .as_ref()
            .ok_or_else(|| io::Error::other("no connection"))?;
        let mut f = conn.sftp()?.open(&self.path).map_err(io::Error::from)?;
        if self.pos > 0 {
            f.seek(SeekFrom::Start(self.pos))?;
        }
        self.file = Some(f);
        Ok(())
    }

    /// The file's attributes now (when opened: at open time; later, to see whether it
    /// changed while it was read).
    pub fn stat_now(&mut self) -> io::Result<Stat> {
        self.retrying("checking", |f| {
            f.stat().map(|s| Stat::of_sftp(&s)).map_err(io::Error::from)
        })
    }

    fn reset(&mut self) {
        self.file = None;
        self.conn = None; // a broken session is dropped, not pooled
    }

    /// Runs `op` on the open file; when the connection is gone, reconnects with backoff
    /// (1, 2, 4, … s), reopens the file at the offset reached, and runs it again. Other
    /// errors, and running out of attempts, are returned.
    fn retrying<T>(
        &mut self,
        what: &str,
        mut op: impl FnMut(&mut ssh2::File) -> io::Result<T>,
    ) -> io::Result<T> {
        let attempts = self.pool.attempts.max(1);
        // Constant while retrying: the offset moves only when a read succeeds.
        let (path, pos) = (self.path.clone(), self.pos);
        let r = crate::retry::with_backoff(
            attempts,
            ssh::is_connection_error,
            |e, wait, next| {
                tracing::warn!(
                    "{what} {} over SSH failed ({e}); reconnecting in {}s and resuming at byte {pos} (attempt {}/{attempts})",
                    path.display(),
                    wait.as_secs(),
                    next + 1
                )
            },
            |attempt| {
                let done = match self.file.as_mut() {
                    Some(f) => op(f),
                    None => self
                        .ensure_open(attempt > 0)
                        .and_then(|()| match self.file.as_mut() {
                            Some(f) => op(f),
                            // Not reached: an open that succeeds sets the file.
                            None => Err(io::Error::from(io::ErrorKind::NotConnected)),
                        }),
                };
                if let Err(e) = &done
                    && ssh::is_connection_error(e)
                {
                    self.reset();
                    self.pool.discard_idle();
                }
                done
            },
        );
        r.map_err(|failed| {
            failed.into_io(|last| {
                format!(
                    "{what} {} over SSH: gave up after {attempts} attempts ({last}); rerun to resume (completed files are kept)",
                    path.display(),
                )
            })
        })
    }
}

impl Read for RemoteFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.retrying("reading", |f| f.read(buf))?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for RemoteFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => p,
            SeekFrom::Current(d) => self.pos.saturating_add_signed(d),
            SeekFrom::End(d) => self.stat_now()?.size.saturating_add_signed(d),
        };
        if let Some(f) = self.file.as_mut() {
            f.seek(SeekFrom::Start(new))?;
        }
        self.pos = new;
        Ok(new)
    }
}

/// A remote file read from a snapshot where it holds the bytes: its first `head.len()`
/// bytes and its last `tail.len()` (of `len`); anything between through SFTP, opened only
/// then.
pub struct Prefetched {
    head: Vec<u8>,
    tail: Vec<u8>,
    len: u64,
    pos: u64,
    rest: RemoteFile,
}

impl Read for Prefetched {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let tail_at = self.len.saturating_sub(self.tail.len() as u64);
        let (pos, head) = (self.pos, self.head.len() as u64);
        let n = if pos >= self.len {
            0
        } else if pos < head {
            (&self.head[pos as usize..]).read(buf)?
        } else if pos >= tail_at {
            (&self.tail[(pos - tail_at) as usize..]).read(buf)?
        } else {
            let want = ((tail_at - pos) as usize).min(buf.len());
            self.rest.seek(SeekFrom::Start(pos))?;
            self.rest.read(&mut buf[..want])?
        };
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Prefetched {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.pos = match pos {
            SeekFrom::Start(p) => p,
            SeekFrom::Current(d) => self.pos.saturating_add_signed(d),
            SeekFrom::End(d) => self.len.saturating_add_signed(d),
        };
        Ok(self.pos)
    }
}

impl Drop for RemoteFile {
    fn drop(&mut self) {
        self.file = None;
        if let Some(c) = self.conn.take() {
            self.pool.give(c);
        }
    }
}
