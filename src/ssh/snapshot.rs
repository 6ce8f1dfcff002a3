//! One look at a remote TSDB directory in a handful of commands, for the scan and the cheap
//! format checks that start every `plan`, `apply` and `verify`.
//!
//! Over SFTP that look costs about 30 request/answer round trips per block (list the block
//! and its `chunks/`, read `meta.json`, open and read the headers of `index`, the chunk
//! segments and `tombstones`), each a trip through sshd and sftp-server: 1.8 s for 284
//! blocks on the bench machine. Here it is:
//!
//! 1. one `find` that prints every entry's type, mode, owner, size and time, descending
//!    only into what the scan walks (blocks, `wal/`, `wbl/`, `chunks_head/`,
//!    `chunk_snapshot.*`), after the lock probe ([`LOCK_PROBE`]);
//! 2. then one more command, its files named by shell patterns (`./<26 chars>/index`,
//!    ...): `head` and `tail` of the first and last [`ENDS`] bytes of every block `index`
//!    and chunk segment (what the cheap checks read), then a `tar` of the small files read
//!    whole (`meta.json`, `tombstones`), then the three exit statuses. What the patterns
//!    match is worked out from the listing, so the output is split without separators;
//!    the archive's header checksums, right after the heads and tails, prove their length.
//!
//! Every command runs the login shell's startup files on the host once, which is why the
//! reads share one (libssh2 cannot send a command line of more than about 32 KiB, so the
//! files are named by patterns, not one by one). Anything a command could not deliver exactly (a non-zero exit, output
//! of the wrong length, a host without GNU find or tar, a login shell that is not a POSIX
//! shell) is left out, and is then read over SFTP as before; a snapshot that cannot be
//! taken at all is no snapshot. Reads outside the prefetched ends of a file go to SFTP too,
//! so a snapshot only ever saves round trips. Every command only reads.

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::Path;

use crate::fsutil::MTime;
use crate::source::stat::{Ent, Stat};

use super::{Pool, shell_quote};

/// The remote lock probe, in the TSDB directory: prints one line, `lock 0` (free), `lock
/// 99` (held) or `absent`. In a subshell, so the lock file is closed again when it ends.
pub(crate) const LOCK_PROBE: &str = "(if [ -e lock ] && command exec 9<lock; then flock -n -E 99 9; echo \"lock $?\"; else echo absent; fi) 2>/dev/null";

/// Bytes kept of the start and of the end of each block `index` and chunk segment: the
/// cheap checks read a 5- or 8-byte header and the 52-byte index TOC.
pub const ENDS: usize = 64;
/// Small files are read whole up to this much in all (otherwise over SFTP when asked for).
const WHOLE_TOTAL: u64 = 32 << 20;
/// Receive window of the snapshot's channels: each command's whole output fits, so the
/// commands run side by side while their outputs are read one after the other.
const WINDOW: u32 = 64 << 20;
/// The statuses after a read command's output: ` hhh ttt www\n`.
const TRAILER: usize = 13;

/// What the commands delivered.
#[derive(Default)]
pub struct Snapshot {
    /// Listings of the directories `find` descended into, by path relative to the root
    /// (`""`: the root), sorted by name.
    dirs: HashMap<String, Vec<Ent>>,
    /// Attributes of every entry listed, by relative path (not the root's).
    stats: HashMap<String, Stat>,
    /// Small files read whole, with their attributes as `tar` read them.
    whole: HashMap<String, (Vec<u8>, Stat)>,
    /// The first and the last [`ENDS`] bytes of big files.
    ends: HashMap<String, (Vec<u8>, Vec<u8>)>,
    /// The root directory's attributes.
    root: Option<Stat>,
    /// The lock probe's answer.
    lock: Option<String>,
}

impl Snapshot {
    /// The entries of `rel`, if `find` listed it.
    pub fn list(&self, rel: &str) -> Option<Vec<Ent>> {
        self.dirs.get(rel).cloned()
    }

    /// The attributes of `rel` (`""`: the root directory, links followed), if `find`
    /// listed it.
    pub fn stat(&self, rel: &str) -> Option<Stat> {
        if rel.is_empty() {
            return self.root;
        }
        self.stats.get(rel).copied()
    }

