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
//! - Everything done to a target goes through its [`Target`]: a dry run is this engine on a
//!   [`crate::volume::DryRun`], which records the changes instead of making them.

pub mod copy;
pub mod limiter;

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, anyhow};
use serde::Serialize;

use crate::perms;
use crate::plan::{MigrationPlan, State};
use crate::progress::Progress;
use crate::relpath::RelPath;
use crate::tsdb;
use crate::volume::{self, Target};
use copy::{CopyError, Ctx, Reader, Streaming};

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
    /// Target locks the caller already holds ([`lock_existing`]), by target: taken before the
    /// Kubernetes scale-down, so that a busy target stops the run before anything changes.
    pub held: std::sync::Mutex<Vec<Option<crate::lock::Guard>>>,
    /// Record the changes instead of making them ([`crate::volume::DryRun`]): the source's
    /// file contents are not read, its metadata is.
    pub dry_run: bool,
    /// Called once every target is locked and prepared, right before the first file is
    /// copied (apply logs what it copies there, not before a run that cannot start).
    pub starting: Option<&'a (dyn Fn() + Sync)>,
    /// Keep the hashes of the source bytes copied here, for the verify that follows in the
    /// same run ([`crate::hash::Sent`]).
    pub sent: Option<&'a crate::hash::Sent>,
}

/// Takes the apply lock of every target whose TSDB directory exists already, without
/// creating anything: a target another promigrate is using (a verify reading it) is refused
/// here, before the caller changes anything in the cluster. The others are locked by the
/// apply itself, once it has created their directory.
pub fn lock_existing(plans: &[MigrationPlan]) -> anyhow::Result<Vec<Option<crate::lock::Guard>>> {
    plans
        .iter()
        .map(|p| {
            let t = open_target(p, false)?;
            match t.stat(Path::new("")) {
                Ok(_) => t.lock(),
                // A mount point on the way is not "absent": stop before the cluster is touched.
                Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
                    Err(anyhow::Error::new(e)
                        .context(format!("cannot lock the target {}", p.target.display())))
                }
                Err(_) => Ok(None),
            }
        })
        .collect()
}

/// The target of a plan, as apply works on it: the volume mounted here, or a record of what
/// would be done to it.
fn open_target(plan: &MigrationPlan, dry_run: bool) -> anyhow::Result<Box<dyn Target>> {
    if let Some(r) = &plan.reach {
        return (r.open)(dry_run);
    }
    let local = volume::Local::open(&plan.mount, &plan.target, plan.owner)?;
    Ok(if dry_run {
        Box::new(volume::DryRun::new(local))
    } else {
        Box::new(local)
    })
}

pub use crate::plan::Phase;

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
    pub cleaned: Vec<RelPath>,
    /// Entries moved to quarantine.
    pub quarantined: Vec<RelPath>,
    /// Where they went.
    pub quarantine_dir: Option<PathBuf>,
    /// Entries whose owner or mode was changed.
    pub ownership_fixed: u64,
    /// Wall time (s).
    pub duration_seconds: f64,
    /// Average rate (bytes/s) of everything written: `copied_bytes` and `unfinished_bytes`.
    pub average_rate: f64,
    /// Bytes written into files the run did not finish (stopped by Ctrl-C, the deadline, an
    /// error): removed again, copied again by the next run. With `copied_bytes` (and
    /// `resumed_bytes`, the staged files an earlier run left complete), what the progress bar
    /// showed last.
    pub unfinished_bytes: u64,
    /// Sizes of the staged files an earlier run left complete and this run kept (the
    /// progress counts them as done). Per run, like `unfinished_bytes`.
    pub resumed_bytes: u64,
    /// The run began to change this target: it created its directory, or went on past
    /// its lock (a failure before that changed nothing there).
    pub began: bool,
    /// The bandwidth limit the copy kept to (bytes/s), or `None`: its rate is then what this
    /// machine, source and target do, and estimates an unlimited phase.
    pub bwlimit: Option<u64>,
    /// The phase that ran.
    pub phase: Phase,
    /// Stopped at the deadline before everything was done (rerun to continue).
    pub incomplete: bool,
    /// Blocks a presync left for the final phase, and why (vanished or changed while copied).
    pub left_for_final: Vec<String>,
    /// Source files this run read through tar streams (an SSH source with `read: tar`; the
    /// rest were read over SFTP). The same for every target of the run.
    pub streamed_files: u64,
    /// A dry run: the changes it would have made to the target, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub would: Vec<volume::Op>,
}

