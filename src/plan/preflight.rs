//! Write preflight: what `apply` would hit at its first writes to the target, found while
//! planning, so that a plan without blockers does not fail there. A read-only mount, a
//! target this process may not write, an owner it may not give (no CAP_CHOWN), too few free
//! inodes for the files and directories it creates, too little free space for the data and
//! its headroom. Each finding names the path and the fix.
//!
//! Invariants: only what apply would really write is checked (a plan that writes nothing is
//! never blocked by these; a read-only volume is then a warning); the findings are *write*
//! blockers: they stop apply, and verify, which only reads, ignores them.

use std::collections::BTreeSet;
use std::path::Path;

use nix::fcntl::AtFlags;
use nix::unistd::AccessFlags;
use serde::Serialize;

use crate::fsutil::FsInfo;
use crate::perms::{Owner, Process};
use crate::relpath::RelPath;
use crate::tsdb;
use crate::units;

/// The headroom margin, in percent of the bytes to copy. Beyond whole blocks, filesystems
/// charge free space for extent or indirect blocks of large files, growing directories,
/// the xattr block promigrate's copied-mark may need per block directory, and copy-on-write
/// metadata (btrfs, ZFS); and a volume filled to its last block leaves Prometheus no room
/// to start. Temp files and staging need nothing on top: a staged block is renamed into
/// place, and a file replaced through a temp file is counted whole although the old one it
/// replaces is already on the volume.
pub const MARGIN_PERCENT: u64 = 1;
/// The least margin, for small copies (where 1% is less than a few metadata blocks).
pub const MIN_MARGIN: u64 = 256 * 1024;

/// What `apply` takes of the target filesystem.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Needs {
    /// Free bytes it needs: every file rounded up to the filesystem's block size, a block per
    /// new directory, and the margin ([`MARGIN_PERCENT`], at least [`MIN_MARGIN`]).
    pub bytes: u64,
    /// Free inodes it needs: every file it writes, every directory it creates, and one per
    /// new block for its copied-mark xattr (tmpfs charges extended attributes against its
    /// inode budget, `nr_inodes`; a mark takes well under one inode's share of it).
    pub inodes: u64,
    /// Of `inodes`, the directories.
    pub new_dirs: u64,
}

/// What apply writes into one target, as the plan knows it (paths relative to the TSDB root).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Writes {
    /// Files written, with their sizes (each gets a new inode: temp file, then rename).
    pub files: Vec<(RelPath, u64)>,
    /// Non-block directories the target needs, with or without files.
    pub dirs: Vec<RelPath>,
    /// Extraneous entries moved to a fresh quarantine directory.
    pub quarantined: Vec<RelPath>,
    /// Whether something is staged first (a new block, WAL checkpoint or chunk snapshot).
    pub staged: bool,
    /// New block directories, each marked with [`tsdb::COPIED_XATTR`].
    pub marked: u64,
}