    /// What the lock probe answered just before the listing.
    pub fn lock(&self) -> Option<&str> {
        self.lock.as_deref()
    }

    /// The content and attributes of a small file read whole.
    pub fn whole(&self, rel: &str) -> Option<(&[u8], Stat)> {
        self.whole.get(rel).map(|(d, s)| (d.as_slice(), *s))
    }

    /// The first and last [`ENDS`] bytes of `rel`, and its attributes.
    pub fn ends(&self, rel: &str) -> Option<(&[u8], &[u8], Stat)> {
        let (h, t) = self.ends.get(rel)?;
        Some((h, t, self.stat(rel)?))
    }

    /// What the snapshot holds of `rel`'s bytes: a head and a tail (all of a file read
    /// whole is its head), and its attributes.
    pub fn bytes(&self, rel: &str) -> Option<(&[u8], &[u8], Stat)> {
        self.whole(rel)
            .map(|(d, st)| (d, &[][..], st))
            .or_else(|| self.ends(rel))
    }

    /// Entries listed, files read whole, files with their ends read.
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.stats.len(), self.whole.len(), self.ends.len())
    }
}

/// Takes a snapshot of `root` on the pool's host; `None` (the reason logged at debug level)
/// when `find` cannot list it, e.g. on a host without GNU find or one that allows SFTP only.
/// One attempt: a host that cannot be reached is then retried, with backoff and clear
/// messages, by the SFTP scan that takes over.
pub fn take(pool: &Pool, root: &Path) -> Option<Snapshot> {
    let t = std::time::Instant::now();
    let c = match pool.take_or_refuse(false) {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!("no snapshot of the source ({e})");
            return None;
        }
    };
    let r = (|| -> io::Result<Snapshot> {
        let (status, out) = run(&c.sess, &find_command(root))?;
        if status != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("find exited with {status}"),
            ));
        }
        // The lock probe's line, then find's records.
        let nl = out.iter().position(|&b| b == b'\n').unwrap_or(out.len());
        let records = out.get(nl + 1..).unwrap_or(&[]);
        let mut snap =
            parse_find(records).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        snap.lock = Some(String::from_utf8_lossy(&out[..nl]).into_owned());
        if let Some(b) = snap.wanted() {
            let (_, out) = run(&c.sess, &read_command(root, &b))?;
            if let Err(why) = snap.add_batch(&b, &out) {
                tracing::debug!("snapshot reads left to SFTP: {why}");
            }
        }
        Ok(snap)
    })();
    if !matches!(&r, Err(e) if super::is_connection_error(e)) {
        pool.give(c);
    }
    match r {
        Ok(s) => {
            let (entries, whole, ends) = s.counts();
            tracing::debug!(
                entries,
                whole,
                ends,
                seconds = t.elapsed().as_secs_f64(),
                "source listed by find, small files by tar, headers by head and tail"
            );
            Some(s)
        }
        Err(e) => {
            tracing::debug!("no snapshot of the source ({e}); listing and reading it over SFTP");
            None
        }
    }
}

/// Lists the root and descends only into what the inventory walks; `+` marks an entry
/// whose own listing (if a directory) follows, `-` one that was not descended into.
fn find_command(root: &Path) -> String {
    let fields = "%y %m %U %G %s %T@ %P\\0";
    format!(
        "cd {} || exit 97; {}; LC_ALL=C exec find . \\( -path . -o -path './*/*' -o -name wal -o -name wbl -o -name chunks_head -o -name 'chunk_snapshot.*' -o -name '{}' \\) -printf '+{fields}' -o -printf '-{fields}' -prune",
        shell_quote(root),
        LOCK_PROBE,
        BLOCKS
    )
}

/// What the read command is expected to deliver: the files its patterns match (worked out
/// from the listing, in the order the shell expands them) and how many bytes of each.
#[derive(Default, Debug)]
struct Batch {
    /// Heads: every `index`, then every chunk segment; bytes of each.
    heads: Vec<(String, usize)>,
    /// Tails: every `index`.
    tails: Vec<(String, usize)>,
    /// Files read whole (through tar), or none when the archive would be too big.
    whole: Vec<String>,
}

/// Names of blocks (26 characters), for the shell.
const BLOCKS: &str = "??????????????????????????";
/// Chunk segment names (6 digits).
const SEGMENT: &str = "[0-9][0-9][0-9][0-9][0-9][0-9]";