/// A piece of work, identical for every target that needs it, so that targets in the same
/// state share one read of the source.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Work {
    /// A directory that is not on the target (a block, a WAL checkpoint, a chunk snapshot):
    /// stage, fsync, rename into place.
    NewDir {
        dir: RelPath,
        files: Vec<RelPath>,
        bytes: u64,
    },
    /// A single file: temp name, fsync, rename.
    File { rel: RelPath, bytes: u64 },
}

struct Job {
    work: Work,
    /// Indexes of the targets that need it.
    to: Vec<usize>,
}

impl Work {
    fn bytes(&self) -> u64 {
        match self {
            Work::NewDir { bytes, .. } | Work::File { bytes, .. } => *bytes,
        }
    }
}

/// One target volume of the run and what was done to it.
struct Dest<'a> {
    plan: &'a MigrationPlan,
    target: Box<dyn Target>,
    copied_bytes: AtomicU64,
    copied_files: AtomicU64,
    resumed: AtomicU64,
    published: AtomicU64,
    /// Existing directories whose owner or mode the copies had to fix on the way.
    fixed: AtomicU64,
    /// Directories this run changed (below the TSDB directory).
    touched_dirs: Mutex<BTreeSet<PathBuf>>,
    left_for_final: Mutex<Vec<String>>,
    /// The staging directory is there, with its owner and mode (it is removed only at the
    /// end of the run): asked of the target once, not per block.
    staging_ready: AtomicBool,
}

struct Shared<'a> {
    dests: Vec<Dest<'a>>,
    /// The source (the same in every plan).
    source: &'a crate::source::Source,
    ctx: Ctx<'a>,
    /// Bytes read from the source, of files finished.
    read_bytes: AtomicU64,
    /// Sizes of the staged files kept from an earlier run (the progress counts them).
    resumed_bytes: AtomicU64,
    phase: Phase,
    started: Instant,
    bwlimit: Option<u64>,
    /// Set when the deadline stopped the run.
    out_of_time: AtomicBool,
    /// Workers read an SSH source through tar streams (cleared when the host's tar cannot).
    streaming: Streaming,
}

/// The progress apply shows, and the bytes it was told of (added, less taken back): the
/// figure the bar ends on.
struct Tally<'a> {
    inner: &'a dyn Progress,
    shown: AtomicU64,
}

impl Progress for Tally<'_> {
    fn add_bytes(&self, n: u64) {
        self.shown.fetch_add(n, Ordering::Relaxed);
        self.inner.add_bytes(n);
    }
    fn start(&self) {
        self.inner.start();
    }
    fn take_back(&self, n: u64) {
        let _ = self
            .shown
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
                Some(d.saturating_sub(n))
            });
        self.inner.take_back(n);
    }
    fn finish(&self, complete: bool) {
        self.inner.finish(complete);
    }
}

/// Executes one plan per target volume of the same source (one, or an HA pair's two) in one
/// run: each source file is read once and written to every target that needs it. Any
/// target failing stops the run (resumable). Returns one report per plan, also when it
/// failed part-way, and the failure if any.
pub fn apply(
    plans: &[MigrationPlan],
    opts: &ApplyOptions,
) -> (Vec<ApplyReport>, anyhow::Result<()>) {
    let start = Instant::now();
    let mut reports = vec![ApplyReport::default(); plans.len()];
    let result = execute(plans, opts, &mut reports);
    let seconds = start.elapsed().as_secs_f64();
    for (report, plan) in reports.iter_mut().zip(plans) {
        report.duration_seconds = seconds;
        report.average_rate =
            (report.copied_bytes + report.unfinished_bytes) as f64 / seconds.max(1e-6);
        report.bwlimit = opts.bwlimit;
        report.ok = result.is_ok() && !report.incomplete;
        report.phase = opts.phase;
        if report.ok && !opts.dry_run {
            tracing::info!(
                target = %plan.target.display(),
                copied_files = report.copied_files,
                copied_bytes = report.copied_bytes,
                resumed_files = report.resumed_files,
                seconds = report.duration_seconds,
                "apply: done"
            );
        }
    }
    (reports, result)
}

/// A target made ready for writing: its path exists, its lock is held, stale temp files
/// are gone.
struct Prepared {
    _lock: Option<crate::lock::Guard>,
    fixed: u64,
    /// New checkpoint/chunk-snapshot directories, staged and renamed in whole.
    staged_dirs: Vec<RelPath>,
}

/// Creates the path down to the TSDB root (parts created here get the target owner) and
/// takes the target's apply lock, before anything that was there is touched. A root it
/// had to create marks the report as begun.
fn lock(
    target: &dyn Target,
    report: &mut ApplyReport,
) -> anyhow::Result<Option<crate::lock::Guard>> {
    if target.stat(Path::new("")).is_err() {
        report.began = true;
    }
    target.make_dirs(Path::new(""))?;
    target.lock()
}

