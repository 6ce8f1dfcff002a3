//! Many files of an SSH source through one exec channel: GNU `tar` on the host reads the
//! names the worker sends on its stdin (NUL-separated, as it goes) and writes one archive
//! to its stdout. Measured here, this costs about half the CPU of SFTP per byte on both
//! ends (no request per 30000 bytes, no sftp-server), which is what lets an SSH apply
//! keep up with `rsync -e ssh` (docs/performance.md, "Over SSH").
//!
//! The stream is only an accelerator. Each name is sent at most once; a file the stream does
//! not deliver (tar skipped it: vanished, unreadable), or any stream failure, leaves that
//! file to SFTP, whose errors and retries are the ones the rest of the tool knows. Headers
//! are parsed by the `tar` crate; only plain ustar/GNU headers of regular files are
//! accepted, which is all that tar writes for the names sent (shorter than 100 bytes,
//! `--no-recursion`, `--hard-dereference`).
//!
//! GNU tar holds back the last partial 10 KiB record until it gets more names or the end of
//! its input, and it writes a full record only when it needs the next block. So every batch
//! of names is followed by [`MARKERS`] (a record and one block) times `/dev/null`: a device
//! is archived as a 512-byte header alone, so the record holding the batch's last byte, and
//! the one holding the first marker, are written out at once. (The source directory itself
//! would do too, but tar reads a directory it archives, even with `--no-recursion`: measured
//! here, that was a tenth of the CPU.) They also tell the reader where the batch ends when
//! tar skipped its last files.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::path::Path;

use super::{Conn, Pool, shell_quote};

/// The longest name sent to tar: longer ones would need GNU long-name entries; they are
/// read over SFTP instead.
const MAX_NAME: usize = 99;

/// tar's record, in 512-byte blocks (`-b`, tar's default, given so that a `TAR_OPTIONS` on
/// the host cannot change it).
const RECORD_BLOCKS: u64 = 20;

/// Device headers after each batch: one more than a record (with exactly a record, a batch
/// ending on a record boundary would leave all of them held back).
const MARKERS: u64 = RECORD_BLOCKS + 1;

/// The marker, and its name in the archive (kept absolute by `-P`: otherwise tar says on
/// its stderr that it removed the `/`, and anything on tar's stderr is a complaint).
const MARKER: &[u8] = b"/dev/null\0";
const MARKER_NAME: &[u8] = b"/dev/null";

/// The tar command, run in the source directory; `names` come on its stdin. The archive goes
/// to stdout; `-v` lists each member on stderr, among tar's complaints (see
/// [`TarStream::batch_said`]); `TAR_OPTIONS` on the host could turn complaints off.
fn command(root: &Path) -> String {
    format!(
        "LC_ALL=C TAR_OPTIONS= exec tar -C {} --null --verbatim-files-from --no-recursion --hard-dereference -P -H gnu -b {RECORD_BLOCKS} -cvf - -T -",
        shell_quote(root)
    )
}

/// Whether `rel` can go through the stream.
pub fn streamable(rel: &str) -> bool {
    !rel.is_empty()
        && rel.len() <= MAX_NAME
        && !rel.starts_with('/')
        && !rel.contains('\0')
        && !rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
}

/// Where the stream's bytes come from and its names go to.
pub trait Pipe: Read + Write {
    /// Ends the names (tar then finishes the archive and exits).
    fn finish_input(&mut self) -> io::Result<()>;
    /// Reads what tar writes to its stderr (waiting for it; 0 at its end).
    fn read_said(&mut self, buf: &mut [u8]) -> io::Result<usize>;
}

/// What the archive says of a file: its attributes when tar opened it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Name (relative to the source directory).
    pub name: String,
    /// Size in bytes (the data that follows).
    pub size: u64,
    /// Modification time, whole seconds.
    pub mtime: i64,
    /// Permission bits.
    pub mode: u32,
}

