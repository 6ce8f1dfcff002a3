//! Copying one file: read-only open of the source, in-kernel copy (`copy_file_range` through
//! `std::io::copy`) in throttled chunks, early writeback, then owner, mode and times.
//! With several destinations (an HA pair), each chunk is read once into a buffer and written
//! to every destination. The source is never written: it is opened read-only with
//! `O_NOATIME` where allowed.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::perms::Owner;
use crate::progress::Progress;
use crate::source::Source;
use crate::ssh::stream::{self, SshPipe, TarStream};
use crate::sync::limiter::Throttle;
use crate::volume::{OutFile, Target, Times};

/// Why a file copy stopped.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Reading the source failed.
    #[error("cannot read source file {path}: {cause}")]
    Source { path: PathBuf, cause: io::Error },
    /// The source changed while being copied (the server is still writing it).
    #[error(
        "source file {path} changed while it was copied ({copied} bytes copied, now {now} bytes, or rewritten in place): stop the source Prometheus before copying its wal/ and chunks_head/"
    )]
    Changed {
        path: PathBuf,
        copied: u64,
        now: u64,
    },
    /// The target volume is full.
    #[error(
        "target volume is full while writing {path}: free space or grow the volume, then rerun apply (completed files are kept; the partial file was removed)"
    )]
    NoSpace { path: PathBuf },
    /// Writing the target failed.
    #[error("cannot write target file {path}: {cause}")]
    Target { path: PathBuf, cause: io::Error },
    /// The run was interrupted (Ctrl-C, SIGTERM).
    #[error("interrupted")]
    Cancelled,
}

/// Shared context of the copy workers.
pub struct Ctx<'a> {
    /// Bandwidth limit.
    pub throttle: &'a dyn Throttle,
    /// Progress sink.
    pub progress: &'a dyn Progress,
    /// Set to stop at the next chunk.
    pub cancel: &'a AtomicBool,
    /// Stop at the next chunk once this instant has passed.
    pub deadline: Option<std::time::Instant>,
    /// Where the hashes of the source bytes copied are kept, when a verify follows in this
    /// run ([`crate::hash::Sent`]). Files copied in the kernel (`copy_file_range`, one
    /// local destination) never pass through memory and are not hashed.
    pub sent: Option<&'a crate::hash::Sent>,
}

/// One destination of a copy: a file to create (or truncate) on a target, which gives it
/// its owner.
#[derive(Clone, Copy)]
pub struct Out<'t, 'r> {
    /// The target.
    pub target: &'t dyn Target,
    /// The file, below the target's TSDB directory.
    pub rel: &'r Path,
}

impl Out<'_, '_> {
    /// The file's full path (in messages).
    fn path(&self) -> PathBuf {
        self.target.path(self.rel)
    }

    fn owner(&self) -> Owner {
        self.target.owner()
    }
}

/// The largest chunk read into memory when one source file goes to several destinations.
const TEE_BUF: usize = 1 << 20;

impl Ctx<'_> {
    /// Whether work must stop now (a signal, or the deadline).
    pub fn stopping(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
            || self
                .deadline
                .is_some_and(|d| std::time::Instant::now() >= d)
    }
}

/// Whether the copy workers stream an SSH source through tar, and what they streamed.
#[derive(Debug, Default)]
pub struct Streaming {
    /// Set while streaming is on; cleared when the host's tar turns out unable to stream.
    pub on: AtomicBool,
    /// Files read through tar streams.
    pub files: std::sync::atomic::AtomicU64,
}

/// A file copied from a tar stream, not confirmed yet (its copies do not have the source's
/// mtime yet).
struct Streamed<'a> {
    rel: String,
    head: stream::Head,
    /// The hash of the bytes copied ([`Ctx::sent`]), kept once tar vouched for them.
    hash: Option<u128>,
    /// Each copy: its target, and where on it.
    outs: Vec<(&'a dyn Target, PathBuf)>,
    durable: bool,
}