fn prepare(
    plan: &MigrationPlan,
    target: &dyn Target,
    lock: Option<crate::lock::Guard>,
    phase: Phase,
    report: &mut ApplyReport,
) -> anyhow::Result<Prepared> {
    let mut fixed = u64::from(target.ensure_dir(Path::new(""))?);
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
    report.cleaned = clean_leftovers(target, &plan.leftovers, &new_blocks)?;

    // A new checkpoint or chunk snapshot directory is staged and renamed in whole, like a
    // block: a partial one under its final name would be loaded by Prometheus.
    let staged_dirs: Vec<RelPath> = if phase == Phase::Presync {
        Vec::new()
    } else {
        plan.dirs
            .iter()
            .filter(|d| staged_as_a_whole(d) && target.stat(Path::new(d)).is_err())
            .cloned()
            .collect()
    };
    if phase != Phase::Presync {
        for d in plan
            .dirs
            .iter()
            .filter(|d| !staged_dirs.contains(*d) && !crate::relpath::is_below_any(d, &staged_dirs))
        {
            fixed += u64::from(target.ensure_dir(Path::new(d))?);
        }
    }
    Ok(Prepared {
        _lock: lock,
        fixed,
        staged_dirs,
    })
}

impl Dest<'_> {
    /// [`Target::ensure_dir`], counting an existing directory it had to fix.
    fn ensure_dir(&self, rel: &Path) -> anyhow::Result<()> {
        if self.target.ensure_dir(rel)? {
            self.fixed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// What one target needs copied, in order: blocks oldest first, then staged directories,
/// then single files.
fn work_of(plan: &MigrationPlan, phase: Phase, staged_dirs: &[RelPath]) -> Vec<Work> {
    let mut work = Vec::new();
    let mut blocks: Vec<_> = plan
        .blocks
        .iter()
        .filter(|b| b.state != State::Identical)
        .collect();
    blocks.sort_by_key(|b| b.min_time);
    for b in blocks {
        if b.state == State::Copy {
            work.push(Work::NewDir {
                dir: (&b.ulid).into(),
                files: b.copy.clone(),
                bytes: b.copy_bytes,
            });
        } else {
            work.extend(b.copy.iter().map(|rel| Work::File {
                rel: rel.clone(),
                bytes: 0,
            }));
        }
    }
    for d in staged_dirs {
        let of: Vec<&crate::plan::FilePlan> =
            plan.files.iter().filter(|f| f.rel.is_below(d)).collect();
        work.push(Work::NewDir {
            dir: d.clone(),
            files: of.iter().map(|f| f.rel.clone()).collect(),
            bytes: of.iter().map(|f| f.size).sum(),
        });
    }
    if phase != Phase::Presync {
        work.extend(
            plan.files
                .iter()
                .filter(|f| {
                    f.state != State::Identical
                        && !crate::relpath::is_below_any(&f.rel, staged_dirs)
                })
                .map(|f| Work::File {
                    rel: f.rel.clone(),
                    bytes: f.size,
                }),
        );
    }
    work
}

/// Merges the targets' work lists: equal work becomes one job for all targets needing it.
fn merge(per_target: Vec<Vec<Work>>) -> VecDeque<Job> {
    let mut jobs: Vec<Job> = Vec::new();
    let mut index: std::collections::HashMap<Work, usize> = std::collections::HashMap::new();
    for (t, work) in per_target.into_iter().enumerate() {
        for w in work {
            match index.get(&w) {
                Some(&i) => jobs[i].to.push(t),
                None => {
                    index.insert(w.clone(), jobs.len());
                    jobs.push(Job {
                        work: w,
                        to: vec![t],
                    });
                }
            }
        }
    }
    jobs.into()
}

fn execute(
    plans: &[MigrationPlan],
    opts: &ApplyOptions,
    reports: &mut [ApplyReport],
) -> anyhow::Result<()> {
    if let Some(p) = plans.iter().find(|p| !p.ok) {
        anyhow::bail!(
            "the plan for {} has blockers; run `promigrate plan` and resolve them first",
            p.target.display()
        );
    }
    let Some(first) = plans.first() else {
        return Ok(());
    };
    if opts.deadline.is_some_and(|d| Instant::now() >= d) {
        for r in reports.iter_mut() {
            r.incomplete = true;
        }
        return Ok(()); // past the deadline before anything was touched
    }
    // Every target is locked before anything on any of them is changed (beyond creating
    // the TSDB directory the lock lives in).
    let mut held = opts
        .held
        .lock()
        .map(|mut h| std::mem::take(&mut *h))
        .unwrap_or_default();
    held.resize_with(plans.len(), || None);
    let targets = plans
        .iter()
        .map(|p| open_target(p, opts.dry_run))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut locks = Vec::with_capacity(plans.len());
    for ((target, held), report) in targets.iter().zip(held).zip(reports.iter_mut()) {
        locks.push(match held {
            Some(g) => Some(g),
            None => lock(target.as_ref(), report)?,
        });
    }
    let mut prepared = Vec::with_capacity(plans.len());
    for (((plan, target), report), lock) in plans
        .iter()
        .zip(&targets)
        .zip(reports.iter_mut())
        .zip(locks)
    {
        report.began = true;
        prepared.push(prepare(plan, target.as_ref(), lock, opts.phase, report)?);
    }
    if let Some(starting) = opts.starting {
        starting();
    }
    opts.progress.start();
    let jobs = merge(
        plans
            .iter()
            .zip(&prepared)
            .map(|(p, pr)| work_of(p, opts.phase, &pr.staged_dirs))
            .collect(),
    );

    let throttle = limiter::for_limit(opts.bwlimit);
    let tally = Tally {
        inner: opts.progress,
        shown: AtomicU64::new(0),
    };
    let shared = Shared {
        dests: plans
            .iter()
            .zip(targets)
            .map(|(plan, target)| Dest {
                plan,
                target,
                copied_bytes: AtomicU64::new(0),
                copied_files: AtomicU64::new(0),
                resumed: AtomicU64::new(0),
                published: AtomicU64::new(0),
                fixed: AtomicU64::new(0),
                touched_dirs: Mutex::new(BTreeSet::new()),
                left_for_final: Mutex::new(Vec::new()),
                staging_ready: AtomicBool::new(false),
            })
            .collect(),
        source: &first.src,
        ctx: Ctx {
            throttle: throttle.as_ref(),
            progress: &tally,
            cancel: opts.cancel,
            deadline: opts.deadline,
            sent: opts.sent,
        },
        read_bytes: AtomicU64::new(0),
        resumed_bytes: AtomicU64::new(0),
        phase: opts.phase,
        started: Instant::now(),
        bwlimit: opts.bwlimit,
        out_of_time: AtomicBool::new(false),
        streaming: Streaming {
            // A dry run reads no file content: no tar stream.
            on: AtomicBool::new(match &first.src {
                crate::source::Source::Ssh { pool, .. } => {
                    !opts.dry_run && pool.spec().read == crate::ssh::ReadVia::Tar
                }
                crate::source::Source::Local(_) => false,
            }),
            files: AtomicU64::new(0),
        },
    };
    // A dry run records in the order apply would go, one job after the other.
    let parallelism = if opts.dry_run { 1 } else { first.parallelism };
    let jobs_result = run_jobs(&shared, jobs, parallelism);
    let out_of_time = shared.out_of_time.load(Ordering::Relaxed);
    // What the progress counted beyond the files finished and resumed: files left part-way.
    let unfinished = tally.shown.load(Ordering::Relaxed).saturating_sub(
        shared.read_bytes.load(Ordering::Relaxed) + shared.resumed_bytes.load(Ordering::Relaxed),
    );
    // A bar left at its last figure when the run stops short, to agree with the summary.
    opts.progress
        .finish(jobs_result.is_ok() && !out_of_time && unfinished == 0);
    for (d, report) in shared.dests.iter().zip(reports.iter_mut()) {
        report.copied_bytes = d.copied_bytes.load(Ordering::Relaxed);
        report.copied_files = d.copied_files.load(Ordering::Relaxed);
        report.resumed_files = d.resumed.load(Ordering::Relaxed);
        report.blocks_published = d.published.load(Ordering::Relaxed);
        report.left_for_final = d
            .left_for_final
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default();
        report.incomplete = out_of_time;
        report.unfinished_bytes = unfinished;
        report.resumed_bytes = shared.resumed_bytes.load(Ordering::Relaxed);
        report.streamed_files = shared.streaming.files.load(Ordering::Relaxed);
    }
    // Every directory this run changed is made durable, also when it stops part-way: what
    // was renamed into place stays in place after a crash.
    let mut synced: anyhow::Result<()> = Ok(());
    for d in &shared.dests {
        let dirs = d.touched_dirs.lock().map(|d| d.clone()).unwrap_or_default();
        for dir in dirs.iter().map(PathBuf::as_path).chain([Path::new("")]) {
            if let Err(e) = d.target.sync_dir(dir)
                && synced.is_ok()
            {
                synced = Err(e).with_context(|| {
                    format!("cannot fsync directory {}", d.target.path(dir).display())
                });
            }
        }
    }
    let result = jobs_result.and(synced).and_then(|()| {
        for ((d, pr), report) in shared.dests.iter().zip(&prepared).zip(reports.iter_mut()) {
            let (plan, target) = (d.plan, d.target.as_ref());
            let staging = Path::new(tsdb::STAGING_DIR);
            if target.stat(staging).is_ok() && target.remove_empty_dir(staging).is_ok() {
                target
                    .sync_dir(Path::new(""))
                    .with_context(|| format!("cannot fsync {}", target.root().display()))?;
            }
            // Only now that everything is copied: what the source compacted away, and files
            // the mirror does not want, move to the quarantine (an interrupted run leaves
            // them).
            quarantine(plan, opts, target, report)?;
            report.ownership_fixed = pr.fixed
                + d.fixed.load(Ordering::Relaxed)
                + fix_ownership(target, &plan.ownership)?;
        }
        Ok(())
    });
    for (d, report) in shared.dests.iter().zip(reports.iter_mut()) {
        report.would = d.target.recorded();
    }
    result
}

fn run_jobs(shared: &Shared, jobs: VecDeque<Job>, parallelism: usize) -> anyhow::Result<()> {
    use std::ops::ControlFlow::{Break, Continue};
    let jobs = Vec::from(jobs);
    let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let failed = AtomicBool::new(false);
    // Each worker reads through its own reader (an SSH source: its own tar stream).
    crate::par::each_with(
        &jobs,
        parallelism,
        || Reader::new(shared.source, &shared.streaming),
        |reader, _, job| {
            if failed.load(Ordering::Relaxed) || shared.ctx.stopping() {
                return Break(());
            }
            if !fits_before_deadline(shared, job.work.bytes()) {
                shared.out_of_time.store(true, Ordering::Relaxed);
                return Break(());
            }
            let batch = if reader.streams() {
                to_read(shared, job)
            } else {
                Vec::new()
            };
            reader.begin(&batch);
            let r = match &job.work {
                Work::NewDir { dir, files, .. } => stage_dir(shared, reader, dir, files, &job.to),
                Work::File { rel, .. } => one_file(shared, reader, rel, &job.to),
            };
            match r {
                Ok(()) => Continue(()),
                Err(e) => {
                    failed.store(true, Ordering::Relaxed);
                    if let Ok(mut slot) = first_error.lock() {
                        slot.get_or_insert(e);
                    }
                    Break(())
                }
            }
        },
        Reader::finish,
    );
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
    let copied = sh.read_bytes.load(Ordering::Relaxed);
    let rate = sh
        .bwlimit
        .map(|r| r as f64)
        .or((elapsed > 1.0 && copied > 0).then(|| copied as f64 / elapsed));
    rate.is_none_or(|r| bytes as f64 / r <= (deadline - now).as_secs_f64())
}

/// In a presync a source file can vanish (its block was compacted away) or change (meta.json
/// and tombstones are rewritten in place). That leaves the block for the final phase; in the
/// final phase the source is stopped and it is an error.
fn left_for_final(sh: &Shared, to: &[usize], what: &str, err: &anyhow::Error) -> bool {
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
    for &t in to {
        if let Ok(mut v) = sh.dests[t].left_for_final.lock() {
            v.push(format!("{what}: {reason}"));
        }
    }
    true
}

/// Where `dir` is staged on each target in `to` (the same place on each).
fn stage_of(dir: &str) -> PathBuf {
    Path::new(tsdb::STAGING_DIR).join(staging_name(dir))
}

/// Where `rel` (a file of `dir`) is staged in `stage`.
fn staged_file(stage: &Path, dir: &str, rel: &str) -> PathBuf {
    stage.join(crate::relpath::below(rel, dir).unwrap_or(rel))
}

/// The source files a job will read, in order: a staged file from an interrupted run that
/// is complete on every target is not read again.
fn to_read(sh: &Shared, job: &Job) -> Vec<String> {
    match &job.work {
        Work::NewDir { dir, files, .. } => {
            let stage = stage_of(dir);
            // A target whose staging of the block holds nothing needs every file: asked
            // once, not file by file.
            if job.to.iter().any(|&t| {
                sh.dests[t]
                    .target
                    .list(&stage)
                    .map_or(true, |names| names.is_empty())
            }) {
                return files.iter().map(|rel| rel.to_string()).collect();
            }
            files
                .iter()
                .filter(|rel| {
                    job.to.iter().any(|&t| {
                        !staged_complete(
                            sh.source,
                            rel,
                            sh.dests[t].target.as_ref(),
                            &staged_file(&stage, dir, rel),
                        )
                    })
                })
                .map(|rel| rel.to_string())
                .collect()
        }
        Work::File { rel, .. } => vec![rel.to_string()],
    }
}

/// A dry run's stand-in for a copy: records the write on each target in `to`, with the
/// source file's size (its metadata is read, its content is not). A file gone from the
/// source is the copy's error too (a presync leaves its block for the final phase).
fn would_copy(sh: &Shared, rel: &str, dsts: &[(usize, PathBuf)]) -> Result<(), CopyError> {
    let size = sh.source.stat(rel).map_err(|cause| CopyError::Source {
        path: PathBuf::from(sh.source.describe()).join(rel),
        cause,
    })?;
    for (t, dst) in dsts {
        sh.dests[*t].target.would_write(dst, size.size);
    }
    Ok(())
}

/// Stages a whole block on each target in `to`, makes it durable, and renames it into place.
fn stage_dir<'s>(
    sh: &'s Shared,
    reader: &mut Reader<'s>,
    dir: &str,
    files: &[RelPath],
    to: &[usize],
) -> anyhow::Result<()> {
    let stage = stage_of(dir);
    // Per target: whether its staging of this block holds nothing yet (then no file of it
    // is asked about: a target through a receiver answers each question in a round trip).
    let mut fresh = Vec::with_capacity(to.len());
    for &t in to {
        let d = &sh.dests[t];
        if !d.staging_ready.load(Ordering::Relaxed) {
            d.ensure_dir(Path::new(tsdb::STAGING_DIR))?;
            d.staging_ready.store(true, Ordering::Relaxed);
        }
        d.ensure_dir(&stage)?;
        fresh.push(d.target.list(&stage).is_ok_and(|names| names.is_empty()));
        if !staged_as_a_whole(dir) {
            mark_copied(d.target.as_ref(), &stage, &d.plan.name);
        }
    }
    // A copy error leaves the block for the final phase (in a presync whose source moved on;
    // its staging is removed), or fails the run.
    let stop = |e: CopyError| {
        let e = anyhow::Error::from(e);
        if left_for_final(sh, to, dir, &e) {
            for &t in to {
                let _ = sh.dests[t].target.remove_tree(&stage);
            }
            return Ok(());
        }
        Err(e)
    };
    let mut written: Vec<PathBuf> = Vec::with_capacity(files.len());
    // Staged files found complete from an earlier run, by target: fsync'ed again before
    // publishing (this run's copies are fsync'ed before they get their mark).
    let mut resumed: Vec<Vec<PathBuf>> = vec![Vec::new(); to.len()];
    for rel in files {
        let dst = staged_file(&stage, dir, rel);
        let mut need: Vec<(usize, PathBuf)> = Vec::new();
        for (k, &t) in to.iter().enumerate() {
            let target = sh.dests[t].target.as_ref();
            if let Some(parent) = dst.parent().filter(|p| *p != stage) {
                sh.dests[t].ensure_dir(parent)?;
            }
            if !fresh[k] && staged_complete(sh.source, rel, target, &dst) {
                sh.dests[t].resumed.fetch_add(1, Ordering::Relaxed);
                resumed[k].push(dst.clone());
            } else {
                need.push((t, dst.clone()));
            }
        }
        written.push(dst.clone());
        if need.is_empty() {
            let size = sh.dests[to[0]].target.stat(&dst).map_or(0, |e| e.size);
            sh.ctx.progress.add_bytes(size);
            sh.resumed_bytes.fetch_add(size, Ordering::Relaxed);
            continue;
        }
        if sh.dests[to[0]].target.recording() {
            if let Err(e) = would_copy(sh, rel, &need) {
                return stop(e);
            }
            continue;
        }
        let outs: Vec<copy::Out> = need
            .iter()
            .map(|(t, p)| copy::Out {
                target: sh.dests[*t].target.as_ref(),
                rel: p,
            })
            .collect();
        let n = match copy::copy_file(reader, rel, &outs, true, &sh.ctx) {
            Ok(n) => n,
            Err(e) => return stop(e),
        };
        sh.read_bytes.fetch_add(n, Ordering::Relaxed);
        for (t, _) in &need {
            let d = &sh.dests[*t];
            d.copied_bytes.fetch_add(n, Ordering::Relaxed);
            d.copied_files.fetch_add(1, Ordering::Relaxed);
        }
    }
    if let Err(e) = reader.confirm_batch(&sh.ctx) {
        return stop(e);
    }
    for (&t, resumed) in to.iter().zip(&resumed) {
        publish(&sh.dests[t], dir, &stage, &written, resumed)?;
    }
    Ok(())
}

/// Makes a staged directory durable and renames it into place on one target. The files this
/// run wrote are durable already; `resumed` ones (staged by an earlier run) are fsync'ed here.
fn publish(
    d: &Dest,
    dir: &str,
    stage: &Path,
    written: &[PathBuf],
    resumed: &[PathBuf],
) -> anyhow::Result<()> {
    let target = d.target.as_ref();
    // Durable before published: every file, then the directories, then rename.
    for f in resumed {
        target
            .sync_file(f)
            .with_context(|| format!("cannot fsync {}", target.path(f).display()))?;
    }
    let mut dirs: BTreeSet<&Path> = written.iter().filter_map(|f| f.parent()).collect();
    dirs.insert(stage);
    for dir in dirs {
        target
            .sync_dir(dir)
            .with_context(|| format!("cannot fsync {}", target.path(dir).display()))?;
    }
    let dest = Path::new(dir);
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        d.ensure_dir(parent)?; // wal/ for a checkpoint
    }
    match target.stat(dest) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        // Something is there (a link too: the target refuses to look through it).
        _ => anyhow::bail!(
            "{} appeared on the target while this block was being staged; rerun apply",
            target.path(dest).display()
        ),
    }
    target.rename(stage, dest).with_context(|| {
        format!(
            "cannot rename staged block {} to {}",
            target.path(stage).display(),
            target.path(dest).display()
        )
    })?;
    if !staged_as_a_whole(dir) {
        d.published.fetch_add(1, Ordering::Relaxed); // a block
    }
    if let Ok(mut touched) = d.touched_dirs.lock() {
        touched.insert(PathBuf::from(tsdb::STAGING_DIR));
        if let Some(parent) = dest.parent() {
            touched.insert(parent.to_path_buf());
        }
    }
    Ok(())
}