/// A header in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    /// A file asked for.
    File(Head),
    /// A batch-end marker.
    Marker,
}

/// One worker's stream.
pub struct TarStream<P> {
    pipe: P,
    /// Names of the current batch whose entries have not been read yet, in order.
    pending: VecDeque<String>,
    /// A header read while looking for an earlier name that tar skipped.
    peeked: Option<Item>,
    /// Markers sent and not read yet (the current batch's are the last [`MARKERS`]).
    markers_unread: u64,
    /// Data of the current entry not read yet, then its padding.
    left: u64,
    pad: u64,
    input_closed: bool,
    /// The end of the archive was read.
    ended: bool,
    /// A failure happened: nothing more is read from this stream.
    broken: bool,
    /// A header (file or marker) was read: tar runs.
    delivered: bool,
    /// tar's stderr: an unfinished line, the current batch's names (listed there by `-v`
    /// as tar archives them) and those of them tar skipped, how many markers it listed and
    /// how many were sent.
    said: Vec<u8>,
    batch: std::collections::HashSet<String>,
    skipped: std::collections::HashSet<String>,
    markers_said: u64,
    markers_sent: u64,
}

impl<P: Pipe> TarStream<P> {
    /// A stream over a started tar.
    pub fn new(pipe: P) -> TarStream<P> {
        TarStream {
            pipe,
            pending: VecDeque::new(),
            peeked: None,
            markers_unread: 0,
            left: 0,
            pad: 0,
            input_closed: false,
            ended: false,
            broken: false,
            delivered: false,
            said: Vec::new(),
            batch: Default::default(),
            skipped: Default::default(),
            markers_said: 0,
            markers_sent: 0,
        }
    }

    /// The transport.
    pub fn pipe(&self) -> &P {
        &self.pipe
    }

    /// The transport, to finish it.
    pub fn into_pipe(self) -> P {
        self.pipe
    }

    /// Whether names can still be sent and entries read.
    pub fn usable(&self) -> bool {
        !self.broken && !self.input_closed
    }

    /// Whether no header has been read: when the stream ends or fails before the first
    /// one, tar did not run. (A tar that runs writes at least the markers of each batch.)
    pub fn never_delivered(&self) -> bool {
        !self.delivered
    }

    /// Whether every batch was read to its end.
    pub fn idle(&self) -> bool {
        !self.broken && self.pending.is_empty() && self.left == 0
    }

    /// Asks for a batch of files (each [`streamable`]); the previous batch must have been
    /// read (what is left of it is skipped).
    pub fn send(&mut self, names: &[String]) -> io::Result<()> {
        if !self.usable() || !self.pending.is_empty() {
            return Err(io::Error::other("the stream is not ready for more names"));
        }
        if self.peeked == Some(Item::Marker) {
            self.peeked = None; // the previous batch's: skipped like the rest of them
        }
        if self.said_due() {
            // The previous batch was given up without asking: what tar said of it is not
            // held against this one.
            self.batch_said()?;
        }
        let mut buf = Vec::new();
        for n in names {
            debug_assert!(streamable(n));
            buf.extend_from_slice(n.as_bytes());
            buf.push(0);
        }
        for _ in 0..MARKERS {
            buf.extend_from_slice(MARKER);
        }
        let r = self.pipe.write_all(&buf).and_then(|_| self.pipe.flush());
        self.check(r)?;
        self.pending.extend(names.iter().cloned());
        self.markers_unread += MARKERS;
        self.batch = names.iter().cloned().collect();
        self.skipped.clear();
        self.markers_sent += MARKERS;
        Ok(())
    }

    /// Whether the current batch's stderr has not been read up to its first marker yet.
    fn said_due(&self) -> bool {
        self.markers_sent > 0 && self.markers_said <= self.markers_sent - MARKERS
    }