impl Streamed<'_> {
    /// Gives the copies the source's times, now that tar vouched for the file, and keeps
    /// the hash of what was copied.
    fn vouched(&self, ctx: &Ctx) -> Result<(), CopyError> {
        let mtime = crate::fsutil::MTime {
            sec: self.head.mtime,
            nsec: 0,
        };
        let times = Times::both(mtime);
        for (target, rel) in &self.outs {
            target
                .set_times(rel, times)
                .map_err(|e| dst_err(target.path(rel), e))?;
        }
        if let (Some(sent), Some(h)) = (ctx.sent, self.hash) {
            sent.record(&self.rel, h, self.head.size, mtime);
        }
        Ok(())
    }
}

/// How one copy worker reads the source: file by file (a local file, or SFTP), or, for an
/// SSH source whose host has GNU tar, from the worker's own tar stream, one batch (a job's
/// files) at a time. A stream that fails is dropped and its files are read over SFTP; a new
/// one is started for the next batch, unless starting failed three times.
pub struct Reader<'a> {
    source: &'a Source,
    stream: Option<TarStream<SshPipe>>,
    /// Shared by the workers.
    streaming: &'a Streaming,
    /// This worker's own: cleared after three failed starts.
    mine: bool,
    failures: u32,
    /// Files read from the stream and not yet confirmed read without a complaint from
    /// tar, with where they were written.
    unchecked: Vec<Streamed<'a>>,
}

impl<'a> Reader<'a> {
    /// A reader of `source`, through tar streams while `streaming` is on (an SSH source).
    pub fn new(source: &'a Source, streaming: &'a Streaming) -> Reader<'a> {
        Reader {
            source,
            stream: None,
            streaming,
            mine: matches!(source, Source::Ssh { .. }),
            failures: 0,
            unchecked: Vec::new(),
        }
    }

    /// Confirms that tar read the files it delivered in this batch without a complaint
    /// ([`TarStream::batch_said`]): GNU tar that cannot read a file part-way (a failing
    /// disk) puts zeros in the archive for the rest of it, with the header's size and mtime
    /// still right, and says so only on its stderr; so does a file that changed while tar
    /// read it (its ctime, or a size that grew). Called once per batch, after its files
    /// were read and before they are published. When tar complained, or the stream failed
    /// before it could tell, the files it delivered in the batch are copied again over
    /// SFTP, whose checks and errors are the ones the rest of the tool knows.
    pub fn confirm_batch(&mut self, ctx: &Ctx) -> Result<(), CopyError> {
        let files = std::mem::take(&mut self.unchecked);
        let said = match self.stream.as_mut() {
            Some(s) => s.batch_said(),
            None if files.is_empty() => return Ok(()),
            None => Err(io::Error::other("the stream failed")),
        };
        let why = match said {
            Ok(complaints) if complaints.is_empty() => {
                return files.iter().try_for_each(|f| f.vouched(ctx));
            }
            Ok(complaints) => format!("it reported: {}", complaints.join("; ")),
            Err(e) => {
                self.broke(&e);
                format!("it could not tell whether it read them whole: {e}")
            }
        };
        if files.is_empty() {
            tracing::debug!("the remote tar stream, with nothing delivered: {why}");
            return Ok(());
        }
        if let Source::Ssh { pool, .. } = self.source {
            tracing::warn!(
                "the tar stream from {} cannot vouch for the {} of this batch ({why}); {} copied again over SFTP",
                pool.spec().host,
                crate::units::count(files.len() as u64, "file"),
                crate::units::verb_for(files.len() as u64, "it is", "they are")
            );
        }
        for f in files {
            ctx.progress.take_back(f.head.size);
            self.streaming.files.fetch_sub(1, Ordering::Relaxed);
            let outs: Vec<Out> = f
                .outs
                .iter()
                .map(|(target, rel)| Out {
                    target: *target,
                    rel,
                })
                .collect();
            // The batch has been read, so the stream expects none of its names: this reads
            // over SFTP (and removes the copies if that fails).
            copy_file(self, &f.rel, &outs, f.durable, ctx)?;
        }
        Ok(())
    }

    /// Starts a job: asks the stream for the files it will read, in the order it will read
    /// them (none when not streaming).
    pub fn begin(&mut self, files: &[String]) {
        self.unchecked.clear();
        let Source::Ssh { root, pool, .. } = self.source else {
            return;
        };
        if !self.streams() {
            return;
        }
        let names: Vec<String> = files
            .iter()
            .filter(|f| stream::streamable(f))
            .cloned()
            .collect();
        if names.is_empty() {
            return;
        }
        if self
            .stream
            .as_ref()
            .is_some_and(|s| !s.usable() || !s.idle())
        {
            self.stream = None; // a batch left unread (or a failure): not reused
        }
        if self.stream.is_none() {
            match SshPipe::start(pool, root) {
                Ok(p) => {
                    self.stream = Some(TarStream::new(p));
                    self.failures = 0;
                }
                Err(e) => {
                    self.failures += 1;
                    self.mine = self.failures < 3;
                    tracing::warn!(
                        "cannot start the tar stream from {} ({e}); reading over SFTP{}",
                        pool.spec().host,
                        if self.mine { "" } else { " from now on" }
                    );
                    return;
                }
            }
        }
        if let Some(s) = self.stream.as_mut()
            && let Err(e) = s.send(&names)
        {
            self.broke(&e);
        }
    }

    /// Whether this worker reads through a tar stream.
    pub fn streams(&self) -> bool {
        self.mine && self.streaming.on.load(Ordering::Relaxed)
    }

    /// Called when the stream ended or failed before delivering anything: its tar did not
    /// run (no GNU tar 1.29 or newer, exec refused, SFTP-only host). No worker streams from
    /// then on.
    fn tar_unusable(&mut self) {
        let Some(mut s) = self.stream.take() else {
            return;
        };
        let _ = s.finish_input(); // whatever runs there ends, and tells how
        if self.streaming.on.swap(false, Ordering::Relaxed)
            && let Source::Ssh { pool, .. } = self.source
        {
            tracing::info!(
                "{} cannot stream files through tar (remote tar exited with {}; GNU tar 1.29 or newer is needed): files are read over SFTP, which is slower",
                pool.spec().host,
                s.into_pipe().exit_status()
            );
        }
    }

    /// Drops a failed stream.
    fn broke(&mut self, e: &io::Error) {
        if let (Some(_), Source::Ssh { pool, .. }) = (self.stream.take(), self.source) {
            tracing::warn!(
                "the tar stream from {} failed ({e}); its files are read over SFTP, and the next batch starts a new stream",
                pool.spec().host
            );
            pool.discard_idle();
        }
    }

    /// Ends the stream; its connection goes back to the pool when it ended cleanly.
    pub fn finish(mut self) {
        let (Some(mut s), Source::Ssh { pool, .. }) = (self.stream.take(), self.source) else {
            return;
        };
        if s.idle() && s.finish_input().is_ok() {
            let pipe = s.into_pipe();
            if let Some(conn) = pipe.into_conn() {
                pool.give(conn);
            }
        }
    }
}

