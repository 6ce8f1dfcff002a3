//! `apply`: execute a [`MigrationPlan`] against the target. It does not re-decide what to copy.
//!
//! Invariants:
//! - Nothing half-written is ever visible under a final name. A new block is assembled under
//!   `.promigrate-staging/<ULID>/`, its files fsync'ed, then the directory is renamed into
//!   place, so `<target>/<ULID>/` is absent or complete. Every other file is written to
//!   `.<name>.promigrate-tmp` in its directory, fsync'ed and renamed.
//! - Resumable without a state file: after `kill -9`, staged files whose size and mtime equal
//!   the source are kept, temp files are removed, and only what is missing or different is
//!   copied again. A rerun of an applied plan writes nothing.
//! - Extraneous entries are moved to `.promigrate-quarantine/<timestamp>/`, never deleted.
//! - The source is only read.

pub mod copy;
pub mod limiter;

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, anyhow};
use serde::Serialize;

use crate::fsutil;
use crate::perms::{self, Owner};
use crate::plan::{MigrationPlan, State};
use crate::progress::Progress;
use crate::tsdb;
use copy::{CopyError, Ctx};

/// Options of one apply run.
pub struct ApplyOptions<'a> {
    /// Bandwidth limit in bytes/s (overrides the plan's).
    pub bwlimit: Option<u64>,
    /// Set by a signal handler to stop at the next chunk.
    pub cancel: &'a AtomicBool,
    /// Progress sink.
    pub progress: &'a dyn Progress,
    /// Which part of the migration to run.
    pub phase: Phase,
    /// Stop at a block/file boundary before this instant (the run is then `incomplete`).
    pub deadline: Option<Instant>,
}

/// The parts of a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Blocks only; safe while the source Prometheus runs. A block that vanishes (compacted
    /// away) or changes while it is copied is left for the final phase.
    Presync,
    /// With the source stopped: new and changed blocks, meta.json and tombstones, compacted-
    /// away blocks to quarantine, and an exact mirror of wal/, wbl/, chunks_head/.
    Final,
    /// Presync then final, in one run (the source must be stopped).
    #[default]
    All,
}

/// What an apply did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ApplyReport {
    /// `true` when everything in the plan was done.
    pub ok: bool,
    /// Bytes copied in this run.
    pub copied_bytes: u64,
    /// Files copied in this run.
    pub copied_files: u64,
    /// Blocks published (renamed into place) in this run.
    pub blocks_published: u64,
    /// Staged files from an interrupted run that were complete and kept.
    pub resumed_files: u64,
    /// Leftover temp files removed.
    pub cleaned: Vec<String>,
    /// Entries moved to quarantine.
    pub quarantined: Vec<String>,
    /// Where they went.
    pub quarantine_dir: Option<PathBuf>,
    /// Entries whose owner or mode was changed.
    pub ownership_fixed: u64,
    /// Wall time (s).
    pub duration_seconds: f64,
    /// Average copy rate (bytes/s).
    pub average_rate: f64,
    /// The phase that ran.
    pub phase: Phase,
    /// Stopped at the deadline before everything was done (rerun to continue).
    pub incomplete: bool,
    /// Blocks a presync left for the final phase, and why (vanished or changed while copied).
    pub left_for_final: Vec<String>,
}

enum Job {
    /// A directory that is not on the target (a block, a WAL checkpoint, a chunk snapshot):
    /// stage, fsync, rename into place.
    NewDir {
        dir: String,
        files: Vec<String>,
        bytes: u64,
    },
    /// A single file: temp name, fsync, rename.
    File { rel: String, bytes: u64 },
}

impl Job {
    fn bytes(&self) -> u64 {
        match self {
            Job::NewDir { bytes, .. } | Job::File { bytes, .. } => *bytes,
        }
    }
}

struct Shared<'a> {
    plan: &'a MigrationPlan,
    ctx: Ctx<'a>,
    copied_bytes: AtomicU64,
    copied_files: AtomicU64,
    resumed: AtomicU64,
    published: AtomicU64,
    touched_dirs: Mutex<BTreeSet<PathBuf>>,
    phase: Phase,
    started: Instant,
    bwlimit: Option<u64>,
    /// Set when the deadline stopped the run.
    out_of_time: AtomicBool,
    left_for_final: Mutex<Vec<String>>,
}