/// Marks a staged block as promigrate's (renaming it keeps the mark), so that the final phase
/// can quarantine it if the source drops it later. A filesystem without user extended
/// attributes only loses that: the block then stays when the source drops it.
fn mark_copied(target: &dyn Target, stage: &Path, name: &str) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    if let Err(e) = target.mark_copied(stage, name) {
        WARNED.call_once(|| {
            tracing::warn!(
                "cannot mark {} as copied by promigrate ({e}): the target filesystem keeps no user extended attributes, so a block the source drops later (retention, compaction) will not be recognised as promigrate's and will stay on the target",
                target.path(stage).display()
            )
        });
    }
}

use crate::tsdb::staged_as_a_whole;

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
    target: &dyn Target,
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
        .find(|p| target.stat(p).is_err())
        .unwrap_or_else(|| base.join(&stamp));
    // The quarantine's directories, created here and renamed into: each is fsync'ed after
    // the moves (with the directories the entries left, below).
    let mut made: BTreeSet<PathBuf> = BTreeSet::new();
    for e in quarantine {
        let from = Path::new(&e.rel);
        let to = qrel.join(from);
        let parent_rel = from.parent().unwrap_or(Path::new(""));
        // The directory the entry leaves (a block's chunks/ for a stray file) changes too.
        made.insert(parent_rel.to_path_buf());
        let mut cur = PathBuf::new();
        for c in qrel.join(parent_rel).components() {
            cur.push(c);
            made.insert(cur.clone());
        }
        target.make_dirs(&qrel.join(parent_rel))?;
        target.rename(from, &to).with_context(|| {
            format!(
                "cannot move extraneous {} to {}",
                target.path(from).display(),
                target.path(&to).display()
            )
        })?;
        report.quarantined.push(e.rel.clone());
        report.quarantine_dir = Some(target.path(&qrel));
    }
    // Deepest first, so each directory's entry in its parent is durable after it.
    for dir in made.iter().rev() {
        target
            .sync_dir(dir)
            .with_context(|| format!("cannot fsync {}", target.path(dir).display()))?;
    }
    for d in ["", "wal", "wbl", "chunks_head"] {
        let dir = Path::new(d);
        if target.stat(dir).is_ok_and(|e| e.is_dir) {
            target
                .sync_dir(dir)
                .with_context(|| format!("cannot fsync {}", target.path(dir).display()))?;
        }
    }
    tracing::info!(
        "moved {} to {}",
        crate::units::count(report.quarantined.len() as u64, "extraneous entry"),
        target.path(&qrel).display()
    );
    Ok(())
}