/// The command that reads what [`Batch`] expects: heads, then tails (nothing between the
/// files), then a tar archive of the whole files, then the [`TRAILER`] of exit statuses.
fn read_command(root: &Path, b: &Batch) -> String {
    // Only patterns that match a listed file: one that matches nothing stays as written,
    // and the tool would fail on it. Heads are every index (as many as tails), then every
    // chunk segment.
    let index = format!("./{BLOCKS}/index");
    let chunks = format!("./{BLOCKS}/chunks/{SEGMENT}");
    let heads: Vec<&str> = [
        (!b.tails.is_empty(), index.as_str()),
        (b.heads.len() > b.tails.len(), chunks.as_str()),
    ]
    .into_iter()
    .filter_map(|(any, p)| any.then_some(p))
    .collect();
    let whole: Vec<String> = ["meta.json", "tombstones"]
        .into_iter()
        .filter(|n| b.whole.iter().any(|w| w.ends_with(&format!("/{n}"))))
        .map(|n| format!("./{BLOCKS}/{n}"))
        .collect();
    let mut c = format!(
        "cd {} || exit 97; export LC_ALL=C; h=0; t=0; w=0",
        shell_quote(root)
    );
    if !heads.is_empty() {
        c += &format!(
            "; head -q -c {ENDS} -- {} 2>/dev/null || h=$?",
            heads.join(" ")
        );
    }
    if !b.tails.is_empty() {
        c += &format!("; tail -q -c {ENDS} -- {index} 2>/dev/null || t=$?");
    }
    if !whole.is_empty() {
        c += &format!(
            "; tar -cf - -H gnu -b 1 --hard-dereference --no-recursion -- {} 2>/dev/null || w=$?",
            whole.join(" ")
        );
    }
    c + "; printf ' %03d %03d %03d\\n' \"$h\" \"$t\" \"$w\""
}

/// Runs a command on a channel of `sess` (with nothing on its stdin); returns its exit
/// status and output, which must fit in [`WINDOW`].
fn run(sess: &ssh2::Session, cmd: &str) -> io::Result<(i32, Vec<u8>)> {
    let mut ch = sess
        .channel_open("session", WINDOW, 32 << 10, None)
        .map_err(io::Error::from)?;
    ch.exec(cmd).map_err(io::Error::from)?;
    ch.send_eof().map_err(io::Error::from)?;
    let mut out = Vec::new();
    (&mut ch).take(WINDOW as u64).read_to_end(&mut out)?;
    if out.len() >= WINDOW as usize {
        return Err(io::Error::other("command output larger than expected"));
    }
    ch.wait_close().map_err(io::Error::from)?;
    Ok((ch.exit_status().map_err(io::Error::from)?, out))
}