/// Executes the plan (refusing one with blockers). Returns what was done, also when it
/// failed part-way, and the failure if any.
pub fn apply(plan: &MigrationPlan, opts: &ApplyOptions) -> (ApplyReport, anyhow::Result<()>) {
    let start = Instant::now();
    let mut report = ApplyReport::default();
    let result = execute(plan, opts, &mut report);
    report.duration_seconds = start.elapsed().as_secs_f64();
    report.average_rate = report.copied_bytes as f64 / report.duration_seconds.max(1e-6);
    report.ok = result.is_ok() && !report.incomplete;
    report.phase = opts.phase;
    if report.ok {
        tracing::info!(
            copied_files = report.copied_files,
            copied_bytes = report.copied_bytes,
            resumed_files = report.resumed_files,
            seconds = report.duration_seconds,
            "apply: done"
        );
    }
    (report, result)
}

fn execute(
    plan: &MigrationPlan,
    opts: &ApplyOptions,
    report: &mut ApplyReport,
) -> anyhow::Result<()> {
    if !plan.ok {
        anyhow::bail!("the plan has blockers; run `promigrate plan` and resolve them first");
    }
    if opts.deadline.is_some_and(|d| Instant::now() >= d) {
        report.incomplete = true;
        return Ok(()); // past the deadline before anything was touched
    }
    let root = &plan.target;
    let owner = plan.owner;
    // Create the path down to the TSDB root (parts created here get the target owner), take
    // the apply lock, and only then touch anything that was there.
    let below_mount = root.strip_prefix(&plan.mount).unwrap_or(Path::new(""));
    make_dirs(&plan.mount, below_mount, owner)?;
    let _lock = lock_target(root, owner)?;
    let mut fixed = u64::from(ensure_dir(root, owner)?);
    let staging = root.join(tsdb::STAGING_DIR);
    let new_blocks: BTreeSet<String> = plan
        .blocks
        .iter()
        .filter(|b| b.state == State::Copy)
        .map(|b| b.ulid.clone())
        .chain(
            plan.dirs
                .iter()
                .filter(|d| staged_as_a_whole(d))
                .map(|d| staging_name(d)),
        )
        .collect();
    report.cleaned = clean_leftovers(root, &plan.leftovers, &new_blocks)?;

    // A new checkpoint or chunk snapshot directory is staged and renamed in whole, like a
    // block: a partial one under its final name would be loaded by Prometheus.
    let staged_dirs: Vec<&String> = if opts.phase == Phase::Presync {
        Vec::new()
    } else {
        plan.dirs
            .iter()
            .filter(|d| staged_as_a_whole(d) && !root.join(d).exists())
            .collect()
    };
    let in_staged = |rel: &str| {
        staged_dirs
            .iter()
            .any(|d| rel.starts_with(&format!("{d}/")))
    };
    if opts.phase != Phase::Presync {
        for d in plan
            .dirs
            .iter()
            .filter(|d| !staged_dirs.contains(d) && !in_staged(d))
        {
            fixed += u64::from(ensure_dir(&root.join(d), owner)?);
        }
    }

    let mut jobs = VecDeque::new();
    let mut blocks: Vec<_> = plan
        .blocks
        .iter()
        .filter(|b| b.state != State::Identical)
        .collect();
    blocks.sort_by_key(|b| b.min_time);
    for b in blocks {
        if b.state == State::Copy {
            jobs.push_back(Job::NewDir {
                dir: b.ulid.clone(),
                files: b.copy.clone(),
                bytes: b.copy_bytes,
            });
        } else {
            jobs.extend(b.copy.iter().map(|rel| Job::File {
                rel: rel.clone(),
                bytes: 0,
            }));
        }
    }
    for d in &staged_dirs {
        let of: Vec<&crate::plan::FilePlan> = plan
            .files
            .iter()
            .filter(|f| f.rel.starts_with(&format!("{d}/")))
            .collect();
        jobs.push_back(Job::NewDir {
            dir: (*d).clone(),
            files: of.iter().map(|f| f.rel.clone()).collect(),
            bytes: of.iter().map(|f| f.size).sum(),
        });
    }
    if opts.phase != Phase::Presync {
        jobs.extend(
            plan.files
                .iter()
                .filter(|f| f.state != State::Identical && !in_staged(&f.rel))
                .map(|f| Job::File {
                    rel: f.rel.clone(),
                    bytes: f.size,
                }),
        );
    }

    let throttle = limiter::for_limit(opts.bwlimit.or(plan.bwlimit));
    let shared = Shared {
        plan,
        ctx: Ctx {
            throttle: throttle.as_ref(),
            progress: opts.progress,
            cancel: opts.cancel,
            deadline: opts.deadline,
            owner,
        },
        copied_bytes: AtomicU64::new(0),
        copied_files: AtomicU64::new(0),
        resumed: AtomicU64::new(0),
        published: AtomicU64::new(0),
        touched_dirs: Mutex::new(BTreeSet::new()),
        phase: opts.phase,
        started: Instant::now(),
        bwlimit: opts.bwlimit.or(plan.bwlimit),
        out_of_time: AtomicBool::new(false),
        left_for_final: Mutex::new(Vec::new()),
    };
    let jobs_result = run_jobs(&shared, jobs, plan.parallelism);
    opts.progress.finish();
    report.copied_bytes = shared.copied_bytes.load(Ordering::Relaxed);
    report.copied_files = shared.copied_files.load(Ordering::Relaxed);
    report.resumed_files = shared.resumed.load(Ordering::Relaxed);
    report.blocks_published = shared.published.load(Ordering::Relaxed);
    report.left_for_final = shared
        .left_for_final
        .lock()
        .map(|v| v.clone())
        .unwrap_or_default();
    report.incomplete = shared.out_of_time.load(Ordering::Relaxed);
    jobs_result?;

    let dirs = shared
        .touched_dirs
        .lock()
        .map(|d| d.clone())
        .unwrap_or_default();
    for d in dirs.iter().chain(std::iter::once(root)) {
        fsutil::fsync_dir(d).with_context(|| format!("cannot fsync directory {}", d.display()))?;
    }
    if staging.exists() && std::fs::remove_dir(&staging).is_ok() {
        fsutil::fsync_dir(root).with_context(|| format!("cannot fsync {}", root.display()))?;
    }
    // Only now that everything is copied: what the source compacted away, and files the
    // mirror does not want, move to the quarantine (an interrupted run leaves them in place).
    quarantine(plan, opts, root, owner, report)?;
    report.ownership_fixed = fixed + fix_ownership(root, owner, &plan.ownership)?;
    Ok(())
}