/// Whether a staged file from an interrupted run is complete: same size and mtime as the
/// source (the mtime is set only after the last byte is written).
fn staged_complete(
    src: &crate::source::Source,
    rel: &str,
    target: &dyn Target,
    dst: &Path,
) -> bool {
    let Ok(d) = target.stat(dst) else {
        return false; // not staged: no need to ask the source
    };
    match src.stat(rel) {
        Ok(s) => d.is_file && s.size == d.size && s.mtime.same(d.mtime),
        _ => false,
    }
}

/// Copies one file to a temp name beside its destination on each target in `to` (reading
/// the source once), fsyncs, renames.
fn one_file<'s>(
    sh: &'s Shared,
    reader: &mut Reader<'s>,
    rel: &str,
    to: &[usize],
) -> anyhow::Result<()> {
    let dst = Path::new(rel);
    let parent = dst.parent().unwrap_or(Path::new(""));
    let name = dst.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = parent.join(format!(".{name}{}", tsdb::TMP_SUFFIX));
    for &t in to {
        sh.dests[t].ensure_dir(parent)?;
    }
    let places: Vec<(usize, PathBuf)> = to.iter().map(|&t| (t, tmp.clone())).collect();
    let n = if sh.dests[to[0]].target.recording() {
        if let Err(e) = would_copy(sh, rel, &places) {
            let e = anyhow::Error::from(e);
            return if left_for_final(sh, to, rel, &e) {
                Ok(())
            } else {
                Err(e)
            };
        }
        0
    } else {
        let outs: Vec<copy::Out> = to
            .iter()
            .map(|&t| copy::Out {
                target: sh.dests[t].target.as_ref(),
                rel: &tmp,
            })
            .collect();
        let copied = copy::copy_file(reader, rel, &outs, true, &sh.ctx)
            .and_then(|n| reader.confirm_batch(&sh.ctx).map(|_| n));
        match copied {
            Ok(n) => n,
            Err(e) => {
                for o in &outs {
                    let _ = o.target.remove_file(o.rel);
                }
                let e = anyhow::Error::from(e);
                return if left_for_final(sh, to, rel, &e) {
                    Ok(())
                } else {
                    Err(e)
                };
            }
        }
    };
    sh.read_bytes.fetch_add(n, Ordering::Relaxed);
    for (i, &t) in to.iter().enumerate() {
        let target = sh.dests[t].target.as_ref();
        if let Err(e) = target.rename(&tmp, dst) {
            for &other in &to[i..] {
                let _ = sh.dests[other].target.remove_file(&tmp);
            }
            return Err(e).with_context(|| {
                format!(
                    "cannot rename {} to {}",
                    target.path(&tmp).display(),
                    target.path(dst).display()
                )
            });
        }
        let d = &sh.dests[t];
        d.copied_bytes.fetch_add(n, Ordering::Relaxed);
        d.copied_files.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut touched) = d.touched_dirs.lock() {
            touched.insert(parent.to_path_buf());
        }
    }
    Ok(())
}

