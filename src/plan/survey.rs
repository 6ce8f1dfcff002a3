//! What plan and verify read of a target volume, asked where the volume is: here for a
//! mounted volume ([`LocalSurvey`]), in the receiver pod for one only the cluster can reach
//! (`crate::remote`). Reading never goes over the wire file by file: the scan, the hashes
//! and the format checks run beside the volume, and only their results travel.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use super::inventory::{self, Inventory, ScanError};
use super::preflight::{self, Needs, Writes};
use crate::fsutil::{self, FsInfo};
use crate::lock::Guard;
use crate::perms::Owner;
use crate::progress::Progress;
use crate::relpath::RelPath;
use crate::source::Source;
use crate::tsdb::{self, check};

/// The filesystem a target's writes go to, and what they take of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Space {
    /// The filesystem holding the TSDB directory (or the directory it will be created in).
    pub fs: FsInfo,
    /// What apply takes of it.
    pub needs: Needs,
}

/// What the write preflight needs to know of the plan (see [`preflight::check`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WritePlan {
    /// Bytes to copy.
    pub copy_bytes: u64,
    /// What apply takes of the filesystem.
    pub needs: Needs,
    /// Whether apply changes anything at all on the target.
    pub writes: bool,
    /// Existing entries whose owner or mode apply fixes: (relative path, uid, gid).
    pub fixes: Vec<(RelPath, u32, u32)>,
}

/// Blockers about the way down from the volume to the TSDB directory.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Layout {
    /// The TSDB directory resolves outside the volume.
    pub outside: Vec<String>,
    /// A symbolic link on the way down from the volume.
    pub path_links: Vec<String>,
    /// Mount points inside the volume.
    pub crossings: Vec<String>,
}

/// Why a target's lock could not be shared: an apply holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Busy(pub String);

/// Everything plan and verify read of one target volume.
pub trait Survey: Send + Sync {
    /// The TSDB directory (in messages and reports).
    fn shown(&self) -> &Path;
    /// The TSDB directory as this host resolves it, when the volume is mounted here (to
    /// tell whether source and target overlap); `None` for a volume elsewhere.
    fn here(&self) -> Option<PathBuf>;
    /// The volume's filesystem: the kernel's boot id and its device (targets on one
    /// filesystem share its space).
    fn device(&self) -> Option<(String, u64)>;
    /// Where the TSDB directory is, to tell whether the source (on the same host) overlaps
    /// it when `here` cannot.
    fn whereabouts(&self) -> Option<fsutil::Whereabouts>;
    /// Scans the TSDB directory.
    fn scan(&self, depth: inventory::Depth) -> Result<Inventory, ScanError>;
    /// Blockers about the way down from the volume to the TSDB directory: a symbolic link
    /// on it, a directory that resolves outside the volume, mount points inside the volume.
    fn layout(&self) -> Layout;
    /// Who holds the apply lock, if an apply runs now.
    fn writer(&self) -> Option<String>;
    /// A shared (reading) lock on the TSDB directory, held while the guard lives (`None`:
    /// held elsewhere for this connection, or the directory does not exist).
    fn read_lock(&self) -> Result<Option<Guard>, Busy>;
    /// The filesystem, and what `writes` take of it.
    fn space(&self, writes: &Writes) -> anyhow::Result<Space>;
    /// The write preflight: blockers and warnings for what apply would write.
    fn write_check(&self, plan: &WritePlan) -> anyhow::Result<(Vec<String>, Vec<String>)>;
    /// Reads a whole (small) file.
    fn read(&self, rel: &str) -> std::io::Result<Vec<u8>>;
    /// Whether block directory `dir` carries the copied-mark of migration `name`.
    fn is_copied(&self, dir: &str, name: &str) -> bool;
    /// The content hash (xxh3-128) of each of `rels`, `parallelism` at a time; once
    /// `cancel` is set, the files not hashed yet fail.
    fn hashes(
        &self,
        rels: &[RelPath],
        parallelism: usize,
        progress: &dyn Progress,
        cancel: &AtomicBool,
    ) -> Vec<Result<u128, String>>;
    /// The format checks of `inv` (this target's scan) at `depth`.
    fn check(
        &self,
        inv: &Inventory,
        depth: check::Depth,
        parallelism: usize,
        progress: &dyn Progress,
        cancel: &AtomicBool,
    ) -> Vec<check::Problem>;
}

/// A target volume mounted here.
#[derive(Debug, Clone)]
pub struct LocalSurvey {
    /// The volume's mount (`target.path`).
    pub mount: PathBuf,
    /// The TSDB directory (`target.path/subPath`).
    pub root: PathBuf,
    /// Who must own what is written.
    pub owner: Owner,
    /// Mounted read-only here on purpose (the receiver pod of a command that only reads):
    /// whether apply may write is not judged from this mount, whose access is not the one
    /// apply's read-write mount gets (the kubelet applies fsGroup to that one).
    pub mounted_read_only: bool,
}

impl LocalSurvey {
    /// Where apply writes first: the TSDB directory, or the directory it will be created in.
    fn probe(&self) -> PathBuf {
        fsutil::nearest_existing(&self.root)
    }

    fn fs(&self) -> anyhow::Result<(PathBuf, FsInfo)> {
        let probe = self.probe();
        let fs = fsutil::fs_info(&probe)
            .map_err(|e| anyhow::anyhow!("cannot statfs target {}: {e}", probe.display()))?;
        Ok((probe, fs))
    }
}

impl Survey for LocalSurvey {
    fn shown(&self) -> &Path {
        &self.root
    }