/// Counts what `w` takes on the target `root` (below the volume `mount`): the directories
/// that do not exist yet are created, on the way down from the mount included.
pub fn needs(root: &Path, mount: &Path, w: &Writes, block_size: u64) -> Needs {
    let is_dir = |p: &Path| p.symlink_metadata().is_ok_and(|m| m.is_dir());
    // Every directory the written entries lie in (each looked up once), then those missing.
    let mut wanted: BTreeSet<&Path> = BTreeSet::new();
    let parents = w
        .files
        .iter()
        .filter_map(|(rel, _)| Path::new(rel.as_str()).parent());
    let own = w.dirs.iter().map(Path::new);
    let staging = w.staged.then_some(Path::new(tsdb::STAGING_DIR));
    let quarantine = (!w.quarantined.is_empty()).then_some(Path::new(tsdb::QUARANTINE_DIR));
    for d in parents.chain(own).chain(staging).chain(quarantine) {
        wanted.extend(d.ancestors().filter(|a| !a.as_os_str().is_empty()));
    }
    let new_dirs = wanted.iter().filter(|d| !is_dir(&root.join(d))).count();
    // A fresh `<timestamp>/` per run in the quarantine, and in it the parents of what is
    // moved there.
    let mut quarantine_run = 0;
    if !w.quarantined.is_empty() {
        let parents: BTreeSet<&Path> = w
            .quarantined
            .iter()
            .filter_map(|rel| Path::new(rel.as_str()).parent())
            .flat_map(|p| p.ancestors())
            .filter(|a| !a.as_os_str().is_empty())
            .collect();
        quarantine_run = 1 + parents.len() as u64;
    }
    // The TSDB root and the directories between it and the mount.
    let below = root.strip_prefix(mount).unwrap_or(Path::new(""));
    let above = below
        .ancestors()
        .filter(|a| !a.as_os_str().is_empty() && !is_dir(&mount.join(a)))
        .count() as u64;

    let dirs = new_dirs as u64 + above + quarantine_run;
    let inodes = w.files.len() as u64 + dirs + w.marked;
    if inodes == 0 {
        return Needs::default();
    }
    let bs = block_size.max(1);
    let data: u64 = w.files.iter().map(|(_, size)| size.div_ceil(bs) * bs).sum();
    let copy: u64 = w.files.iter().map(|(_, size)| size).sum();
    let margin = (copy / 100 * MARGIN_PERCENT).max(MIN_MARGIN);
    Needs {
        bytes: data + dirs * bs + margin,
        inodes,
        new_dirs: dirs,
    }
}

/// The target as the preflight sees it.
pub struct Target<'a> {
    /// The TSDB root (`target.path/subPath`).
    pub root: &'a Path,
    /// The volume (`target.path`).
    pub mount: &'a Path,
    /// The owner everything written gets.
    pub owner: Owner,
    /// The filesystem holding `probe`.
    pub fs: &'a FsInfo,
    /// The TSDB root if it exists, else its nearest existing ancestor: where apply writes first.
    pub probe: &'a Path,
    /// Bytes to copy.
    pub copy_bytes: u64,
    /// What apply takes of the filesystem.
    pub needs: Needs,
    /// Whether apply changes anything at all on the target.
    pub writes: bool,
    /// Whether this mount's read-only flag and access stand for apply's (not when a
    /// receiver pod of plan mounts the claim read-only on purpose).
    pub judge_access: bool,
    /// Existing entries whose owner or mode apply fixes: (relative path, uid, gid).
    pub fixes: Vec<(&'a str, u32, u32)>,
}