/// Copies `src` to every destination in `outs` (created or truncated), reading it once, then
/// sets owner, mode (group-writable) and the source's access and modification times. With
/// `durable`, fsyncs before returning. On failure every partial destination is removed.
/// Returns the bytes read from the source (each destination got all of them).
pub fn copy_file<'a>(
    reader: &mut Reader<'a>,
    rel: &str,
    outs: &[Out<'a, '_>],
    durable: bool,
    ctx: &Ctx,
) -> Result<u64, CopyError> {
    let source = reader.source;
    let result = match source {
        Source::Local(root) => copy_inner(&root.join(rel), rel, outs, durable, ctx),
        Source::Ssh { .. } => match copy_streamed(reader, rel, outs, durable, ctx) {
            Some(r) => r,
            None => copy_remote(source, rel, outs, durable, ctx),
        },
    };
    if result.is_err() {
        for o in outs {
            let _ = o.target.remove_file(o.rel);
        }
    }
    // A file that changed while it was read is not this run's to copy (a presync leaves
    // its block for the final phase): what the progress counted of it is taken back, so
    // it is not reported as an unfinished file either.
    if let Err(CopyError::Changed { copied, .. }) = &result {
        ctx.progress.take_back(*copied);
    }
    result
}

/// A write error on the target file `dst` (its path is only made when there is an error:
/// writes are on the copy's hot path).
fn dst_err(dst: PathBuf, e: io::Error) -> CopyError {
    // errno_of: also when a receiver reported it.
    if crate::remote::msg::errno_of(&e) == Some(nix::errno::Errno::ENOSPC as i32) {
        CopyError::NoSpace { path: dst }
    } else {
        CopyError::Target {
            path: dst,
            cause: e,
        }
    }
}