/// Creates `base/rel` one component at a time; directories created here get the target
/// owner and mode (existing ones are left as they are).
fn make_dirs(base: &Path, rel: &Path, owner: Owner) -> anyhow::Result<()> {
    let mut cur = base.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        if !cur.is_dir() {
            ensure_dir(&cur, owner)?;
        }
    }
    Ok(())
}

fn run_jobs(shared: &Shared, jobs: VecDeque<Job>, parallelism: usize) -> anyhow::Result<()> {
    let queue = Mutex::new(jobs);
    let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let failed = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..parallelism.max(1) {
            s.spawn(|| {
                loop {
                    if failed.load(Ordering::Relaxed) || shared.ctx.stopping() {
                        return;
                    }
                    let Some(job) = queue.lock().ok().and_then(|mut q| q.pop_front()) else {
                        return;
                    };
                    if !fits_before_deadline(shared, job.bytes()) {
                        shared.out_of_time.store(true, Ordering::Relaxed);
                        return;
                    }
                    let r = match &job {
                        Job::NewDir { dir, files, .. } => stage_dir(shared, dir, files),
                        Job::File { rel, .. } => one_file(shared, rel),
                    };
                    if let Err(e) = r {
                        failed.store(true, Ordering::Relaxed);
                        if let Ok(mut slot) = first_error.lock() {
                            slot.get_or_insert(e);
                        }
                        return;
                    }
                }
            });
        }
    });
    let error = first_error.into_inner().ok().flatten();
    let cancelled =
        |e: &anyhow::Error| matches!(e.downcast_ref::<CopyError>(), Some(CopyError::Cancelled));
    let past_deadline = shared.ctx.deadline.is_some_and(|d| Instant::now() >= d);
    match error {
        Some(e) if !cancelled(&e) => Err(e),
        _ if shared.ctx.cancel.load(Ordering::Relaxed) => Err(anyhow!(
            "apply was interrupted before it finished; rerun apply to resume (completed files are kept)"
        )),
        _ if past_deadline || shared.out_of_time.load(Ordering::Relaxed) => {
            shared.out_of_time.store(true, Ordering::Relaxed);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Whether a job of `bytes` can finish before the deadline, at the bandwidth limit or else
/// at the rate seen so far (unknown rates are given the benefit of the doubt).
fn fits_before_deadline(sh: &Shared, bytes: u64) -> bool {
    let Some(deadline) = sh.ctx.deadline else {
        return true;
    };
    let now = Instant::now();
    if now >= deadline {
        return false;
    }
    let elapsed = sh.started.elapsed().as_secs_f64();
    let copied = sh.copied_bytes.load(Ordering::Relaxed);
    let rate = sh
        .bwlimit
        .map(|r| r as f64)
        .or((elapsed > 1.0 && copied > 0).then(|| copied as f64 / elapsed));
    rate.is_none_or(|r| bytes as f64 / r <= (deadline - now).as_secs_f64())
}

/// In a presync a source file can vanish (its block was compacted away) or change (meta.json
/// and tombstones are rewritten in place). That leaves the block for the final phase; in the
/// final phase the source is stopped and it is an error.
fn left_for_final(sh: &Shared, what: &str, err: &anyhow::Error) -> bool {
    if sh.phase != Phase::Presync {
        return false;
    }
    let reason = match err.downcast_ref::<CopyError>() {
        Some(CopyError::Source { cause, .. }) if cause.kind() == std::io::ErrorKind::NotFound => {
            "vanished from the source (compacted away?)"
        }
        Some(CopyError::Changed { .. }) => "changed while it was copied",
        _ => return false,
    };
    tracing::info!("{what} {reason}: left for the final phase");
    if let Ok(mut v) = sh.left_for_final.lock() {
        v.push(format!("{what}: {reason}"));
    }
    true
}

/// Stages a whole block, makes it durable, and renames it into place.
fn stage_dir(sh: &Shared, dir: &str, files: &[String]) -> anyhow::Result<()> {
    let root = &sh.plan.target;
    let stage_root = root.join(tsdb::STAGING_DIR);
    let stage = stage_root.join(staging_name(dir));
    ensure_dir(&stage_root, sh.plan.owner)?;
    ensure_dir(&stage, sh.plan.owner)?;
    let mut written = Vec::with_capacity(files.len());
    for rel in files {
        let inner = rel.strip_prefix(&format!("{dir}/")).unwrap_or(rel);
        let (src, dst) = (sh.plan.source.join(rel), stage.join(inner));
        if let Some(parent) = dst.parent().filter(|p| *p != stage) {
            ensure_dir(parent, sh.plan.owner)?;
        }
        if staged_complete(&src, &dst) {
            sh.resumed.fetch_add(1, Ordering::Relaxed);
            let size = std::fs::metadata(&dst).map(|m| m.len()).unwrap_or(0);
            sh.ctx.progress.add_bytes(size);
        } else {
            let n = match copy::copy_file(&src, &dst, false, &sh.ctx) {
                Ok(n) => n,
                Err(e) => {
                    let e = anyhow::Error::from(e);
                    if left_for_final(sh, dir, &e) {
                        let _ = std::fs::remove_dir_all(&stage);
                        return Ok(());
                    }
                    return Err(e);
                }
            };
            sh.copied_bytes.fetch_add(n, Ordering::Relaxed);
            sh.copied_files.fetch_add(1, Ordering::Relaxed);
        }
        written.push(dst);
    }
    // Durable before published: fsync every file, then the directories, then rename.
    for f in &written {
        std::fs::File::open(f)
            .and_then(|h| h.sync_all().map(|_| copy::drop_cache(&h)))
            .with_context(|| format!("cannot fsync {}", f.display()))?;
    }
    let mut dirs: BTreeSet<&Path> = written.iter().filter_map(|f| f.parent()).collect();
    dirs.insert(&stage);
    for d in dirs {
        fsutil::fsync_dir(d).with_context(|| format!("cannot fsync {}", d.display()))?;
    }
    let dest = root.join(dir);
    if let Some(parent) = dest.parent().filter(|p| *p != root.as_path()) {
        ensure_dir(parent, sh.plan.owner)?; // wal/ for a checkpoint
    }
    if dest.exists() {
        anyhow::bail!(
            "{} appeared on the target while this block was being staged; rerun apply",
            dest.display()
        );
    }
    std::fs::rename(&stage, &dest).with_context(|| {
        format!(
            "cannot rename staged block {} to {}",
            stage.display(),
            dest.display()
        )
    })?;
    if !staged_as_a_whole(dir) {
        sh.published.fetch_add(1, Ordering::Relaxed); // a block
    }
    if let Ok(mut d) = sh.touched_dirs.lock() {
        d.insert(stage_root);
        if let Some(parent) = dest.parent() {
            d.insert(parent.to_path_buf());
        }
    }
    Ok(())
}

/// Segment directories that must appear whole or not at all: WAL checkpoints and chunk
/// snapshots (Prometheus loads the newest one it finds).
fn staged_as_a_whole(dir: &str) -> bool {
    let checkpoint = dir
        .strip_prefix("wal/")
        .or_else(|| dir.strip_prefix("wbl/"))
        .is_some_and(|n| n.starts_with("checkpoint.") && !n.contains('/'));
    checkpoint || (dir.starts_with("chunk_snapshot.") && !dir.contains('/'))
}

/// The name a directory is staged under in `.promigrate-staging/`.
fn staging_name(dir: &str) -> String {
    dir.replace('/', "%")
}

/// Moves what the final phase must not leave on the target to a fresh quarantine directory:
/// blocks the source compacted away, segment files and directories the mirror does not want,
/// and (with deleteExtraneous) other extraneous entries. Never deletes.
fn quarantine(
    plan: &MigrationPlan,
    opts: &ApplyOptions,
    root: &Path,
    owner: Owner,
    report: &mut ApplyReport,
) -> anyhow::Result<()> {
    let quarantine: Vec<_> = plan
        .extraneous
        .iter()
        .filter(|e| e.quarantined(plan.delete_extraneous))
        .collect();
    if opts.phase == Phase::Presync || quarantine.is_empty() {
        return Ok(());
    }
    // A fresh directory per run: never rename over something quarantined before.
    let stamp = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%S%.3fZ")
        .to_string();
    let base = Path::new(tsdb::QUARANTINE_DIR);
    let qrel = (0..)
        .map(|n| {
            if n == 0 {
                base.join(&stamp)
            } else {
                base.join(format!("{stamp}-{n}"))
            }
        })
        .find(|p| !root.join(p).exists())
        .unwrap_or_else(|| base.join(&stamp));
    let qdir = root.join(&qrel);
    for e in quarantine {
        let to = qdir.join(&e.rel);
        let parent_rel = Path::new(&e.rel).parent().unwrap_or(Path::new(""));
        make_dirs(root, &qrel.join(parent_rel), owner)?;
        std::fs::rename(root.join(&e.rel), &to).with_context(|| {
            format!(
                "cannot move extraneous {} to {}",
                root.join(&e.rel).display(),
                to.display()
            )
        })?;
        report.quarantined.push(e.rel.clone());
        report.quarantine_dir = Some(qdir.clone());
    }
    for d in ["", "wal", "wbl", "chunks_head"] {
        let dir = root.join(d);
        if dir.is_dir() {
            fsutil::fsync_dir(&dir).with_context(|| format!("cannot fsync {}", dir.display()))?;
        }
    }
    tracing::info!(
        "moved {} extraneous entr(ies) to {}",
        report.quarantined.len(),
        qdir.display()
    );
    Ok(())
}

/// Whether a staged file from an interrupted run is complete: same size and mtime as the
/// source (the mtime is set only after the last byte is written).
fn staged_complete(src: &Path, dst: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(src), std::fs::symlink_metadata(dst)) {
        (Ok(s), Ok(d)) => {
            d.is_file()
                && s.len() == d.len()
                && fsutil::MTime {
                    sec: s.mtime(),
                    nsec: s.mtime_nsec(),
                }
                .same(fsutil::MTime {
                    sec: d.mtime(),
                    nsec: d.mtime_nsec(),
                })
        }
        _ => false,
    }
}

/// Copies one file to a temp name beside its destination, fsyncs, renames.
fn one_file(sh: &Shared, rel: &str) -> anyhow::Result<()> {
    let (src, dst) = (sh.plan.source.join(rel), sh.plan.target.join(rel));
    let parent = dst
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", dst.display()))?;
    ensure_dir(parent, sh.plan.owner)?;
    let name = dst.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = parent.join(format!(".{name}{}", tsdb::TMP_SUFFIX));
    let n = match copy::copy_file(&src, &tmp, true, &sh.ctx) {
        Ok(n) => n,
        Err(e) => {
            let e = anyhow::Error::from(e);
            return if left_for_final(sh, rel, &e) {
                Ok(())
            } else {
                Err(e)
            };
        }
    };
    if let Err(e) = std::fs::rename(&tmp, &dst) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), dst.display()));
    }
    sh.copied_bytes.fetch_add(n, Ordering::Relaxed);
    sh.copied_files.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut d) = sh.touched_dirs.lock() {
        d.insert(parent.to_path_buf());
    }
    Ok(())
}