    /// What tar said on its stderr about the files it delivered in the current batch, other
    /// than listing their names: its complaints (`tar: NAME: Read error at byte …`, `…
    /// file changed as we read it`, in the C locale). A complaint about a file it skipped
    /// (`… Cannot stat …`) is left out: whoever reads that file instead finds out why. tar
    /// lists each member there as it archives it (`-v` with the archive on stdout), and
    /// writes a complaint about a file while it archives it, so once the batch's first
    /// marker is listed, everything it will ever say about the batch's files has been
    /// said. Waits for that line; an error when tar ends first. Call it after reading the
    /// batch's files; nothing is said twice (an empty answer when asked again).
    pub fn batch_said(&mut self) -> io::Result<Vec<String>> {
        let mut complaints = Vec::new();
        let mut buf = [0u8; 4096];
        while self.said_due() {
            let n = match self.pipe.read_said(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.broken = true;
                    return Err(e);
                }
            };
            if n == 0 {
                self.broken = true;
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("tar ended before it got to the end of the batch ({complaints:?})"),
                ));
            }
            self.said.extend_from_slice(&buf[..n]);
            while let Some(nl) = self.said.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.said.drain(..=nl).collect();
                let line = String::from_utf8_lossy(&line[..nl]).into_owned();
                let about_skipped = || {
                    self.skipped.iter().any(|n| {
                        line.strip_prefix("tar: ")
                            .and_then(|r| r.strip_prefix(n.as_str()))
                            .is_some_and(|r| r.starts_with(": "))
                    })
                };
                if line.as_bytes() == MARKER_NAME {
                    self.markers_said += 1;
                } else if !self.batch.contains(&line) && !about_skipped() {
                    // At most 100 kept; the 101st stands for the rest, and is a complaint
                    // about no name in particular.
                    match complaints.len() {
                        0..100 => complaints.push(line),
                        100 => complaints.push("(and more)".to_string()),
                        _ => {}
                    }
                }
            }
        }
        Ok(complaints)
    }

    /// Ends the names: tar finishes the archive.
    pub fn finish_input(&mut self) -> io::Result<()> {
        if self.input_closed {
            return Ok(());
        }
        self.input_closed = true;
        let r = self.pipe.finish_input();
        self.check(r)
    }

    /// Whether `rel` is the entry this stream will deliver next.
    pub fn expects(&self, rel: &str) -> bool {
        !self.broken && self.pending.front().is_some_and(|n| n == rel)
    }

    /// Moves to the entry of `rel` (which must be [`expects`](Self::expects)ed): its header,
    /// or `None` when tar skipped it (the file vanished or could not be read: SFTP tells
    /// why).
    pub fn open(&mut self, rel: &str) -> io::Result<Option<Head>> {
        if !self.expects(rel) {
            return Err(io::Error::other(format!(
                "{rel} was not asked of the stream"
            )));
        }
        let r = self.skip_rest();
        self.check(r)?;
        let item = match self.peeked.take() {
            Some(i) => Some(i),
            None => {
                let r = self.next_item();
                self.check(r)?
            }
        };
        self.pending.pop_front();
        let r = match item {
            None => Ok(None), // the archive ended: tar skipped the rest
            Some(Item::Marker) => {
                self.peeked = Some(Item::Marker); // the batch ended: rel, and the rest, skipped
                Ok(None)
            }
            Some(Item::File(h)) if h.name == rel => {
                self.left = h.size;
                self.pad = (512 - h.size % 512) % 512;
                Ok(Some(h))
            }
            Some(Item::File(h)) if self.pending.contains(&h.name) => {
                self.peeked = Some(Item::File(h)); // rel was skipped; h is a later one
                Ok(None)
            }
            Some(Item::File(h)) => {
                self.broken = true;
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the tar stream sent {} when {rel} was expected", h.name),
                ))
            }
        };
        if matches!(r, Ok(None)) {
            self.skipped.insert(rel.to_string());
        }
        r
    }

    /// Reads data of the current entry (0 at its end).
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.broken {
            return Err(io::Error::other("the stream is broken"));
        }
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let r = self.pipe.read(&mut buf[..want]);
        let n = self.check(r)?;
        if n == 0 {
            self.broken = true;
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the tar stream ended inside a file",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }

    /// Discards what is left of the current entry, and its padding.
    fn skip_rest(&mut self) -> io::Result<()> {
        let n = self.left.saturating_add(self.pad);
        if n > 0 {
            let copied = io::copy(&mut (&mut self.pipe).take(n), &mut io::sink())?;
            if copied != n {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the tar stream ended inside a file",
                ));
            }
        }
        self.left = 0;
        self.pad = 0;
        Ok(())
    }

    /// The next file or marker of the current batch (earlier batches' markers are skipped),
    /// or `None` at the end of the archive.
    fn next_item(&mut self) -> io::Result<Option<Item>> {
        loop {
            let item = self.read_head()?;
            if item == Some(Item::Marker) {
                self.markers_unread = self.markers_unread.saturating_sub(1);
                if self.markers_unread >= MARKERS {
                    continue; // an earlier batch's
                }
            }
            return Ok(item);
        }
    }

    /// The next header, or `None` at the end of the archive.
    fn read_head(&mut self) -> io::Result<Option<Item>> {
        if self.ended {
            return Ok(None);
        }
        let mut block = [0u8; 512];
        let mut got = 0;
        while got < block.len() {
            match self.pipe.read(&mut block[got..])? {
                0 if got == 0 => {
                    self.ended = true; // tar exited without an end marker (it failed)
                    return self.end_of_archive();
                }
                // The remote command ended (a dropped connection is an error, not an end)
                // mid-block: what came was not a tar archive.
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the stream ended inside a tar header: not a tar archive",
                    ));
                }
                n => got += n,
            }
        }
        if block.iter().all(|&b| b == 0) {
            self.ended = true;
            return self.end_of_archive();
        }
        let item = parse_head(&block)?;
        self.delivered = true;
        Ok(Some(item))
    }

    /// The archive ended: expected once the input has ended, and a sign that tar never ran
    /// when nothing came at all; otherwise tar died mid-run, which breaks the stream.
    fn end_of_archive(&mut self) -> io::Result<Option<Item>> {
        if self.input_closed || !self.delivered {
            Ok(None)
        } else {
            Err(io::Error::other(
                "the remote tar ended before its input did",
            ))
        }
    }

    /// Marks the stream broken on an error.
    fn check<T>(&mut self, r: io::Result<T>) -> io::Result<T> {
        if r.is_err() {
            self.broken = true;
        }
        r
    }
}