/// Creates (or truncates) every destination, write-only, mode 0600 until it is complete
/// ([`Target::create_file`]).
fn create_outputs(outs: &[Out]) -> Result<Vec<Box<dyn OutFile>>, CopyError> {
    outs.iter()
        .map(|o| {
            o.target
                .create_file(o.rel)
                .map_err(|e| dst_err(o.path(), e))
        })
        .collect()
}

/// Writes one chunk to every destination.
fn write_to_all(
    outputs: &mut [Box<dyn OutFile>],
    outs: &[Out],
    data: &[u8],
) -> Result<(), CopyError> {
    for (output, o) in outputs.iter_mut().zip(outs) {
        output.write_all(data).map_err(|e| dst_err(o.path(), e))?;
    }
    Ok(())
}

/// Gives every finished destination its owner and mode, with `durable` fsyncs it, and only
/// then its times: the source's mtime is the mark a resumed run takes as "complete", so it
/// must never reach the disk before the data.
fn finish_outputs(
    outputs: &mut [Box<dyn OutFile>],
    outs: &[Out],
    src_mode: u32,
    times: Option<Times>,
    durable: bool,
) -> Result<(), CopyError> {
    for (output, o) in outputs.iter_mut().zip(outs) {
        output
            .finish(&o.path(), o.owner(), src_mode, times, durable)
            .map_err(|e| dst_err(o.path(), e))?;
    }
    Ok(())
}

/// Copies a file of an SSH source from the worker's tar stream, when the stream has it.
/// `None`: read it over SFTP instead (not asked of the stream, skipped by tar, or the
/// stream failed, then nothing of it is kept).
fn copy_streamed<'a>(
    reader: &mut Reader<'a>,
    rel: &str,
    outs: &[Out<'a, '_>],
    durable: bool,
    ctx: &Ctx,
) -> Option<Result<u64, CopyError>> {
    let s = reader.stream.as_mut().filter(|s| s.expects(rel))?;
    let head = match s.open(rel) {
        Ok(Some(h)) => h,
        // Nothing came, or no archive: the command is not a working GNU tar (or the host
        // allows SFTP only). A dropped connection is not that.
        Ok(None) if s.never_delivered() => {
            reader.tar_unusable();
            return None;
        }
        Err(e) if s.never_delivered() && e.kind() == io::ErrorKind::InvalidData => {
            reader.tar_unusable();
            return None;
        }
        Ok(None) => return None, // tar skipped it: SFTP says why
        Err(e) => {
            reader.broke(&e);
            return None;
        }
    };
    let mut outputs = match create_outputs(outs) {
        Ok(o) => o,
        Err(e) => return Some(Err(e)),
    };
    let mut hasher = ctx.sent.map(|_| xxhash_rust::xxh3::Xxh3::new());
    let done = match pump(&mut outputs, outs, head.size, ctx, hasher.as_mut(), |b| {
        s.read(b)
    }) {
        Ok(n) if n == head.size => n,
        // The stream broke part-way: what it delivered is read again over SFTP, so the
        // progress takes it back.
        Ok(n) => {
            ctx.progress.take_back(n);
            reader.broke(&io::Error::from(io::ErrorKind::UnexpectedEof));
            return None;
        }
        Err(Stop::Read(e, n)) => {
            ctx.progress.take_back(n);
            reader.broke(&e);
            return None;
        }
        Err(Stop::Copy(e)) => return Some(Err(e)),
    };
    // The source's mtime only once tar vouched for the file (confirm_batch): a staged
    // file with the source's size and mtime is taken as complete by a resumed run.
    if let Err(e) = finish_outputs(&mut outputs, outs, head.mode, None, durable) {
        return Some(Err(e));
    }
    // Whether tar read it whole and unchanged is known at the end of the batch, from what
    // tar says on its stderr (confirm_batch), before anything of it is published.
    reader.unchecked.push(Streamed {
        rel: rel.to_string(),
        head,
        hash: hasher.map(|h| h.digest128()),
        outs: outs
            .iter()
            .map(|o| (o.target, o.rel.to_path_buf()))
            .collect(),
        durable,
    });
    reader.streaming.files.fetch_add(1, Ordering::Relaxed);
    Some(Ok(done))
}