/// Parses `find`'s records: `±type mode uid gid size mtime path`, NUL-terminated.
fn parse_find(out: &[u8]) -> Result<Snapshot, String> {
    let mut snap = Snapshot::default();
    let mut entries: Vec<(String, Ent)> = Vec::new();
    for rec in out.split(|&b| b == 0) {
        if rec.is_empty() {
            continue;
        }
        let bad = || format!("unexpected find output {:?}", String::from_utf8_lossy(rec));
        let descended = match rec[0] {
            b'+' => true,
            b'-' => false,
            _ => return Err(bad()),
        };
        let mut it = rec[1..].splitn(7, |&b| b == b' ');
        let mut field = || it.next().ok_or_else(bad);
        let kind = field()?;
        let num = |f: &[u8], radix: u32| {
            std::str::from_utf8(f)
                .ok()
                .and_then(|s| u64::from_str_radix(s, radix).ok())
        };
        let type_bits = match kind {
            b"f" => 0o100000,
            b"d" => 0o040000,
            b"l" => 0o120000,
            b"p" => 0o010000,
            b"s" => 0o140000,
            b"c" => 0o020000,
            b"b" => 0o060000,
            _ => 0,
        };
        let perm = num(field()?, 8).ok_or_else(bad)? as u32;
        let uid = num(field()?, 10).ok_or_else(bad)? as u32;
        let gid = num(field()?, 10).ok_or_else(bad)? as u32;
        let size = num(field()?, 10).ok_or_else(bad)?;
        let time = field()?;
        // Whole seconds, as SFTP gives them.
        let secs = time.split(|&b| b == b'.').next().unwrap_or(b"");
        let sec: i64 = std::str::from_utf8(secs)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        let path = field()?;
        let stat = Stat {
            size,
            mtime: MTime { sec, nsec: 0 },
            mode: type_bits | (perm & 0o7777),
            uid,
            gid,
        };
        if path.is_empty() {
            // The root itself ("."): its listing follows.
            snap.dirs.entry(String::new()).or_default();
            snap.root = Some(stat);
            continue;
        }
        let (parent, name) = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (&b""[..], path),
        };
        let Ok(parent) = std::str::from_utf8(parent) else {
            continue; // below a name that is not UTF-8: the scan never goes there
        };
        let name = String::from_utf8(name.to_vec())
            .map_err(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        if let Ok(n) = &name {
            let rel = if parent.is_empty() {
                n.clone()
            } else {
                format!("{parent}/{n}")
            };
            snap.stats.insert(rel.clone(), stat);
            if descended && type_bits == 0o040000 {
                snap.dirs.entry(rel).or_default();
            }
        }
        entries.push((parent.to_string(), Ent { name, stat }));
    }
    if !snap.dirs.contains_key("") {
        return Err("find did not list the root".into());
    }
    for (parent, ent) in entries {
        // A parent missing here was not descended into (or is not UTF-8): no listing.
        if let Some(list) = snap.dirs.get_mut(&parent) {
            list.push(ent);
        }
    }
    for list in snap.dirs.values_mut() {
        list.sort_by(|a, b| a.name.cmp(&b.name));
    }
    Ok(snap)
}

impl Snapshot {
    /// What [`read_command`]'s patterns match, from the listing: in every block,
    /// `index` (head and tail), chunk segments (head), `meta.json` and `tombstones`
    /// (whole). `None` when the listing cannot tell: a root entry of 26 characters that is
    /// not a directory listed here (a link, say), or no block at all; and when a name the
    /// patterns match is not a regular file (`head` would wait on a FIFO, `tail` read a
    /// link to `/dev/zero` forever), or the whole files are too many to fetch (then no
    /// archive would prove where each head and tail starts).
    fn wanted(&self) -> Option<Batch> {
        let root = self.dirs.get("")?;
        let mut blocks = Vec::new();
        for e in root {
            match &e.name {
                Ok(n) if n.len() == 26 && self.dirs.contains_key(n) => blocks.push(n.clone()),
                Ok(n) if n.len() != 26 => {}
                Err(n) if n.len() != 26 => {}
                _ => return None,
            }
        }
        if blocks.is_empty() {
            return None;
        }
        blocks.sort();
        let mut b = Batch::default();
        // A listed file: `Some(None)` when it is not listed, `None` (no batch at all) when
        // it is not a regular file, since the patterns match it all the same.
        let file = |rel: &str| match self.stats.get(rel) {
            Some(st) if st.mode & 0o170000 != 0o100000 => None,
            st => Some(st),
        };
        let ends = |st: &Stat| st.size.min(ENDS as u64) as usize;
        for x in &blocks {
            let index = format!("{x}/index");
            if let Some(st) = file(&index)? {
                b.heads.push((index.clone(), ends(st)));
                b.tails.push((index, ends(st)));
            }
        }
        for x in &blocks {
            let chunks = format!("{x}/chunks");
            let mut segs: Vec<&String> = self
                .dirs
                .get(&chunks)
                .into_iter()
                .flatten()
                .filter_map(|e| e.name.as_ref().ok())
                .filter(|n| n.len() == 6 && n.bytes().all(|c| c.is_ascii_digit()))
                .collect();
            segs.sort();
            for n in segs {
                let rel = format!("{chunks}/{n}");
                if let Some(st) = file(&rel)? {
                    b.heads.push((rel, ends(st)));
                }
            }
        }
        let mut total = 0u64;
        for name in ["meta.json", "tombstones"] {
            for x in &blocks {
                let rel = format!("{x}/{name}");
                if let Some(st) = file(&rel)? {
                    total = total.saturating_add(st.size.div_ceil(512) * 512 + 512);
                    b.whole.push(rel);
                }
            }
        }
        (total <= WHOLE_TOTAL && !b.whole.is_empty()).then_some(b)
    }