/// A header block of a regular file or a marker, checked.
fn parse_head(block: &[u8; 512]) -> io::Result<Item> {
    let bad =
        |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("tar stream: {what}"));
    let h = tar::Header::from_byte_slice(block);
    let sum: u32 = block[..148]
        .iter()
        .chain(&block[156..])
        .map(|&b| u32::from(b))
        .sum::<u32>()
        + 8 * u32::from(b' ');
    if h.cksum().ok() != Some(sum) {
        return Err(bad("header checksum mismatch"));
    }
    if h.entry_type().is_character_special() && &*h.path_bytes() == MARKER_NAME {
        return Ok(Item::Marker);
    }
    if !h.entry_type().is_file() {
        // A real archive (the checksum holds) with a file that is no longer a regular one:
        // SFTP says what it is; tar itself works.
        return Err(io::Error::other(format!(
            "tar stream: entry {} is not a regular file ({:?})",
            String::from_utf8_lossy(&h.path_bytes()),
            h.entry_type()
        )));
    }
    let name =
        String::from_utf8(h.path_bytes().into_owned()).map_err(|_| bad("name is not UTF-8"))?;
    Ok(Item::File(Head {
        name,
        size: h.size().map_err(|e| bad(&e.to_string()))?,
        mtime: header_mtime(h).map_err(|e| bad(&e.to_string()))?,
        mode: h.mode().map_err(|e| bad(&e.to_string()))?,
    }))
}