/// Copies a file of an SSH source: read through SFTP (resuming at the offset reached when
/// the connection drops), each chunk written to every destination.
fn copy_remote(
    source: &Source,
    rel: &str,
    outs: &[Out],
    durable: bool,
    ctx: &Ctx,
) -> Result<u64, CopyError> {
    let path = source.root().join(rel);
    let src_err = |e| CopyError::Source {
        path: PathBuf::from(source.describe()).join(rel),
        cause: e,
    };
    let (mut input, st) = source.open(rel).map_err(src_err)?;
    let mut outputs = create_outputs(outs)?;
    // No hash is kept for the verify ([`Ctx::sent`]): over SFTP a file rewritten in place
    // within the same second, with the same size, is not seen (whole-second times, no
    // ctime), so the verify reads such a file again.
    let done =
        pump(&mut outputs, outs, st.size, ctx, None, |b| input.read(b)).map_err(|e| match e {
            Stop::Read(e, _) => src_err(e),
            Stop::Copy(e) => e,
        })?;
    let now = match &mut input {
        crate::source::Input::Remote(f) => f.stat_now().map_err(src_err)?,
        // Copies read the source itself, never a snapshot.
        crate::source::Input::Prefetched(_) => st,
        crate::source::Input::Local(_) => st,
    };
    if now.size != done || st.size != done || !now.mtime.same(st.mtime) {
        return Err(CopyError::Changed {
            path,
            copied: done,
            now: now.size,
        });
    }
    finish_outputs(
        &mut outputs,
        outs,
        st.mode,
        Some(Times::both(st.mtime)),
        durable,
    )?;
    Ok(done)
}

fn copy_inner(
    src: &Path,
    rel: &str,
    outs: &[Out],
    durable: bool,
    ctx: &Ctx,
) -> Result<u64, CopyError> {
    let src_err = |e| CopyError::Source {
        path: src.to_path_buf(),
        cause: e,
    };
    let input = crate::fsutil::open_noatime(src).map_err(src_err)?;
    let meta = input.metadata().map_err(src_err)?;
    let cached_before = crate::cache::Residency::of(&input, meta.len());
    let mut outputs = create_outputs(outs)?;
    // The in-kernel copy (copy_file_range) when the one destination is a local file.
    let direct = outputs.len() == 1 && outputs[0].as_file().is_some();
    let mut buf = if direct {
        Vec::new()
    } else {
        vec![0u8; ctx.throttle.chunk().min(TEE_BUF)]
    };
    // The bytes go through `buf`: they are hashed on the way when a verify follows.
    let mut hasher = ctx
        .sent
        .filter(|_| !direct)
        .map(|_| xxhash_rust::xxh3::Xxh3::new());
    let mut done: u64 = 0;
    // Up to the size at open: a file that grows is caught by the comparison below, not read
    // to its new end.
    while done < meta.len() {
        if ctx.stopping() {
            return Err(CopyError::Cancelled);
        }
        let chunk = if direct {
            ctx.throttle.chunk()
        } else {
            buf.len()
        };
        let want = (chunk as u64).min(meta.len() - done);
        ctx.throttle.acquire(want as usize);
        let n = if let (true, Some(output)) = (direct, outputs[0].as_file()) {
            let o = &outs[0];
            // std::io::copy uses copy_file_range between files (and falls back to read/write).
            io::copy(&mut (&input).take(want), &mut &*output).map_err(|e| {
                if e.raw_os_error() == Some(nix::errno::Errno::ENOSPC as i32) {
                    dst_err(o.path(), e)
                } else {
                    classify(e, src, &o.path())
                }
            })?
        } else {
            let n = (&input).read(&mut buf[..want as usize]).map_err(src_err)?;
            write_to_all(&mut outputs, outs, &buf[..n])?;
            if let Some(h) = hasher.as_mut() {
                h.update(&buf[..n]);
            }
            n as u64
        };
        if n == 0 {
            break;
        }
        for output in &outputs {
            output.writeback(done, n);
        }
        cached_before.drop_new_pages(&input, done, n);
        done += n;
        ctx.progress.add_bytes(n);
    }
    // Unchanged while it was read: the same size, modification and change times (fstat of
    // the open file). A rewrite in place keeps the size but moves mtime and ctime.
    let now = input.metadata().map_err(src_err)?;
    let stamp = |m: &std::fs::Metadata| {
        use std::os::unix::fs::MetadataExt;
        (
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
        )
    };
    if meta.len() != done || stamp(&now) != stamp(&meta) {
        return Err(CopyError::Changed {
            path: src.to_path_buf(),
            copied: done,
            now: now.len(),
        });
    }
    let times = {
        use std::os::unix::fs::MetadataExt;
        let t = |sec, nsec| crate::fsutil::MTime { sec, nsec };
        Times {
            accessed: t(meta.atime(), meta.atime_nsec()),
            modified: t(meta.mtime(), meta.mtime_nsec()),
        }
    };
    finish_outputs(
        &mut outputs,
        outs,
        meta.permissions().mode(),
        Some(times),
        durable,
    )?;
    if let (Some(sent), Some(h)) = (ctx.sent, hasher) {
        sent.record(rel, h.digest128(), done, times.modified);
    }
    Ok(done)
}