    /// Takes what [`read_command`] printed, if all of it is exactly as expected: every
    /// status 0, the expected bytes of each head and tail, and a well-formed archive of
    /// exactly the whole files right after them, up to the trailer. Heads and tails are
    /// not separated, so a file that shrank, grew (below [`ENDS`] bytes), vanished or
    /// appeared since it was listed shifts what follows: the archive's header checksums
    /// then fail, and nothing is taken.
    fn add_batch(&mut self, b: &Batch, out: &[u8]) -> Result<(), String> {
        let at = out
            .len()
            .checked_sub(TRAILER)
            .ok_or("output too short for the statuses")?;
        let (body, trailer) = out.split_at(at);
        if trailer != b" 000 000 000\n" {
            return Err(format!(
                "head, tail and tar exited with{}",
                String::from_utf8_lossy(trailer).trim_end()
            ));
        }
        let h: usize = b.heads.iter().map(|(_, n)| n).sum();
        let t: usize = b.tails.iter().map(|(_, n)| n).sum();
        if body.len() < h + t {
            return Err(format!(
                "{} bytes of heads and tails, want {}",
                body.len(),
                h + t
            ));
        }
        let (heads, rest) = body.split_at(h);
        let (tails, archive) = rest.split_at(t);
        let whole = if b.whole.is_empty() {
            if !archive.is_empty() {
                return Err(format!(
                    "{} bytes more than the heads and tails",
                    archive.len()
                ));
            }
            HashMap::new()
        } else {
            self.read_archive(archive, &b.whole)?
        };
        let mut at = 0;
        for (name, n) in &b.heads {
            self.ends.entry(name.clone()).or_default().0 = heads[at..at + n].to_vec();
            at += n;
        }
        at = 0;
        for (name, n) in &b.tails {
            self.ends.entry(name.clone()).or_default().1 = tails[at..at + n].to_vec();
            at += n;
        }
        self.whole.extend(whole);
        Ok(())
    }