/// A header's mtime in seconds: octal, or GNU tar's base-256 (its first byte 0x80 for a
/// positive value, 0xff for a negative one: GNU tar writes a time before 1970 so), which the
/// `tar` crate reads as unsigned and from its last 8 bytes only. Saturated to `i64`.
pub(crate) fn header_mtime(h: &tar::Header) -> io::Result<i64> {
    let field = &h.as_old().mtime;
    if field[0] & 0x80 == 0 {
        return Ok(i64::try_from(h.mtime()?).unwrap_or(i64::MAX));
    }
    // The first byte's other 7 bits, sign-extended, then 88 more bits: within an i128.
    let first = i128::from(((field[0] << 1) as i8) >> 1);
    let v = field[1..]
        .iter()
        .fold(first, |v, &b| (v << 8) | i128::from(b));
    Ok(v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64)
}

/// A tar running on the SSH host, on one of the pool's connections.
pub struct SshPipe {
    channel: ssh2::Channel,
    conn: Conn,
}

impl SshPipe {
    /// Starts tar on a pooled connection (or a new one).
    pub fn start(pool: &Pool, root: &Path) -> io::Result<SshPipe> {
        let conn = pool.take_or_refuse(false)?;
        Self::start_on(conn, root)
    }

    /// Starts tar on `conn`.
    pub fn start_on(conn: Conn, root: &Path) -> io::Result<SshPipe> {
        let channel = exec_tar(&conn, root)?;
        Ok(SshPipe { channel, conn })
    }

    /// Reads what tar still writes after the end of its input and waits for the channel
    /// to close: whether it closed cleanly, and tar's exit status (-1 when unknown).
    fn wait_for_exit(&mut self) -> (bool, i32) {
        let drained = io::copy(&mut self.channel, &mut io::sink()).is_ok();
        let closed = drained && self.channel.wait_close().is_ok();
        (closed, self.channel.exit_status().unwrap_or(-1))
    }

    /// How tar exited (after its end; -1 when unknown).
    pub fn exit_status(mut self) -> i32 {
        self.wait_for_exit().1
    }

    /// The connection back (for the pool) once tar has finished.
    pub fn into_conn(mut self) -> Option<Conn> {
        let (closed, status) = self.wait_for_exit();
        if status != 0 {
            tracing::debug!(
                "the remote tar exited with {status} (files it skipped were read over SFTP)"
            );
        }
        closed.then_some(self.conn)
    }
}

impl Read for SshPipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.channel.read(buf)
    }
}

impl Write for SshPipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.channel.write(buf)
    }
    /// Nothing to do: a channel write is sent at once. (`Channel::flush` is libssh2's
    /// `libssh2_channel_flush`, which discards data received and not yet read: here, part
    /// of the archive.)
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Pipe for SshPipe {
    fn finish_input(&mut self) -> io::Result<()> {
        self.channel.send_eof().map_err(io::Error::from)
    }
    fn read_said(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.channel.stderr().read(buf)
    }
}