/// Takes the target's apply lock, so two applies never write the same target at once.
/// Held until the returned guard is dropped (or the process dies).
fn lock_target(root: &Path, owner: Owner) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    use nix::fcntl::{Flock, FlockArg};
    let path = root.join(tsdb::LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            anyhow!(
                "another promigrate apply is writing {} ({} is locked): wait for it to finish",
                root.display(),
                path.display()
            )
        } else {
            anyhow!("cannot lock {}: {errno}", path.display())
        }
    })?;
    // Like everything on the target, the lock file belongs to the pod's user.
    let meta = std::fs::symlink_metadata(&path)
        .with_context(|| format!("cannot stat {}", path.display()))?;
    perms::fix(&path, &meta, owner).map_err(|e| anyhow!(perms::explain(&path, &e, owner)))?;
    Ok(lock)
}

/// Creates a directory (and missing parents) and gives it the target owner and mode.
/// Returns whether an already existing directory's owner or mode had to be changed.
fn ensure_dir(dir: &Path, owner: Owner) -> anyhow::Result<bool> {
    let existed = dir.is_dir();
    if !existed {
        std::fs::create_dir_all(dir).map_err(|e| {
            if e.raw_os_error() == Some(nix::errno::Errno::ENOSPC as i32) {
                anyhow!(
                    "target volume is full: cannot create {}; free space and rerun apply",
                    dir.display()
                )
            } else {
                anyhow!("cannot create directory {}: {e}", dir.display())
            }
        })?;
    }
    let meta =
        std::fs::symlink_metadata(dir).with_context(|| format!("cannot stat {}", dir.display()))?;
    let changed =
        perms::fix(dir, &meta, owner).map_err(|e| anyhow!(perms::explain(dir, &e, owner)))?;
    Ok(existed && changed)
}