/// The write blockers and warnings for `t`, for a process `who`.
pub fn check(t: &Target, who: &Process) -> (Vec<String>, Vec<String>) {
    let mut blockers = Vec::new();
    let mut warnings = Vec::new();
    let me = format!("this process (uid {}, gid {})", who.uid, who.gid);
    if t.fs.read_only && t.judge_access {
        if t.writes {
            blockers.push(format!(
                "the target {} is on a read-only mount: apply could not write anything there; remount it read-write (mount -o remount,rw), or point target.path at a writable volume",
                t.probe.display()
            ));
        } else {
            warnings.push(format!(
                "the target {} is on a read-only mount: there is nothing to write, but Prometheus cannot run on it (it writes its WAL, lock and queries.active); remount it read-write before cutover",
                t.probe.display()
            ));
        }
    }
    if !t.writes {
        return (blockers, warnings);
    }
    // Every write below the mount resolves its path with openat2 (Linux 5.6+), never
    // following a link; a kernel or seccomp profile without it would fail the first write.
    if let Err(e) = crate::fsutil::beneath::stat(t.mount, t.mount) {
        blockers.push(format!(
            "cannot open the target volume {} without following links ({e}): apply resolves every path below it with openat2(2), which needs Linux 5.6 or newer and a seccomp profile that allows it; run promigrate on such a host",
            t.mount.display()
        ));
    }
    if !t.fs.read_only
        && t.judge_access
        && let Some(why) = not_writable(t, who)
    {
        blockers.push(why);
    }
    if (t.needs.inodes > 0 || !t.fixes.is_empty()) && !who.can_give(t.owner) {
        blockers.push(format!(
            "apply gives everything it writes under {} the owner {}:{} (runAsUser:fsGroup), and {me} cannot: it {} {}; run as root (sudo), or use a runAsUser/fsGroup equal to your uid/gid",
            t.root.display(),
            t.owner.uid,
            t.owner.gid,
            if who.uid == 0 { "runs as root without" } else { "is not root and lacks" },
            who.missing_caps(t.owner)
        ));
    } else {
        // It may give the owner, but not take another user's entries.
        let foreign: Vec<String> = t
            .fixes
            .iter()
            .filter(|(_, uid, _)| !who.can_fix(*uid, t.owner))
            .map(|(rel, uid, gid)| format!("{} ({uid}:{gid})", t.root.join(rel).display()))
            .collect();
        if let Some(first) = foreign.first() {
            blockers.push(format!(
                "{} {} to another user and {} owner {}:{}, which {me} cannot give without CAP_CHOWN: {first}{}; run as root (sudo), or chown {} to {}:{} first",
                crate::units::count(foreign.len() as u64, "existing target entry"),
                crate::units::verb_for(foreign.len() as u64, "belongs", "belong"),
                crate::units::verb_for(foreign.len() as u64, "needs", "need"),
                t.owner.uid,
                t.owner.gid,
                if foreign.len() > 1 { ", …" } else { "" },
                crate::units::verb_for(foreign.len() as u64, "it", "them"),
                t.owner.uid,
                t.owner.gid
            ));
        }
    }
    if let Some(free) = t.fs.free_inodes.filter(|f| t.needs.inodes > *f) {
        blockers.push(format!(
            "not enough free inodes on the target: apply needs {} (its files, directories, and the copied-marks of new blocks), {free} are free on {}; free some, give the volume more inodes (tmpfs: nr_inodes=; ext4 fixes the number at mkfs: -N) or grow it, or select fewer blocks (transfer.timeRange)",
            t.needs.inodes,
            t.probe.display()
        ));
    }
    if t.needs.bytes > t.fs.free_bytes {
        blockers.push(format!(
            "not enough space on the target: {} needed ({} to copy, plus {} for rounding files to {}-byte blocks, {} new directories and a {MARGIN_PERCENT}% margin of at least {}), {} free on {}; grow the volume or select fewer blocks (transfer.timeRange)",
            units::bytes(t.needs.bytes),
            units::bytes(t.copy_bytes),
            units::bytes(t.needs.bytes.saturating_sub(t.copy_bytes)),
            t.fs.block_size,
            t.needs.new_dirs,
            units::bytes(MIN_MARGIN),
            units::bytes(t.fs.free_bytes),
            t.probe.display()
        ));
    }
    (blockers, warnings)
}

/// Whether this process may write where apply writes first: into the TSDB root (read,
/// write, search), or, if it does not exist yet, into its nearest existing ancestor, where
/// apply creates the rest. Checked with the effective ids (AT_EACCESS). A root this process
/// owns passes anyway: apply gives it the owner's rwx before writing into it.
fn not_writable(t: &Target, who: &Process) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let exists = t.probe == t.root;
    let mut mode = AccessFlags::W_OK | AccessFlags::X_OK;
    if exists {
        mode |= AccessFlags::R_OK;
    }
    let err =
        nix::unistd::faccessat(nix::fcntl::AT_FDCWD, t.probe, mode, AtFlags::AT_EACCESS).err()?;
    let meta = t.probe.symlink_metadata().ok();
    if exists && meta.as_ref().is_some_and(|m| m.uid() == who.uid) && who.uid == t.owner.uid {
        return None;
    }
    let holder = meta.map_or(String::new(), |m| {
        format!(
            " (owner {}:{}, mode {:04o})",
            m.uid(),
            m.gid(),
            m.mode() & 0o7777
        )
    });
    Some(format!(
        "the target {}{holder} is not writable by this process (uid {}, gid {}: {err}): apply could not {}; run promigrate as a user who may write there (root with sudo, or its owner), or make it writable for uid {} (chown or chmod)",
        t.probe.display(),
        who.uid,
        who.gid,
        if exists {
            "write into it".to_string()
        } else {
            format!("create {} in it", t.root.display())
        },
        who.uid
    ))
}