/// Starts the tar command on a channel of `conn`.
fn exec_tar(conn: &Conn, root: &Path) -> io::Result<ssh2::Channel> {
    let mut channel = conn.sess.channel_session().map_err(io::Error::from)?;
    // tar's stderr is kept apart from the archive and read after each batch
    // (TarStream::batch_said): a file it could not read is in the archive with zeros for
    // the unread rest, and only its stderr says so.
    channel
        .handle_extended_data(ssh2::ExtendedData::Normal)
        .map_err(io::Error::from)?;
    channel.exec(&command(root)).map_err(io::Error::from)?;
    Ok(channel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

    /// GNU tar run here, as the remote one would be.
    struct LocalTar {
        child: Child,
        stdin: Option<ChildStdin>,
        stdout: ChildStdout,
        stderr: std::process::ChildStderr,
    }

    impl LocalTar {
        fn start(root: &Path) -> LocalTar {
            let mut child = Command::new("sh")
                .arg("-c")
                .arg(command(root))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            LocalTar {
                stdin: child.stdin.take(),
                stdout: child.stdout.take().unwrap(),
                stderr: child.stderr.take().unwrap(),
                child,
            }
        }
    }

    impl Read for LocalTar {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.stdout.read(buf)
        }
    }

    impl Write for LocalTar {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.stdin
                .as_mut()
                .ok_or(io::ErrorKind::BrokenPipe)?
                .write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Pipe for LocalTar {
        fn finish_input(&mut self) -> io::Result<()> {
            self.stdin = None;
            Ok(())
        }
        fn read_said(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.stderr.read(buf)
        }
    }

    impl Drop for LocalTar {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn read_all(s: &mut TarStream<LocalTar>) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 7000];
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Runs `f`, failing (rather than hanging) if it waits on tar for 60 s: a batch whose
    /// end tar holds back would never be read.
    fn within_a_minute(f: impl FnOnce() + Send + 'static) {
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            f();
            let _ = tx.send(());
        });
        match rx.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(()) => t.join().unwrap(),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                std::panic::resume_unwind(t.join().unwrap_err())
            }
            Err(e) => panic!("the stream waited on tar: {e:?}"),
        }
    }

    #[test]
    fn delivers_batches_in_order_without_waiting_and_skips_missing_files() {
        within_a_minute(delivers_batches);
    }

    fn delivers_batches() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("b")).unwrap();
        // Sizes around the 512-byte block and 10 KiB record boundaries.
        let files: Vec<(&str, Vec<u8>)> = vec![
            ("a", (0..70_001u32).map(|i| (i % 253) as u8).collect()),
            ("b/empty", Vec::new()),
            ("b/c", vec![7u8; 512]),
            ("d", vec![9u8; 10_240]),
        ];
        for (n, data) in &files {
            std::fs::write(d.path().join(n), data).unwrap();
        }
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(d.path().join("a")).unwrap();
        let mut s = TarStream::new(LocalTar::start(d.path()));
        // Each batch is read while tar waits for more names: were its tail held back in
        // tar's buffer, these reads would never return.
        s.send(&names(&["a", "gone", "b/empty"])).unwrap();
        let h = s.open("a").unwrap().unwrap();
        assert_eq!((h.name.as_str(), h.size), ("a", 70_001));
        assert_eq!((h.mtime, h.mode & 0o777), (m.mtime(), m.mode() & 0o777));
        assert_eq!(read_all(&mut s), files[0].1);
        // A missing file is skipped by tar: None, and the batch goes on.
        assert_eq!(s.open("gone").unwrap(), None);
        let h = s.open("b/empty").unwrap().unwrap();
        assert_eq!(h.size, 0);
        assert_eq!(read_all(&mut s), Vec::<u8>::new());
        assert!(s.idle());
        // A batch whose last file is missing ends at its markers, not at a later batch.
        s.send(&names(&["b/c", "gone"])).unwrap();
        s.open("b/c").unwrap().unwrap();
        let mut two = [0u8; 2];
        assert_eq!(s.read(&mut two).unwrap(), 2); // the rest is skipped by the next open
        assert_eq!(s.open("gone").unwrap(), None);
        s.send(&names(&["gone", "d"])).unwrap();
        assert_eq!(s.open("gone").unwrap(), None);
        let h = s.open("d").unwrap().unwrap();
        assert_eq!(h.size, 10_240);
        assert_eq!(read_all(&mut s), files[3].1);
        s.finish_input().unwrap();
        assert!(s.idle() && !s.usable());
    }

    #[test]
    fn what_tar_says_is_told_per_batch() {
        within_a_minute(what_tar_says);
    }

    fn what_tar_says() {
        let d = tempfile::tempdir().unwrap();
        let big = d.path().join("big");
        std::fs::write(&big, vec![3u8; 4 << 20]).unwrap();
        std::fs::write(d.path().join("small"), b"s").unwrap();
        let mut s = TarStream::new(LocalTar::start(d.path()));
        // Read without a word (its names listed by -v are not complaints).
        s.send(&names(&["small", "big"])).unwrap();
        s.open("small").unwrap().unwrap();
        s.open("big").unwrap().unwrap();
        read_all(&mut s);
        assert_eq!(s.batch_said().unwrap(), Vec::<String>::new());
        // A skipped file: tar says why, which is no complaint about the files it delivered
        // (whoever reads the skipped one finds out), and is not held against a later batch.
        s.send(&names(&["gone", "small"])).unwrap();
        assert_eq!(s.open("gone").unwrap(), None);
        s.open("small").unwrap().unwrap();
        read_all(&mut s);
        assert_eq!(s.batch_said().unwrap(), Vec::<String>::new());
        // A file that grows while tar reads it (tar waits on the full pipe meanwhile):
        // the data is what tar read, whole, and only its stderr says it changed.
        let grow_while_read = |s: &mut TarStream<LocalTar>| {
            s.send(&names(&["big"])).unwrap();
            s.open("big").unwrap().unwrap();
            let mut first = vec![0u8; 1000];
            let mut got = 0;
            while got < first.len() {
                got += s.read(&mut first[got..]).unwrap();
            }
            std::fs::OpenOptions::new()
                .append(true)
                .open(&big)
                .unwrap()
                .write_all(b"more")
                .unwrap();
            assert_eq!(
                read_all(s).len(),
                std::fs::metadata(&big).unwrap().len() as usize - 1004
            );
        };
        grow_while_read(&mut s);
        assert_eq!(
            s.batch_said().unwrap(),
            ["tar: big: file changed as we read it"]
        );
        assert_eq!(s.batch_said().unwrap(), Vec::<String>::new()); // said once
        // A batch given up without asking what tar said of it (its files abandoned): that
        // is not blamed on the next batch.
        grow_while_read(&mut s);
        s.send(&names(&["small"])).unwrap();
        s.open("small").unwrap().unwrap();
        read_all(&mut s);
        assert_eq!(s.batch_said().unwrap(), Vec::<String>::new());
        s.finish_input().unwrap();
    }

    #[test]
    fn a_skipped_file_right_after_a_record_boundary_or_first_in_a_stream_is_seen_at_once() {
        within_a_minute(|| {
            let d = tempfile::tempdir().unwrap();
            // A header and 19 data blocks: the batch's file ends on a record boundary.
            std::fs::write(d.path().join("r"), vec![3u8; 19 * 512]).unwrap();
            let mut s = TarStream::new(LocalTar::start(d.path()));
            s.send(&names(&["gone"])).unwrap();
            assert_eq!(s.open("gone").unwrap(), None);
            s.send(&names(&["r", "gone"])).unwrap();
            s.open("r").unwrap().unwrap();
            assert_eq!(read_all(&mut s), vec![3u8; 19 * 512]);
            // Its markers start a record: were they exactly a record, tar would hold them.
            assert_eq!(s.open("gone").unwrap(), None);
            assert!(s.idle());
        });
    }

    #[test]
    fn names_not_asked_for_are_refused_and_a_batch_needs_the_last_one_read() {
        within_a_minute(refuses_names_not_asked_for);
    }

    fn refuses_names_not_asked_for() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("x"), b"x").unwrap();
        std::fs::write(d.path().join("y"), b"y").unwrap();
        let mut s = TarStream::new(LocalTar::start(d.path()));
        s.send(&names(&["x", "y"])).unwrap();
        assert!(s.open("y").is_err()); // out of order
        assert!(s.send(&names(&["x"])).is_err()); // the batch is not read yet
        s.open("x").unwrap().unwrap();
        assert_eq!(read_all(&mut s), b"x");
    }

    #[test]
    fn a_stream_cut_inside_a_file_is_an_error_not_short_data() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("big"), vec![1u8; 1 << 20]).unwrap();
        let mut tar = LocalTar::start(d.path());
        tar.write_all(b"big\0").unwrap();
        tar.finish_input().unwrap();
        // Only the header and part of the data get through.
        let mut head = vec![0u8; 512 + 1000];
        tar.stdout.read_exact(&mut head).unwrap();
        let mut s = TarStream::new(Cut(io::Cursor::new(head)));
        s.pending.push_back("big".into());
        s.input_closed = true;
        let h = s.open("big").unwrap().unwrap();
        assert_eq!(h.size, 1 << 20);
        let mut buf = vec![0u8; 1 << 20];
        assert_eq!(s.read(&mut buf).unwrap(), 1000);
        assert_eq!(
            s.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        assert!(!s.expects("big") && !s.idle());
    }

    struct Cut(io::Cursor<Vec<u8>>);
    impl Read for Cut {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            self.0.read(b)
        }
    }
    impl Write for Cut {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Pipe for Cut {
        fn finish_input(&mut self) -> io::Result<()> {
            Ok(())
        }
        fn read_said(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Ok(0)
        }
    }

    #[test]
    fn corrupt_headers_and_odd_names_are_refused() {
        let mut block = [0u8; 512];
        block[..4].copy_from_slice(b"name");
        assert!(parse_head(&block).is_err()); // no valid checksum
        for bad in ["", "/abs", "a//b", "./a", "a/../b", &"x".repeat(100)] {
            assert!(!streamable(bad), "{bad:?}");
        }
        assert!(streamable("01HXYZ/chunks/000001"));
    }

    /// The header block of a regular file `a` whose mtime field holds `mtime` as it is.
    fn head_with_mtime(mtime: [u8; 12]) -> [u8; 512] {
        let mut h = tar::Header::new_gnu();
        h.set_path("a").unwrap();
        h.set_size(0);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.as_old_mut().mtime = mtime;
        h.set_cksum();
        *h.as_bytes()
    }

    fn mtime_of(block: &[u8; 512]) -> i64 {
        match parse_head(block).unwrap() {
            Item::File(h) => h.mtime,
            Item::Marker => panic!("a marker"),
        }
    }

    /// Issue 13: GNU tar writes a time before 1970 in base-256 (this is its header of a file
    /// touched with `-d 1960-01-01`); the `tar` crate reads it as a huge unsigned number.
    #[test]
    fn a_time_before_1970_in_a_header_is_negative() {
        let gnu = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xed, 0x30, 0x08, 0x80,
        ];
        assert_eq!(mtime_of(&head_with_mtime(gnu)), -315_619_200);
    }

    /// Issue 13: a huge time in a header (octal at its widest, base-256 beyond 64 bits either
    /// way) is read without a panic, saturated to `i64` (not cut to its last 8 bytes), and a
    /// copy can be given it.
    #[test]
    fn a_huge_time_in_a_header_saturates_without_panic() {
        let base256 = |first: u8, rest: u8, last: [u8; 8]| {
            let mut f = [rest; 12];
            f[0] = first;
            f[4..].copy_from_slice(&last);
            f
        };
        let cases = [
            (*b"77777777777\0", 0o77777777777),
            (*b"777777777777", 0o777777777777),
            (base256(0x80, 0xff, [0xff; 8]), i64::MAX),
            (base256(0x80, 0, [0, 0, 0, 0, 0, 0, 0, 0]), 0),
            (base256(0x80, 1, [0; 8]), i64::MAX), // 2^88 + 2^80 + 2^72 + 2^64
            (base256(0xff, 0x80, [0; 8]), i64::MIN),
            (base256(0xff, 0xff, [0xff; 8]), -1),
        ];
        for (field, want) in cases {
            let got = mtime_of(&head_with_mtime(field));
            assert_eq!(got, want, "{field:02x?}");
            crate::fsutil::MTime { sec: got, nsec: 0 }.system_time();
        }
    }
}