/// Why [`pump`] stopped early.
enum Stop {
    /// Reading the source failed after this many bytes were copied.
    Read(io::Error, u64),
    /// Writing failed, or the run is stopping.
    Copy(CopyError),
}

/// Copies a remote input to every output until it ends or `size` bytes are copied (a file
/// that grew is the caller's to notice, from its size afterwards), in throttled chunks. Each chunk is read whole before it is written: one write and one writeback hint
/// per chunk, and the bandwidth taken is the bandwidth used (a channel read returns a
/// packet or so). Returns the bytes copied.
fn pump(
    outputs: &mut [Box<dyn OutFile>],
    outs: &[Out],
    size: u64,
    ctx: &Ctx,
    mut hasher: Option<&mut xxhash_rust::xxh3::Xxh3>,
    mut read: impl FnMut(&mut [u8]) -> io::Result<usize>,
) -> Result<u64, Stop> {
    thread_local! {
        // One buffer per copy worker, for all its files: a fresh zeroed one per file cost
        // a memset (or page faults) of the whole chunk each time.
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with_borrow_mut(|buf| {
        let size_wanted = ctx.throttle.chunk().clamp(64 << 10, 2 << 20);
        if buf.len() != size_wanted {
            *buf = vec![0u8; size_wanted];
        }
        let mut done: u64 = 0;
        loop {
            if done >= size {
                return Ok(done);
            }
            if ctx.stopping() {
                return Err(Stop::Copy(CopyError::Cancelled));
            }
            let want = (buf.len() as u64).min(size - done) as usize;
            ctx.throttle.acquire(want);
            let n = fill(&mut buf[..want], &mut read).map_err(|e| Stop::Read(e, done))?;
            if n == 0 {
                return Ok(done);
            }
            write_to_all(outputs, outs, &buf[..n]).map_err(Stop::Copy)?;
            if let Some(h) = hasher.as_deref_mut() {
                h.update(&buf[..n]);
            }
            for output in outputs.iter() {
                output.writeback(done, n as u64);
            }
            done += n as u64;
            ctx.progress.add_bytes(n as u64);
        }
    })
}

/// Reads into all of `buf` unless the input ends first; returns how much was read.
fn fill(buf: &mut [u8], mut read: impl FnMut(&mut [u8]) -> io::Result<usize>) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Drops a written (and fsync'ed, so clean) file from the page cache.
pub fn drop_cache(f: &File) {
    crate::cache::dontneed(f, 0, 0);
}

/// Which side an I/O error from `io::copy` came from is not reported; a read error on a
/// healthy target is far less likely than the reverse, so name both paths.
fn classify(e: io::Error, src: &Path, dst: &Path) -> CopyError {
    CopyError::Target {
        path: dst.to_path_buf(),
        cause: io::Error::new(e.kind(), format!("{e} (copying from {})", src.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Hidden;
    use crate::sync::limiter::Unlimited;
    use crate::volume::Local;
    use std::fs::OpenOptions;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn copies_content_times_and_owner() {
        let d = tempfile::tempdir().unwrap();
        let s = d.path().join("s");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&s, &data).unwrap();
        let sm = std::fs::metadata(&s).unwrap();
        let cancel = AtomicBool::new(false);
        let sent = crate::hash::Sent::default();
        let ctx = unlimited(&Hidden, &cancel, Some(&sent));
        let owner = Owner {
            uid: sm.uid(),
            gid: sm.gid(),
        };
        let target = Local::open(d.path(), d.path(), owner).unwrap();
        // One destination (copy_file_range) and two (read once, written twice).
        for outs in [vec![Path::new("t")], vec![Path::new("t"), Path::new("t2")]] {
            let outs: Vec<Out> = outs
                .into_iter()
                .map(|rel| Out {
                    target: &target,
                    rel,
                })
                .collect();
            let src = Source::Local(d.path().to_path_buf());
            assert_eq!(
                copy_file(
                    &mut Reader::new(&src, &Streaming::default()),
                    "s",
                    &outs,
                    true,
                    &ctx
                )
                .unwrap(),
                data.len() as u64
            );
            for o in &outs {
                assert_eq!(std::fs::read(o.path()).unwrap(), data);
                let tm = std::fs::metadata(o.path()).unwrap();
                assert_eq!((tm.mtime(), tm.mtime_nsec()), (sm.mtime(), sm.mtime_nsec()));
                assert_eq!(tm.mode() & 0o660, 0o660);
            }
            // The bytes passed through memory only with two destinations: only then is
            // their hash kept, for the source's size and mtime.
            let mtime = crate::fsutil::MTime {
                sec: sm.mtime(),
                nsec: sm.mtime_nsec(),
            };
            let kept = sent.get("s", data.len() as u64, mtime);
            if outs.len() == 1 {
                assert_eq!(kept, None);
            } else {
                assert_eq!(kept, Some(xxhash_rust::xxh3::xxh3_128(&data)));
            }
        }
    }

    /// A progress sink that runs `act` on the source once, after the first chunk, and
    /// counts the chunks.
    struct Meddle<F: Fn() + Send + Sync> {
        act: F,
        calls: std::sync::atomic::AtomicU64,
    }
    impl<F: Fn() + Send + Sync> Progress for Meddle<F> {
        fn add_bytes(&self, _: u64) {
            if self.calls.fetch_add(1, Ordering::Relaxed) == 0 {
                (self.act)();
            }
        }
        fn take_back(&self, _: u64) {}
        fn finish(&self, _: bool) {}
    }

    /// The context of a test copy: no limit, no deadline.
    fn unlimited<'a>(
        progress: &'a dyn Progress,
        cancel: &'a AtomicBool,
        sent: Option<&'a crate::hash::Sent>,
    ) -> Ctx<'a> {
        Ctx {
            throttle: &Unlimited,
            progress,
            cancel,
            deadline: None,
            sent,
        }
    }

    fn copy_meddled(act: impl Fn() + Send + Sync, s: &Path) -> (Result<u64, CopyError>, u64) {
        copy_meddled_to(act, s, &["t"], None)
    }

    /// Copies `s` to `outs` beside it (one: `copy_file_range`; more: through memory), with
    /// `act` run on the source after the first chunk; the result and the chunks counted.
    fn copy_meddled_to(
        act: impl Fn() + Send + Sync,
        s: &Path,
        outs: &[&str],
        sent: Option<&crate::hash::Sent>,
    ) -> (Result<u64, CopyError>, u64) {
        let d = s.parent().unwrap();
        let sm = std::fs::metadata(s).unwrap();
        let owner = Owner {
            uid: sm.uid(),
            gid: sm.gid(),
        };
        let target = Local::open(d, d, owner).unwrap();
        let cancel = AtomicBool::new(false);
        let progress = Meddle {
            act,
            calls: Default::default(),
        };
        let ctx = unlimited(&progress, &cancel, sent);
        let src = Source::Local(d.to_path_buf());
        let outs: Vec<Out> = outs
            .iter()
            .map(|rel| Out {
                target: &target,
                rel: Path::new(rel),
            })
            .collect();
        let r = copy_file(
            &mut Reader::new(&src, &Streaming::default()),
            "s",
            &outs,
            true,
            &ctx,
        );
        (r, progress.calls.load(Ordering::Relaxed))
    }

    /// A file rewritten while it was read through memory (two destinations, hashed on the
    /// way for the verify) is not copied, and leaves no hash for the verify to take.
    #[test]
    fn a_file_rewritten_while_hashed_leaves_no_hash() {
        let d = tempfile::tempdir().unwrap();
        let s = d.path().join("s");
        std::fs::write(&s, vec![1u8; 3 << 20]).unwrap();
        let rewrite = || {
            let f = OpenOptions::new().write(true).open(&s).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&f, &[2u8; 10], 2 << 20).unwrap();
        };
        let sent = crate::hash::Sent::default();
        let (r, calls) = copy_meddled_to(rewrite, &s, &["t", "t2"], Some(&sent));
        assert!(matches!(r, Err(CopyError::Changed { .. })), "{r:?}");
        assert!(calls >= 1);
        assert!(sent.is_empty(), "{sent:?}");
    }

    /// Regression: a file rewritten in place with the same size while it was copied was
    /// published as complete (only the size was compared).
    #[test]
    fn a_file_rewritten_in_place_with_the_same_size_is_not_taken_as_copied() {
        let d = tempfile::tempdir().unwrap();
        let s = d.path().join("s");
        std::fs::write(&s, vec![1u8; 100_000]).unwrap();
        let rewrite = || {
            let f = OpenOptions::new().write(true).open(&s).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&f, &[2u8; 10], 0).unwrap();
        };
        let (r, _) = copy_meddled(rewrite, &s);
        assert!(matches!(r, Err(CopyError::Changed { .. })), "{r:?}");
        assert!(!d.path().join("t").exists(), "the partial copy stays");
    }

    /// Regression: a file that grew past its size at open was read one byte per call to
    /// its new end.
    #[test]
    fn a_file_that_grows_while_copied_is_not_read_byte_by_byte() {
        let d = tempfile::tempdir().unwrap();
        let s = d.path().join("s");
        std::fs::write(&s, vec![1u8; 100_000]).unwrap();
        let grow = || {
            let mut f = OpenOptions::new().append(true).open(&s).unwrap();
            f.write_all(&vec![2u8; 200_000]).unwrap();
        };
        let (r, chunks) = copy_meddled(grow, &s);
        assert!(matches!(r, Err(CopyError::Changed { .. })), "{r:?}");
        assert!(chunks < 10, "{chunks} reads for 300 kB");
    }

    #[test]
    fn cancelled_copy_leaves_no_partial_file() {
        let d = tempfile::tempdir().unwrap();
        let (s, t) = (d.path().join("s"), d.path().join("t"));
        std::fs::write(&s, b"data").unwrap();
        let cancel = AtomicBool::new(true);
        let ctx = unlimited(&Hidden, &cancel, None);
        let t2 = d.path().join("t2");
        let owner = Owner { uid: 0, gid: 0 };
        let target = Local::open(d.path(), d.path(), owner).unwrap();
        let outs = [
            Out {
                target: &target,
                rel: Path::new("t"),
            },
            Out {
                target: &target,
                rel: Path::new("t2"),
            },
        ];
        assert!(matches!(
            copy_file(
                &mut Reader::new(
                    &Source::Local(d.path().to_path_buf()),
                    &Streaming::default()
                ),
                "s",
                &outs,
                false,
                &ctx
            ),
            Err(CopyError::Cancelled)
        ));
        assert!(!t.exists() && !t2.exists());
    }
}