    fn here(&self) -> Option<PathBuf> {
        Some(fsutil::canonical_lenient(&self.root))
    }

    fn device(&self) -> Option<(String, u64)> {
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(&self.mount).ok()?.dev();
        Some((fsutil::boot_id().unwrap_or_default(), dev))
    }

    fn whereabouts(&self) -> Option<fsutil::Whereabouts> {
        fsutil::Whereabouts::of(&self.root)
    }

    fn scan(&self, depth: inventory::Depth) -> Result<Inventory, ScanError> {
        inventory::scan_with(&self.root, depth)
    }

    fn layout(&self) -> Layout {
        let mut layout = Layout::default();
        // Never write through a link: a subPath that resolves outside the volume could lead
        // the copy (and the chown) out of the target.
        let ct = fsutil::canonical_lenient(&self.root);
        let mount = fsutil::canonical_lenient(&self.mount);
        if !fsutil::is_within(&ct, &mount) {
            layout.outside.push(format!(
                "target {} resolves to {}, outside the volume mounted at {}: a symlink in subPath leads out of the volume; remove it",
                self.root.display(),
                ct.display(),
                mount.display()
            ));
        }
        // path/subPath, and every directory on the way down from the mount, must be a real
        // one.
        let mut cur = self.mount.clone();
        for c in self
            .root
            .strip_prefix(&self.mount)
            .unwrap_or(Path::new(""))
            .components()
        {
            cur.push(c);
            if let Ok(md) = std::fs::symlink_metadata(&cur)
                && md.file_type().is_symlink()
            {
                layout.path_links.push(format!(
                    "{} in the target's path {} is a symbolic link (to {}): promigrate never writes, chowns or chmods through links; set target.subPath to the real directory, or replace the link with it",
                    cur.display(),
                    self.root.display(),
                    std::fs::read_link(&cur).map_or("?".into(), |l| l.display().to_string())
                ));
                break;
            }
        }
        layout.crossings = preflight::mount_crossings(&self.mount, &self.root);
        layout
    }

    fn writer(&self) -> Option<String> {
        crate::lock::writer(&self.root).map(|h| h.to_string())
    }

    fn read_lock(&self) -> Result<Option<Guard>, Busy> {
        match crate::lock::shared(&self.root) {
            Err(crate::lock::LockError::Busy(h)) => Err(Busy(h.to_string())),
            held => Ok(held.ok()),
        }
    }

    fn space(&self, writes: &Writes) -> anyhow::Result<Space> {
        let (_, fs) = self.fs()?;
        let needs = preflight::needs(&self.root, &self.mount, writes, fs.block_size);
        Ok(Space { fs, needs })
    }

    fn write_check(&self, plan: &WritePlan) -> anyhow::Result<(Vec<String>, Vec<String>)> {
        let (probe, mut fs) = self.fs()?;
        // What an interrupted run staged is reused or removed by apply before it needs
        // more: its space and inodes count as free (a rerun after --deadline must not be
        // blocked by its own earlier progress).
        let staged = staged_usage(&self.root);
        fs.free_bytes = fs.free_bytes.saturating_add(staged.0);
        fs.free_inodes = fs.free_inodes.map(|i| i.saturating_add(staged.1));
        Ok(preflight::check(
            &preflight::Target {
                root: &self.root,
                mount: &self.mount,
                owner: self.owner,
                fs: &fs,
                probe: &probe,
                copy_bytes: plan.copy_bytes,
                needs: plan.needs,
                writes: plan.writes,
                judge_access: !self.mounted_read_only,
                fixes: plan
                    .fixes
                    .iter()
                    .map(|(r, u, g)| (r.as_str(), *u, *g))
                    .collect(),
            },
            &crate::perms::Process::current(),
        ))
    }

    fn read(&self, rel: &str) -> std::io::Result<Vec<u8>> {
        fsutil::read_noatime(&self.root.join(rel))
    }

    fn is_copied(&self, dir: &str, name: &str) -> bool {
        tsdb::is_copied(&self.root.join(dir), name)
    }

    fn hashes(
        &self,
        rels: &[RelPath],
        parallelism: usize,
        progress: &dyn Progress,
        cancel: &AtomicBool,
    ) -> Vec<Result<u128, String>> {
        let tree = Source::Local(self.root.clone());
        crate::par::map_with(
            rels,
            parallelism,
            || vec![0u8; crate::hash::BUF_SIZE],
            |buf, rel| {
                if cancel.load(std::sync::atomic::Ordering::Relaxed) {
                    return Err("interrupted".to_string());
                }
                crate::hash::file(&tree, rel, buf, progress, cancel).map_err(|e| e.to_string())
            },
        )
    }

    fn check(
        &self,
        inv: &Inventory,
        depth: check::Depth,
        parallelism: usize,
        progress: &dyn Progress,
        cancel: &AtomicBool,
    ) -> Vec<check::Problem> {
        check::run(
            &Source::Local(self.root.clone()),
            inv,
            depth,
            parallelism,
            progress,
            cancel,
        )
    }
}

/// Bytes (allocated) and entries under the target's staging directory, left by an
/// interrupted run; (0, 0) when there is none. Not followed through a link.
fn staged_usage(root: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let dir = root.join(tsdb::STAGING_DIR);
    if !std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
        return (0, 0);
    }
    walkdir::WalkDir::new(&dir)
        .min_depth(1)
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .fold((0, 0), |(b, n), md| {
            (b.saturating_add(md.blocks().saturating_mul(512)), n + 1)
        })
}