    /// The files of a tar archive that must hold exactly `names`, and end where it does.
    fn read_archive(
        &self,
        archive: &[u8],
        names: &[String],
    ) -> Result<HashMap<String, (Vec<u8>, Stat)>, String> {
        let mut got = HashMap::new();
        let mut ar = tar::Archive::new(archive);
        let entries = ar.entries().map_err(|e| format!("tar: {e}"))?;
        for e in entries {
            let mut e = e.map_err(|e| format!("tar: {e}"))?;
            let path = e.path().map_err(|e| format!("tar: {e}"))?;
            let rel = path
                .to_str()
                .map(|p| p.strip_prefix("./").unwrap_or(p).to_string())
                .ok_or("tar: a name that is not UTF-8")?;
            let mtime = super::stream::header_mtime(e.header()).map_err(|e| format!("tar: {e}"))?;
            if !e.header().entry_type().is_file() || !names.contains(&rel) {
                return Err(format!("tar: unexpected entry {rel}"));
            }
            let listed = *self
                .stats
                .get(&rel)
                .ok_or("tar: an entry that was not listed")?;
            let mut data = Vec::new();
            e.read_to_end(&mut data).map_err(|e| format!("tar: {e}"))?;
            let stat = Stat {
                size: data.len() as u64,
                mtime: MTime {
                    sec: mtime,
                    nsec: 0,
                },
                ..listed
            };
            got.insert(rel, (data, stat));
        }
        // The end-of-archive blocks (the first of the two is read by the crate) close it.
        let left = ar.into_inner();
        if got.len() != names.len() || left.len() > 512 || left.iter().any(|&x| x != 0) {
            return Err(format!(
                "tar: {} of {} files, {} bytes after the archive",
                got.len(),
                names.len(),
                left.len()
            ));
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a snapshot command on this host, as sshd would through the login shell (with
    /// nothing on its stdin, as [`run`]).
    fn local(cmd: &str) -> (i32, Vec<u8>) {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .unwrap();
        (out.status.code().unwrap_or(-1), out.stdout)
    }

    const ULID: &str = "01HZX3J8Q4N2V5W6X7Y8Z9A0BC";

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let b = d.path().join(ULID);
        std::fs::create_dir_all(b.join("chunks")).unwrap();
        std::fs::write(b.join("meta.json"), b"{\"ulid\":\"x\"}").unwrap();
        std::fs::write(b.join("tombstones"), [0u8; 9]).unwrap();
        let index: Vec<u8> = (0..200u8).collect();
        std::fs::write(b.join("index"), &index).unwrap();
        std::fs::write(b.join("chunks/000001"), vec![7u8; 100]).unwrap();
        std::fs::write(b.join("chunks/000002"), vec![8u8; 10]).unwrap(); // too short for ends
        std::fs::create_dir_all(d.path().join("wal/checkpoint.000003")).unwrap();
        std::fs::write(d.path().join("wal/00000004"), b"w").unwrap();
        std::fs::create_dir_all(d.path().join("snapshots/x/y")).unwrap();
        std::fs::create_dir(d.path().join("empty_unknown")).unwrap();
        std::fs::write(d.path().join("queries.active"), b"").unwrap();
        d
    }

    /// find's records, after the lock probe's line (checked).
    fn listing(root: &Path) -> Vec<u8> {
        let (status, out) = local(&find_command(root));
        assert_eq!(status, 0);
        let nl = out.iter().position(|&b| b == b'\n').unwrap();
        assert_eq!(&out[..nl], b"absent");
        out[nl + 1..].to_vec()
    }

    fn snapshot_of(root: &Path) -> Snapshot {
        let out = listing(root);
        let mut snap = parse_find(&out).unwrap();
        let b = snap.wanted().unwrap();
        let (s, out) = local(&read_command(root, &b));
        assert_eq!(s, 0);
        snap.add_batch(&b, &out).unwrap();
        snap
    }

    #[test]
    fn lists_like_sftp_and_reads_what_the_checks_need() {
        let d = tree();
        let snap = snapshot_of(d.path());
        let names = |rel: &str| -> Vec<String> {
            snap.list(rel)
                .unwrap()
                .into_iter()
                .map(|e| e.name.unwrap())
                .collect()
        };
        assert_eq!(
            names(""),
            [
                "01HZX3J8Q4N2V5W6X7Y8Z9A0BC",
                "empty_unknown",
                "queries.active",
                "snapshots",
                "wal"
            ]
        );
        assert_eq!(names(ULID), ["chunks", "index", "meta.json", "tombstones"]);
        assert_eq!(names(&format!("{ULID}/chunks")), ["000001", "000002"]);
        assert_eq!(names("wal"), ["00000004", "checkpoint.000003"]);
        assert!(names("wal/checkpoint.000003").is_empty());
        // Not descended into: no listing, so these are read over SFTP if ever asked for.
        assert!(snap.list("snapshots").is_none());
        assert!(snap.list("empty_unknown").is_none());
        // Attributes agree with lstat (whole seconds).
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::symlink_metadata(d.path().join(ULID).join("index")).unwrap();
        let st = snap.stat(&format!("{ULID}/index")).unwrap();
        assert_eq!(
            (st.size, st.mode, st.uid, st.gid, st.mtime.sec),
            (md.len(), md.mode(), md.uid(), md.gid(), md.mtime())
        );
        assert_eq!(
            snap.stat("wal").unwrap().mode,
            std::fs::symlink_metadata(d.path().join("wal"))
                .unwrap()
                .mode()
        );
        // Small files whole; both ends of the index; the head of a long chunk segment only.
        assert_eq!(
            snap.whole(&format!("{ULID}/meta.json")).unwrap().0,
            b"{\"ulid\":\"x\"}"
        );
        assert_eq!(
            snap.whole(&format!("{ULID}/tombstones")).unwrap().0,
            [0u8; 9]
        );
        let (h, t, st) = snap.ends(&format!("{ULID}/index")).unwrap();
        assert_eq!(h, (0..64u8).collect::<Vec<_>>());
        assert_eq!(t, (136..200u8).collect::<Vec<_>>());
        assert_eq!(st.size, 200);
        let (h, t, _) = snap.ends(&format!("{ULID}/chunks/000001")).unwrap();
        assert_eq!((h, t), (&[7u8; 64][..], &[][..]));
        // A file shorter than ENDS: all of it, from the head.
        let (h, _, st) = snap.ends(&format!("{ULID}/chunks/000002")).unwrap();
        assert_eq!((h, st.size), (&[8u8; 10][..], 10));
    }

    #[test]
    fn a_file_that_changed_or_vanished_is_not_taken() {
        let d = tree();
        let out = listing(d.path());
        let mut snap = parse_find(&out).unwrap();
        let b = &snap.wanted().unwrap();
        let read = || local(&read_command(d.path(), b)).1;
        // As listed: all of it taken.
        let mut fresh = parse_find(&out).unwrap();
        fresh.add_batch(b, &read()).unwrap();
        assert!(fresh.whole(&format!("{ULID}/meta.json")).is_some());
        // The index shrinks below ENDS bytes after it was listed (head and tail exit 0):
        // the archive after them is out of place, and nothing is taken.
        let index = d.path().join(ULID).join("index");
        let kept = std::fs::read(&index).unwrap();
        std::fs::write(&index, b"short").unwrap();
        assert!(snap.add_batch(b, &read()).unwrap_err().contains("tar"));
        std::fs::write(&index, &kept).unwrap();
        // meta.json grows: tar reads what is there now, with its own size.
        std::fs::write(d.path().join(ULID).join("meta.json"), b"{\"ulid\":\"xyz\"}").unwrap();
        // A vanished file: tar says so with its exit status, and nothing is taken.
        std::fs::remove_file(d.path().join(ULID).join("tombstones")).unwrap();
        assert!(
            snap.add_batch(b, &read())
                .unwrap_err()
                .contains("exited with")
        );
        // A chunk segment vanishes: the pattern no longer names it, and what follows shifts.
        std::fs::write(d.path().join(ULID).join("tombstones"), [0u8; 9]).unwrap();
        std::fs::remove_file(d.path().join(ULID).join("chunks/000001")).unwrap();
        assert!(snap.add_batch(b, &read()).unwrap_err().contains("tar"));
        // An index that cannot be read: head's status.
        let index = d.path().join(ULID).join("index");
        std::fs::write(d.path().join(ULID).join("chunks/000001"), vec![7u8; 100]).unwrap();
        std::fs::remove_file(&index).unwrap();
        std::fs::create_dir(&index).unwrap();
        assert!(
            snap.add_batch(b, &read())
                .unwrap_err()
                .contains("exited with 001")
        );
        std::fs::remove_dir(&index).unwrap();
        std::fs::write(&index, &kept).unwrap();
        assert!(snap.ends(&format!("{ULID}/index")).is_none());
        assert!(snap.whole(&format!("{ULID}/meta.json")).is_none());
        // Truncated output, or more than expected.
        let good = read();
        let mut cut = good.clone();
        cut.drain(100..612);
        assert!(snap.add_batch(b, &cut).is_err());
        let mut more = good.clone();
        more.splice(64..64, [0u8; 64]);
        assert!(snap.add_batch(b, &more).is_err());
        snap.add_batch(b, &good).unwrap();
        assert_eq!(
            snap.whole(&format!("{ULID}/meta.json")).unwrap().0,
            b"{\"ulid\":\"xyz\"}"
        );
        assert_eq!(snap.whole(&format!("{ULID}/meta.json")).unwrap().1.size, 14);
    }

    #[test]
    fn a_block_appearing_after_the_listing_or_a_link_that_looks_like_one_is_not_guessed_at() {
        let d = tree();
        let out = listing(d.path());
        let mut snap = parse_find(&out).unwrap();
        let b = snap.wanted().unwrap();
        // A second block (as a compaction writes it) after the listing: the patterns match
        // its files too, the output shifts, and nothing is taken.
        let other = d.path().join("01HZX3J8Q4N2V5W6X7Y8Z9A0BD");
        std::fs::create_dir_all(other.join("chunks")).unwrap();
        std::fs::write(other.join("index"), vec![1u8; 100]).unwrap();
        std::fs::write(other.join("meta.json"), b"{}").unwrap();
        let (_, got) = local(&read_command(d.path(), &b));
        assert!(snap.add_batch(&b, &got).is_err());
        assert!(snap.ends(&format!("{ULID}/index")).is_none());
        // A link with a block's name: what it holds is not listed, so no reads at all.
        std::fs::remove_dir_all(&other).unwrap();
        std::os::unix::fs::symlink(d.path().join(ULID), &other).unwrap();
        let out = listing(d.path());
        assert!(parse_find(&out).unwrap().wanted().is_none());
    }

    #[test]
    fn a_fifo_or_a_link_where_the_patterns_look_is_not_read_at_all() {
        // head would wait on a FIFO for ever, tail would read a link to /dev/zero for ever:
        // no read command, everything is left to SFTP (which only lists them).
        let d = tree();
        let seg = d.path().join(ULID).join("chunks/000002");
        std::fs::remove_file(&seg).unwrap();
        nix::unistd::mkfifo(&seg, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(parse_find(&listing(d.path())).unwrap().wanted().is_none());
        std::fs::remove_file(&seg).unwrap();
        let index = d.path().join(ULID).join("index");
        std::fs::remove_file(&index).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &index).unwrap();
        assert!(parse_find(&listing(d.path())).unwrap().wanted().is_none());
        // As a regular file again: read.
        std::fs::remove_file(&index).unwrap();
        std::fs::write(&index, [1u8; 100]).unwrap();
        assert!(parse_find(&listing(d.path())).unwrap().wanted().is_some());
    }

    #[test]
    fn a_pattern_that_would_match_nothing_is_left_out() {
        // Blocks without chunk segments or tombstones: their patterns would stay as
        // written, head and tar would fail on them, and nothing would be taken.
        let d = tree();
        for f in ["chunks/000001", "chunks/000002", "tombstones"] {
            std::fs::remove_file(d.path().join(ULID).join(f)).unwrap();
        }
        let snap = snapshot_of(d.path());
        assert_eq!(snap.ends(&format!("{ULID}/index")).unwrap().1.len(), ENDS);
        assert!(snap.whole(&format!("{ULID}/meta.json")).is_some());
    }

    #[test]
    fn the_lock_probe_answers_before_the_listing() {
        let d = tree();
        let first_line = || {
            let (_, out) = local(&find_command(d.path()));
            let nl = out.iter().position(|&b| b == b'\n').unwrap();
            String::from_utf8(out[..nl].to_vec()).unwrap()
        };
        assert_eq!(first_line(), "absent");
        let lock = d.path().join("lock");
        std::fs::write(&lock, b"").unwrap();
        let held = nix::fcntl::Flock::lock(
            std::fs::File::open(&lock).unwrap(),
            nix::fcntl::FlockArg::LockExclusiveNonblock,
        )
        .unwrap();
        assert_eq!(first_line(), "lock 99");
        drop(held);
        assert_eq!(first_line(), "lock 0");
    }

    #[test]
    fn a_root_that_is_not_there_or_garbage_is_no_snapshot() {
        let d = tempfile::tempdir().unwrap();
        let (s, _) = local(&find_command(&d.path().join("nope")));
        assert_eq!(s, 97);
        assert!(parse_find(b"+f 644 0 0 1 1.5 x\0").is_err()); // no root record
        assert!(parse_find(b"*d 755 0 0 1 1.5 \0").is_err());
        assert!(parse_find(b"+d 755 0 0 1\0").is_err());
        assert!(parse_find(b"+d 7z5 0 0 1 1.5 \0").is_err());
        let s = parse_find(b"+d 755 0 0 1 1.5 \0+f 644 1 2 3 4.9 a b\0").unwrap();
        assert_eq!(s.list("").unwrap()[0].name.as_deref(), Ok("a b"));
        assert_eq!(s.stat("a b").unwrap().mtime.sec, 4);
    }

    #[test]
    fn names_that_are_not_utf8_are_listed_lossily_and_not_entered() {
        use std::os::unix::ffi::OsStrExt;
        let d = tempfile::tempdir().unwrap();
        let odd = std::ffi::OsStr::from_bytes(b"wal\xff");
        std::fs::create_dir(d.path().join("wal")).unwrap();
        std::fs::write(d.path().join("wal").join(odd), b"x").unwrap();
        let out = listing(d.path());
        let snap = parse_find(&out).unwrap();
        let wal = snap.list("wal").unwrap();
        assert_eq!(wal.len(), 1);
        assert!(wal[0].name.is_err());
    }
}