/// Mount points inside the target volume, on the way down to the TSDB directory or below it
/// (another filesystem, or a bind mount), one blocker each: apply never writes across them
/// (openat2 with `RESOLVE_NO_XDEV`), and the Prometheus pod, which mounts the volume, would
/// not see what lies behind them. For plan, apply and verify alike.
pub fn mount_crossings(mount: &Path, root: &Path) -> Vec<String> {
    use crate::fsutil::beneath;
    use std::os::fd::AsFd;
    // The volume opened once; each path resolved below it as apply resolves its writes.
    let Ok(base) = beneath::open_base(mount) else {
        return Vec::new(); // no mount point to name; the other target checks say why
    };
    let crosses = |p: &Path| {
        let below = p.strip_prefix(mount).unwrap_or(p);
        beneath::stat_at(base.as_fd(), below)
            .is_err_and(|e| e.kind() == std::io::ErrorKind::CrossesDevices)
    };
    let blocker = |p: &Path| {
        format!(
            "{} is a mount point inside the target volume {} (another filesystem, or a bind mount): apply never writes across it, and the Prometheus pod, which mounts the volume, would not see what lies behind it; unmount it, or set target.path to it if that is the volume you mean",
            p.display(),
            mount.display()
        )
    };
    // The way down, from the mount's child to the nearest existing part of the TSDB path.
    let probe = crate::fsutil::nearest_existing(root);
    let mut way: Vec<&Path> = probe
        .ancestors()
        .take_while(|p| *p != mount && p.starts_with(mount))
        .collect();
    way.reverse();
    if let Some(p) = way.into_iter().find(|p| crosses(p)) {
        return vec![blocker(p)];
    }
    if probe != root {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut walk = walkdir::WalkDir::new(root).min_depth(1).into_iter();
    while let Some(e) = walk.next() {
        let Ok(e) = e else { continue };
        if e.file_type().is_dir() && crosses(e.path()) {
            out.push(blocker(e.path()));
            walk.skip_current_dir();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_count_files_new_directories_rounding_and_margin() {
        let d = tempfile::tempdir().unwrap();
        let mount = d.path();
        let root = mount.join("db");
        let dirs: Vec<RelPath> = vec!["wal".into()];
        let w = Writes {
            files: vec![
                ("01B/chunks/000001".into(), 5000),
                ("01B/index".into(), 1),
                ("wal/00000000".into(), 0),
            ],
            dirs: dirs.clone(),
            quarantined: vec![],
            staged: true,
            marked: 1,
        };
        // Nothing exists: db, 01B, 01B/chunks, wal, .promigrate-staging; and 01B's mark.
        let n = needs(&root, mount, &w, 4096);
        assert_eq!((n.inodes, n.new_dirs), (3 + 5 + 1, 5));
        assert_eq!(n.bytes, 8192 + 4096 + 5 * 4096 + MIN_MARGIN);
        // With the root and wal/ there, only the block's directories and the staging are new.
        std::fs::create_dir_all(root.join("wal")).unwrap();
        let n = needs(&root, mount, &w, 4096);
        assert_eq!((n.inodes, n.new_dirs), (3 + 3 + 1, 3));
        // Nothing to write takes nothing, not even the margin.
        let none = Writes {
            files: vec![],
            dirs: dirs.clone(),
            quarantined: vec![],
            staged: false,
            marked: 0,
        };
        assert_eq!(needs(&root, mount, &none, 4096), Needs::default());
        // A quarantine: its directory, the run's directory, and the parents inside it.
        let q = Writes {
            quarantined: vec!["01A".into(), "wal/00000009".into()],
            ..none
        };
        assert_eq!(needs(&root, mount, &q, 4096).new_dirs, 3);
    }
}