/// Removes promigrate temp files and staged blocks that are no longer to be copied.
/// Staged blocks still to be copied are kept and resumed.
fn clean_leftovers(
    root: &Path,
    leftovers: &[String],
    keep_staged: &BTreeSet<String>,
) -> anyhow::Result<Vec<String>> {
    let mut cleaned = Vec::new();
    for rel in leftovers {
        let p = root.join(rel);
        if rel == tsdb::STAGING_DIR {
            let Ok(entries) = std::fs::read_dir(&p) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !keep_staged.contains(name.as_str()) {
                    std::fs::remove_dir_all(e.path()).with_context(|| {
                        format!("cannot remove stale staging {}", e.path().display())
                    })?;
                    cleaned.push(format!("{rel}/{name}"));
                }
            }
        } else if p.is_file() {
            std::fs::remove_file(&p)
                .with_context(|| format!("cannot remove leftover temp file {}", p.display()))?;
            cleaned.push(rel.clone());
        }
    }
    Ok(cleaned)
}

/// Fixes the owner and mode of the existing target entries the plan found wrong. Entries
/// written by this run already got them when they were created. An entry that is gone
/// (quarantined, replaced) is skipped. Returns how many were changed.
fn fix_ownership(root: &Path, owner: Owner, rels: &[String]) -> anyhow::Result<u64> {
    let mut fixed = 0u64;
    for rel in rels {
        let p = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        let meta = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot stat {}", p.display())),
        };
        if perms::fix(&p, &meta, owner).map_err(|e| anyhow!(perms::explain(&p, &e, owner)))? {
            fixed += 1;
        }
    }
    Ok(fixed)
}