/// Removes promigrate temp files and staged blocks that are no longer to be copied.
/// Staged blocks still to be copied are kept and resumed.
fn clean_leftovers(
    target: &dyn Target,
    leftovers: &[RelPath],
    keep_staged: &BTreeSet<String>,
) -> anyhow::Result<Vec<RelPath>> {
    let mut cleaned = Vec::new();
    for rel in leftovers {
        let p = Path::new(rel);
        if rel == tsdb::STAGING_DIR {
            // Never list or remove through a link put in its place (the target refuses).
            match target.stat(p) {
                Ok(e) if e.is_dir => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                _ => anyhow::bail!(
                    "{} is not a directory (a symbolic link?): promigrate never removes through links; move it away and rerun apply",
                    target.path(p).display()
                ),
            }
            let Ok(names) = target.list(p) else {
                continue;
            };
            for name in names {
                let shown = name.to_string_lossy().into_owned();
                if !keep_staged.contains(shown.as_str()) {
                    let stale = p.join(&name);
                    target.remove_tree(&stale).with_context(|| {
                        format!(
                            "cannot remove stale staging {}",
                            target.path(&stale).display()
                        )
                    })?;
                    cleaned.push(format!("{rel}/{shown}").into());
                }
            }
        } else if target.stat(p).is_ok_and(|e| e.is_file) {
            target.remove_file(p).with_context(|| {
                format!(
                    "cannot remove leftover temp file {}",
                    target.path(p).display()
                )
            })?;
            cleaned.push(rel.clone());
        }
    }
    Ok(cleaned)
}

/// Fixes the owner and mode of the existing target entries the plan found wrong. Entries
/// written by this run already got them when they were created. An entry that is gone
/// (quarantined, replaced) is skipped. Returns how many were changed.
fn fix_ownership(target: &dyn Target, rels: &[RelPath]) -> anyhow::Result<u64> {
    let mut fixed = 0u64;
    for rel in rels {
        let p = Path::new(rel);
        match target.fix_owner(p) {
            Ok(true) => fixed += 1,
            Ok(false) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(anyhow!(perms::explain(&target.path(p), &e, target.owner())));
            }
        }
    }
    Ok(fixed)
}
