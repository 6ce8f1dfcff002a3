//! promigrate: move a Prometheus TSDB onto a Kubernetes volume and prove the copy is good.
//!
//! Phases, each its own module: [`plan`] (read-only inventory, diff and cost), [`sync`]
//! (execute a plan: rate-limited, parallel, resumable copies), [`perms`] (ownership and
//! modes), [`verify`] (prove equality). [`inspect`] summarises any data directory.
//! `run` resolves the command line once and maps outcomes to [`exit::Code`]s.

pub mod cache;
pub mod cli;
pub mod exit;
pub mod fsutil;
pub mod hash;
pub mod inspect;
pub mod k8s;
pub mod live;
pub mod lock;
pub mod logging;
pub mod metrics;
pub mod par;
pub mod perms;
pub mod plan;
pub mod progress;
pub mod record;
pub mod source;
pub mod ssh;
pub mod sync;
pub mod tsdb;
pub mod units;
pub mod verify;

use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use serde::Serialize;

use cli::{ApplyArgs, Cli, Command, Output, VerifyArgs};
use exit::Code;

/// Set once a command has printed its report, so an error after that does not print a
/// second JSON document.
static REPORTED: AtomicBool = AtomicBool::new(false);

/// Runs one command line. Errors are returned for `main` to print; with `--output json`, a
/// JSON document with `"ok": false` is printed on stdout as well unless the command already
/// printed its report.
pub fn run(cli: Cli) -> anyhow::Result<Code> {
    let output = match &cli.command {
        Command::Plan(a) => a.common.output,
        Command::Apply(a) => a.common.output,
        Command::Verify(a) => a.common.output,
        Command::Inspect(a) => a.output,
        Command::Completions { .. } | Command::Man | Command::Schema => Output::Text,
    };
    let result = match cli.command {
        Command::Plan(a) => cmd_plan(&a),
        Command::Apply(a) => cmd_apply(a),
        Command::Verify(a) => cmd_verify(a),
        Command::Inspect(a) => cmd_inspect(&a),
        Command::Completions { shell } => cmd_completions(shell),
        Command::Man => cmd_man(),
        Command::Schema => cmd_schema(),
    };
    if let (Err(e), Output::Json) = (&result, output)
        && !REPORTED.load(Ordering::Relaxed)
    {
        let doc = serde_json::json!({"ok": false, "error": format!("{e:#}"), "exit_code": exit::classify(e) as u8});
        println!("{doc}");
    }
    result
}

/// `promigrate completions SHELL`: the script on stdout, for the name it was invoked as.
fn cmd_completions(shell: clap_complete::Shell) -> anyhow::Result<Code> {
    let mut cmd = cli::command_for_invocation(std::env::args_os().next());
    let name = cmd.get_name().to_string();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell, &mut cmd, name, &mut out);
    Ok(Code::Ok)
}

/// `promigrate man`: the man page (roff) on stdout.
fn cmd_man() -> anyhow::Result<Code> {
    let cmd = cli::command_for_invocation(None);
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(cmd)
        .render(&mut out)
        .context("cannot write the man page")?;
    Ok(Code::Ok)
}

/// `promigrate schema`: the plan file's JSON Schema on stdout.
fn cmd_schema() -> anyhow::Result<Code> {
    let schema = plan::file::schema();
    println!(
        "{}",
        serde_json::to_string_pretty(&schema).context("cannot encode the schema")?
    );
    Ok(Code::Ok)
}

/// The metrics every run reports: its outcome (from the final result), duration and end.
fn run_metrics(
    command: &'static str,
    result: &anyhow::Result<Code>,
    started: jiff::Timestamp,
) -> metrics::RunMetrics {
    let code = match result {
        Ok(c) => *c,
        Err(e) => exit::classify(e),
    };
    metrics::RunMetrics {
        command,
        success: code == Code::Ok,
        exit_code: code as u8,
        duration_seconds: (jiff::Timestamp::now() - started)
            .total(jiff::Unit::Second)
            .unwrap_or(0.0),
        finished_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        ..Default::default()
    }
}

fn emit<T: Serialize>(
    output: Output,
    value: &T,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    REPORTED.store(true, Ordering::Relaxed);
    // Buffered: stdout is line-buffered, and a JSON report has thousands of lines.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let r = match output {
        Output::Json => serde_json::to_writer_pretty(&mut out, value)
            .map_err(std::io::Error::from)
            .and_then(|_| writeln!(out)),
        Output::Text => write!(out, "{}", text()),
    }
    .and_then(|_| out.flush());
    match r {
        // A closed pipe (`| head`) is not a failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("cannot write the report to stdout"),
    }
}

/// The plans of several target volumes (`targets:`), as `plan` reports them.
#[derive(Serialize)]
struct PlanEach<'a> {
    ok: bool,
    targets: &'a [plan::MigrationPlan],
}

/// Builds the plan of every target volume, scanning the source once.
fn build_plans(
    m: &plan::Migration,
    compare: plan::Compare,
) -> anyhow::Result<Vec<plan::MigrationPlan>> {
    let progress_for = |total| progress::for_stderr("checksum", total);
    if m.targets.len() == 1 {
        Ok(vec![plan::build(m, compare, &progress_for)?])
    } else {
        plan::build_each(m, compare, &progress_for)
    }
}

/// How `--checksum` compares for a run of `phase`: a presync copies no WAL/head file, so
/// it hashes block files only.
fn compare_of(checksum: bool, phase: sync::Phase) -> plan::Compare {
    match (checksum, phase) {
        (false, _) => plan::Compare::Quick,
        (true, sync::Phase::Presync) => plan::Compare::ChecksumBlocks,
        (true, _) => plan::Compare::Checksum,
    }
}

/// The text of several plans, each under a heading naming its target.
fn render_plans(plans: &[&plan::MigrationPlan]) -> String {
    if let [p] = plans {
        return p.render_text();
    }
    let mut s = String::new();
    for (i, p) in plans.iter().enumerate() {
        s.push_str(&format!(
            "=== target {} of {}: {} ===\n",
            i + 1,
            plans.len(),
            p.target.display()
        ));
        s.push_str(&p.render_text());
        s.push('\n');
    }
    s
}

/// Reads each target's cluster objects (read-only) and adds them, with their blockers, to
/// its plan, for an apply of `phase`. An unreachable cluster is a blocker that names the
/// context and server.
fn kube_preflight(
    rt: &tokio::runtime::Runtime,
    m: &plan::Migration,
    plans: &mut [plan::MigrationPlan],
    phase: sync::Phase,
) {
    for (p, t) in plans.iter_mut().zip(&m.targets) {
        let Some(k) = &t.kubernetes else { continue };
        let data = p.stats.source_bytes;
        let writes = !p.phase_writes_nothing(phase);
        let report = rt.block_on(async {
            let read = async {
                let cluster = k8s::connect(k).await?;
                k8s::inspect(&cluster, k).await
            };
            match read.await {
                Ok(state) => {
                    let mut r = k8s::assess(k, &state, data, writes);
                    let blocks: Vec<(i64, u64)> =
                        p.blocks.iter().map(|b| (b.max_time, b.size)).collect();
                    // What Prometheus counts as the head's size: wal/, wbl/, chunks_head/.
                    let head: u64 = p
                        .files
                        .iter()
                        .filter(|f| {
                            ["wal/", "wbl/", "chunks_head/"]
                                .iter()
                                .any(|d| f.rel.starts_with(d))
                        })
                        .map(|f| f.size)
                        .sum();
                    // A warning, not yet a blocker: the retention in Prometheus's
                    // configuration file (3.8+) and the operator's are not read yet.
                    r.warnings
                        .extend(k8s::retention_blocker(k, &state, &blocks, head));
                    r
                }
                Err(e) => k8s::unreachable(k, &e),
            }
        });
        p.attach_kubernetes(report);
    }
}

fn cmd_plan(args: &cli::PlanArgs) -> anyhow::Result<Code> {
    let a = &args.common;
    let m = plan::file::load(&a.file)?;
    let mut plans = build_plans(&m, compare_of(args.checksum, sync::Phase::All))?;
    if m.targets.iter().any(|t| t.kubernetes.is_some()) {
        kube_preflight(&runtime()?, &m, &mut plans, sync::Phase::All);
    }
    let ok = plans.iter().all(|p| p.ok);
    match &plans[..] {
        [p] => emit(a.output, p, || p.render_text())?,
        _ => emit(
            a.output,
            &PlanEach {
                ok,
                targets: &plans,
            },
            || render_plans(&plans.iter().collect::<Vec<_>>()),
        )?,
    }
    Ok(if ok { Code::Ok } else { Code::Findings })
}

fn cmd_inspect(a: &cli::InspectArgs) -> anyhow::Result<Code> {
    // Only the deep checks take long enough to need a clean stop on Ctrl-C.
    let (_rt, cancel) = if a.deep {
        let rt = runtime()?;
        let cancel = cancel_on_signal(&rt);
        (Some(rt), cancel)
    } else {
        (None, Arc::new(AtomicBool::new(false)))
    };
    let report = inspect::run(&a.dir, a.deep, a.parallelism as usize, &cancel)?;
    emit(a.output, &report, || report.render_text())?;
    Ok(if report.ok { Code::Ok } else { Code::Findings })
}

/// Sets the flag on Ctrl-C or SIGTERM, so workers stop at the next chunk and the run ends
/// resumable.
fn cancel_on_signal(runtime: &tokio::runtime::Runtime) -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    arm_cancel(runtime, flag.clone());
    flag
}

/// From now on, Ctrl-C and SIGTERM set `flag` instead of ending the process. Until this is
/// called the default action applies: the process ends at once (apply arms it only once it
/// is past its prompt, so Ctrl-C at `[y/N]` ends it with nothing written).
fn arm_cancel(runtime: &tokio::runtime::Runtime, flag: Arc<AtomicBool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let f = flag;
    // Registered here, before returning (not when the task first runs): a signal right
    // after this call already stops at the next chunk instead of ending the process.
    let _in_runtime = runtime.enter();
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!("cannot install the signal handlers: Ctrl-C ends the process at once");
        return;
    };
    runtime.spawn(async move {
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        tracing::warn!("signal received: stopping at the next chunk; rerun to resume");
        f.store(true, Ordering::Relaxed);
    });
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Fails with "interrupted" if the flag is set (checked between phases).
fn check_cancel(cancel: &AtomicBool, what: &str) -> anyhow::Result<()> {
    if cancel.load(Ordering::Relaxed) {
        anyhow::bail!("{what} was interrupted before it finished; nothing is lost, rerun it");
    }
    Ok(())
}

/// What `apply` reports and records, whatever happened.
#[derive(Serialize, Default)]
struct ApplyOutput {
    ok: bool,
    dry_run: bool,
    /// Refused: blockers, a running source, or "no" at the prompt. Nothing was written.
    refused: bool,
    /// Why it was refused, when not for blockers or at the prompt.
    refusal: Option<String>,
    /// Stopped at the deadline before everything was done; rerun to continue.
    incomplete: bool,
    /// The plan (one target).
    #[serde(skip_serializing_if = "Option::is_none")]
    plan: Option<plan::MigrationPlan>,
    actions: Vec<String>,
    /// What was done (one target); present also when apply failed part-way.
    #[serde(skip_serializing_if = "Option::is_none")]
    apply: Option<sync::ApplyReport>,
    /// With several target volumes (`targets:`): each one's plan and what was done.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    targets: Vec<TargetOutcome>,
    /// The verify that gated the Kubernetes steps (with `target.kubernetes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    verify: Option<VerifyOutput>,
    /// Every change made to cluster objects: object, field, before → after.
    kubernetes_changes: Vec<k8s::Change>,
    /// What was left scaled down when the run ended before the scale-up (presync, deadline).
    #[serde(skip_serializing_if = "Option::is_none")]
    kubernetes_note: Option<String>,
    /// Things to know about this run (e.g. a deadline shorter than the estimate).
    warnings: Vec<String>,
    error: Option<String>,
    record: Option<std::path::PathBuf>,
}

/// One target volume's part of an apply.
#[derive(Serialize)]
struct TargetOutcome {
    plan: plan::MigrationPlan,
    apply: Option<sync::ApplyReport>,
}

impl ApplyOutput {
    /// Stores the plans (and reports, once apply ran) in the shape for one or several targets.
    fn set(&mut self, plans: Vec<plan::MigrationPlan>, reports: Option<Vec<sync::ApplyReport>>) {
        let mut reports = reports.map(|r| r.into_iter().map(Some).collect::<Vec<_>>());
        if plans.len() == 1 {
            self.plan = plans.into_iter().next();
            self.apply = reports.and_then(|mut r| r.pop().flatten());
        } else {
            self.targets = plans
                .into_iter()
                .enumerate()
                .map(|(i, plan)| TargetOutcome {
                    plan,
                    apply: reports
                        .as_mut()
                        .and_then(|r| r.get_mut(i).and_then(Option::take)),
                })
                .collect();
        }
    }

    /// Every target's plan and report, in plan-file order.
    fn outcomes(&self) -> Vec<(&plan::MigrationPlan, Option<&sync::ApplyReport>)> {
        match &self.plan {
            Some(p) => vec![(p, self.apply.as_ref())],
            None => self
                .targets
                .iter()
                .map(|t| (&t.plan, t.apply.as_ref()))
                .collect(),
        }
    }
}

fn cmd_apply(a: ApplyArgs) -> anyhow::Result<Code> {
    let started = jiff::Timestamp::now();
    // The deadline counts from now, before anything is read or changed.
    let deadline = a.deadline.map(|d| d.resolve(started)).transpose()?;
    if !a.yes && !a.dry_run && !std::io::stdin().is_terminal() {
        return Err(exit::InvalidInput(
            "apply would write, and stdin is not a terminal to confirm it on: pass --yes (or --dry-run to see what it would do). Nothing was written".into(),
        )
        .into());
    }
    let rt = runtime()?;
    // Armed after the confirmation prompt (see arm_cancel).
    let cancel = Arc::new(AtomicBool::new(false));
    let m = plan::file::load(&a.common.file)?;
    let mut out = ApplyOutput {
        dry_run: a.dry_run,
        ..Default::default()
    };
    let result = apply_and_record(&a, &m, &rt, &cancel, deadline, started, &mut out);
    // Last, from the final outcome: a run that failed anywhere (even writing its record)
    // reports that.
    if let Some(gw) = pushgateway(a.pushgateway.as_deref(), &m)
        && !a.dry_run
    {
        let reports: Vec<&sync::ApplyReport> =
            out.outcomes().into_iter().filter_map(|(_, r)| r).collect();
        let run = metrics::RunMetrics {
            copied_bytes: reports.iter().map(|r| r.copied_bytes).sum(),
            copied_files: reports.iter().map(|r| r.copied_files).sum(),
            verify_differences: out.verify.as_ref().map(VerifyOutput::differences),
            ..run_metrics("apply", &result, started)
        };
        metrics::push_or_warn(&gw, &m.name, &run);
    }
    result
}

/// The gateway to push to: `--pushgateway URL` replaces `report.pushgateway.url` and keeps
/// the plan's CA and credentials.
fn pushgateway(cli_url: Option<&str>, m: &plan::Migration) -> Option<metrics::Pushgateway> {
    match (cli_url, &m.pushgateway) {
        (Some(url), Some(gw)) => Some(metrics::Pushgateway {
            url: url.to_string(),
            ..gw.clone()
        }),
        (Some(url), None) => Some(metrics::Pushgateway::new(url)),
        (None, gw) => gw.clone(),
    }
}

fn apply_and_record(
    a: &ApplyArgs,
    m: &plan::Migration,
    rt: &tokio::runtime::Runtime,
    cancel: &Arc<AtomicBool>,
    deadline: Option<cli::ResolvedDeadline>,
    started: jiff::Timestamp,
    out: &mut ApplyOutput,
) -> anyhow::Result<Code> {
    let record_dir = if a.dry_run {
        None
    } else {
        Some(record::prepare(&a.state_dir, &m.name)?)
    };
    let outcome = apply_steps(a, m, rt, cancel, deadline, out);
    let code = match &outcome {
        Ok(code) => *code,
        Err(e) => {
            out.error = Some(format!("{e:#}"));
            exit::classify(e)
        }
    };
    if let Some(dir) = &record_dir {
        let rec = record::RunRecord::new(
            "apply",
            &m.plan_path,
            started,
            code as u8,
            out.error.clone(),
            &*out,
        );
        out.record = Some(record::write(dir, &rec)?);
    }
    emit(a.common.output, &*out, || render_apply(out))?;
    outcome
}

fn apply_steps(
    a: &ApplyArgs,
    m: &plan::Migration,
    rt: &tokio::runtime::Runtime,
    cancel: &Arc<AtomicBool>,
    deadline: Option<cli::ResolvedDeadline>,
    out: &mut ApplyOutput,
) -> anyhow::Result<Code> {
    let mut plans = build_plans(m, compare_of(a.checksum, a.phase))?;
    // (index of the target, its cluster objects)
    let kube_targets: Vec<(usize, plan::file::KubeTarget)> = m
        .targets
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.kubernetes.clone().map(|k| (i, k)))
        .collect();
    if !kube_targets.is_empty() {
        kube_preflight(rt, m, &mut plans, a.phase);
    }
    if let Some(r) = a.bwlimit {
        for p in &mut plans {
            p.bwlimit = r.limit();
            p.stats.eta_seconds = p.bwlimit.map(|r| p.stats.copy_bytes as f64 / r as f64);
            p.phases = plan::phases(&p.blocks, &p.files, p.bwlimit);
        }
    }
    let source = m.src.clone();
    let several = plans.len() > 1;
    // The final phase copies wal/ and chunks_head/: only consistent with the source stopped.
    if a.phase != sync::Phase::Presync
        && let Some(why) = refusal(&plans[0].source_state, a.source_stopped)
    {
        out.refusal = Some(why);
        out.refused = true;
        out.set(plans, None);
        return Ok(Code::Findings);
    }
    out.actions = plans
        .iter()
        .flat_map(|p| {
            p.actions().into_iter().map(move |act| {
                if several {
                    format!("{}: {act}", p.target.display())
                } else {
                    act
                }
            })
        })
        .collect();
    let ok = plans.iter().all(|p| p.ok);
    if !ok || a.dry_run {
        out.refused = !ok;
        out.ok = ok;
        out.set(plans, None);
        return Ok(if ok { Code::Ok } else { Code::Findings });
    }
    if let Some(d) = deadline {
        let estimate = plans
            .iter()
            .filter_map(|p| match a.phase {
                sync::Phase::Presync => p.phases.presync.eta_seconds,
                // The final phase also copies whatever blocks are still to copy.
                sync::Phase::Final | sync::Phase::All => p.stats.eta_seconds,
            })
            .fold(None, |acc: Option<f64>, e| {
                Some(acc.map_or(e, |x| x.max(e)))
            });
        let left = d.left().as_secs_f64();
        if let Some(est) = estimate.filter(|e| *e > left) {
            let w = format!(
                "--deadline {} leaves {} but the plan estimates {} at the bandwidth limit: the run will likely stop incomplete (rerun to continue)",
                d.at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                units::duration(left),
                units::duration(est)
            );
            tracing::warn!("{w}");
            out.warnings.push(w);
        }
    }
    if a.common.output == Output::Text {
        print!("{}", render_plans(&plans.iter().collect::<Vec<_>>()));
    }
    if !a.yes && !confirm(&plans)? {
        out.refused = true;
        out.set(plans, None);
        return Ok(Code::Findings);
    }
    arm_cancel(rt, cancel.clone());
    check_cancel(cancel, "apply")?;
    // Again right before the first write: the prompt may have waited a while.
    if a.phase != sync::Phase::Presync
        && let Some(why) = refusal(&source.probe(), a.source_stopped)
    {
        out.refusal = Some(why);
        out.refused = true;
        out.set(plans, None);
        return Ok(Code::Findings);
    }
    let phase = a.phase;
    let deadline = deadline.map(|d| d.instant);
    if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
        // Out of time before any change (the plan and the prompt took it): no scale-down.
        out.incomplete = true;
        out.set(plans, None);
        return Ok(Code::Findings);
    }
    // The targets' locks come first: a target another promigrate uses (a verify reading it)
    // stops the run here, before the StatefulSet is touched.
    let held = sync::lock_existing(&plans)?;
    // Nothing may write to the volume while data is copied: scale the StatefulSet to 0 and
    // wait for every pod mounting the claim to go, before the first byte. A rerun that has
    // nothing left to write does not disturb running pods.
    let mut clusters = Vec::new();
    for (i, k) in &kube_targets {
        let c = rt.block_on(k8s::connect(k))?;
        clusters.push((*i, c, k.clone()));
    }
    // Only the targets this run writes are quiesced (a StatefulSet shared by several
    // targets is scaled down once, for the first that writes); a presync writes no WAL or
    // head file, so differences there alone leave the pods running.
    let mut quiesced: Vec<plan::file::KubeTarget> = Vec::new();
    for (i, c, k) in &clusters {
        if plans[*i].phase_writes_nothing(phase) {
            continue;
        }
        let r = rt.block_on(k8s::quiesce(c, k, &mut out.kubernetes_changes));
        if let Err(e) = r {
            quiesced.push(k.clone());
            return Err(e.context(left_scaled_down_all(&quiesced)));
        }
        quiesced.push(k.clone());
    }
    // Bytes read from the source: targets in the same state share the reads.
    let total = plans
        .iter()
        .map(|p| match phase {
            sync::Phase::Presync => p.phases.presync.bytes,
            _ => p.stats.copy_bytes,
        })
        .max()
        .unwrap_or(0);
    let files = plans.iter().map(|p| p.stats.copy_files).max().unwrap_or(0);
    let worker_plans = plans.clone();
    let worker_cancel = cancel.clone();
    let (reports, result) = rt
        .block_on(async move { tokio::task::spawn_blocking(move || {
            // Logged before the progress bar is drawn, so the two do not tear each other.
            for p in &worker_plans {
                tracing::info!(files, bytes = total, target = %p.target.display(), "apply: copying");
            }
            let progress = progress::for_stderr("apply", total);
            let opts = sync::ApplyOptions {
                bwlimit: worker_plans[0].bwlimit,
                cancel: &worker_cancel,
                progress: progress.as_ref(),
                phase,
                deadline,
                held: std::sync::Mutex::new(held),
            };
            sync::apply_each(&worker_plans, &opts)
        }).await })
        .context("the copy workers stopped unexpectedly")?;
    let incomplete = reports.iter().any(|r| r.incomplete);
    out.set(plans, Some(reports));
    let note = (!quiesced.is_empty()).then(|| left_scaled_down_all(&quiesced));
    result.map_err(|e| match &note {
        Some(n) => e.context(n.clone()),
        None => e,
    })?;
    // And after: a server that started meanwhile makes the WAL/head copy inconsistent.
    if phase != sync::Phase::Presync
        && let live::Liveness::Running(how) = source.probe()
    {
        anyhow::bail!(
            "the source Prometheus started while the final phase ran ({how}): the copied WAL and head may be inconsistent; stop it and rerun apply{}",
            note.as_ref().map_or(String::new(), |n| format!("; {n}"))
        );
    }
    if incomplete {
        out.incomplete = true;
        out.kubernetes_note = note;
        return Ok(Code::Findings);
    }
    if phase == sync::Phase::Presync {
        out.kubernetes_note = note.map(|n| format!("{n} (until the final phase verifies)"));
    } else if !clusters.is_empty() {
        let pairs: Vec<(k8s::Cluster, plan::file::KubeTarget)> = clusters
            .iter()
            .map(|(_, c, k)| (c.clone(), k.clone()))
            .collect();
        kube_finish(a, m, rt, cancel, &pairs, note, out)?;
    }
    out.ok = true;
    Ok(Code::Ok)
}

/// [`left_scaled_down`] for every target quiesced so far.
fn left_scaled_down_all(ks: &[plan::file::KubeTarget]) -> String {
    let mut v: Vec<String> = ks.iter().map(left_scaled_down).collect();
    v.dedup();
    v.join("; ")
}

/// What to tell the runbook owner when a step fails after the scale-down.
fn left_scaled_down(k: &plan::file::KubeTarget) -> String {
    match &k.stateful_set {
        Some(s) => format!(
            "statefulset/{}/{s} is left at 0 replicas (the replicas it had are in its annotation {}): the runbook owner decides; rerun apply to continue, or scale it back by hand",
            k.namespace,
            k8s::REPLICAS_ANNOTATION
        ),
        None => format!(
            "the Kubernetes steps for persistentvolume/{} stopped here",
            k.persistent_volume
        ),
    }
}

/// After the final phase: verify every target, and only if all match, recover Released PVs
/// and scale the StatefulSets back (waiting for their claims to bind).
fn kube_finish(
    a: &ApplyArgs,
    m: &plan::Migration,
    rt: &tokio::runtime::Runtime,
    cancel: &Arc<AtomicBool>,
    clusters: &[(k8s::Cluster, plan::file::KubeTarget)],
    note: Option<String>,
    out: &mut ApplyOutput,
) -> anyhow::Result<()> {
    let verified = run_verify(rt, m, a.verify_level, cancel.clone());
    let left = || note.clone().unwrap_or_default();
    let verified = verified.map_err(|e| e.context(left()))?;
    let ok = verified.ok();
    out.verify = Some(verified);
    if !ok {
        return Err(anyhow::Error::new(exit::Finding(format!(
            "the verify after the copy found differences (see `verify` in the report); no PV was recovered and no StatefulSet scaled back{}",
            note.as_ref().map_or(String::new(), |n| format!("; {n}"))
        ))));
    }
    for (c, k) in clusters {
        rt.block_on(k8s::recover_pv(c, k, &mut out.kubernetes_changes))
            .map_err(|e| e.context(left()))?;
    }
    for (c, k) in clusters {
        rt.block_on(k8s::restore(c, k, &mut out.kubernetes_changes))
            .map_err(|e| {
                e.context(format!(
                    "restoring the objects of persistentvolume/{} (see kubernetes_changes for what was already done)",
                    k.persistent_volume
                ))
            })?;
    }
    Ok(())
}

/// Why the final phase must not run, given what is known about the source server.
fn refusal(state: &live::Liveness, source_stopped: bool) -> Option<String> {
    match state {
        live::Liveness::Running(how) => Some(format!(
            "the source Prometheus is still running ({how}): stop it (SIGTERM) and rerun; `--phase presync` copies blocks meanwhile. Nothing was written"
        )),
        live::Liveness::Unknown(why) if !source_stopped => Some(format!(
            "cannot tell whether the source Prometheus is stopped ({why}); once it is, rerun with --source-stopped. Nothing was written"
        )),
        _ => None,
    }
}

fn render_apply(out: &ApplyOutput) -> String {
    let mut s = String::new();
    let outcomes = out.outcomes();
    if outcomes.is_empty() {
        return s; // the error is printed on stderr
    }
    let plans: Vec<&plan::MigrationPlan> = outcomes.iter().map(|(p, _)| *p).collect();
    let ok = plans.iter().all(|p| p.ok);
    if let Some(why) = &out.refusal {
        s.push_str(&render_plans(&plans));
        s.push_str(&format!("apply refused: {why}.\n"));
    } else if out.refused && !ok {
        s.push_str(&render_plans(&plans));
        s.push_str("apply refused: resolve the blockers above; nothing was written.\n");
    } else if out.refused {
        s.push_str("Not applied (declined at the prompt): nothing was written.\n");
    } else if out.dry_run {
        s.push_str(&render_plans(&plans));
        s.push_str("\nDry run: apply would\n");
        for act in &out.actions {
            s.push_str(&format!("  - {act}\n"));
        }
        s.push_str("Nothing was written.\n");
    }
    for (p, r) in &outcomes {
        let Some(r) = r else { continue };
        let verb = match (out.ok, out.incomplete, r.ok) {
            (true, _, _) => "Applied",
            (false, true, _) => "INCOMPLETE (stopped at the deadline; rerun apply to continue)",
            (false, false, true) => "Copied, but a later step failed (see the error)",
            (false, false, false) => "Stopped part-way",
        };
        let to = if outcomes.len() > 1 {
            format!(" to {}", p.target.display())
        } else {
            String::new()
        };
        s.push_str(&format!(
            "\n{verb}{to}: {} in {} file(s) copied, {} block(s) published, {} resumed file(s), {} owner/mode fix(es) in {} ({}/s)\n",
            units::bytes(r.copied_bytes),
            r.copied_files,
            r.blocks_published,
            r.resumed_files,
            r.ownership_fixed,
            units::duration(r.duration_seconds),
            units::bytes(r.average_rate as u64)
        ));
        s.push_str(&format!("Selection: {}\n", p.selection.line()));
        if let Some(line) = p.checksum_line() {
            s.push_str(&format!("{line}\n"));
        }
        for l in &r.left_for_final {
            s.push_str(&format!("Left for the final phase: {l}\n"));
        }
        if let Some(q) = &r.quarantine_dir {
            s.push_str(&format!(
                "Quarantined {} entr(ies) in {}\n",
                r.quarantined.len(),
                q.display()
            ));
        }
    }
    for w in &out.warnings {
        s.push_str(&format!("warning: {w}\n"));
    }
    if out.incomplete && outcomes.iter().all(|(_, r)| r.is_none()) {
        s.push_str(
            "INCOMPLETE: the deadline passed before anything was changed; nothing was written.\n",
        );
    }
    if let Some(v) = &out.verify {
        s.push_str("\nVerify before the Kubernetes steps:\n");
        s.push_str(&v.render_text());
    }
    for c in &out.kubernetes_changes {
        s.push_str(&format!(
            "Kubernetes: {} {}: {} -> {}\n",
            c.object, c.field, c.before, c.after
        ));
    }
    if let Some(n) = &out.kubernetes_note {
        s.push_str(&format!("Kubernetes: {n}\n"));
    }
    if let Some(rec) = &out.record {
        s.push_str(&format!("Run record: {}\n", rec.display()));
    }
    let presync = outcomes
        .iter()
        .any(|(_, r)| r.is_some_and(|r| r.phase == sync::Phase::Presync));
    if out.ok && !out.dry_run && presync {
        s.push_str(
            "Next: stop the source Prometheus, then promigrate apply -f <plan> --phase final.\n",
        );
    } else if out.ok && !out.dry_run {
        s.push_str("Next: promigrate verify -f <plan> (its exit code gates the cutover).\n");
    }
    s
}

fn confirm(plans: &[plan::MigrationPlan]) -> anyhow::Result<bool> {
    let to: Vec<String> = plans
        .iter()
        .map(|p| p.target.display().to_string())
        .collect();
    eprint!("\nApply this plan to {}? [y/N] ", to.join(" and "));
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the answer from stdin")?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

/// What `verify` reports: one target's report as it is, or several under `targets`.
#[derive(Serialize)]
#[serde(untagged)]
enum VerifyOutput {
    One(verify::VerifyReport),
    Each {
        ok: bool,
        targets: Vec<verify::VerifyReport>,
    },
}

impl From<Vec<verify::VerifyReport>> for VerifyOutput {
    fn from(mut reports: Vec<verify::VerifyReport>) -> Self {
        if reports.len() == 1
            && let Some(r) = reports.pop()
        {
            return VerifyOutput::One(r);
        }
        VerifyOutput::Each {
            ok: reports.iter().all(|r| r.ok),
            targets: reports,
        }
    }
}

impl VerifyOutput {
    /// Differences over all targets.
    fn differences(&self) -> u64 {
        match self {
            VerifyOutput::One(r) => r.differences.len() as u64,
            VerifyOutput::Each { targets, .. } => {
                targets.iter().map(|r| r.differences.len() as u64).sum()
            }
        }
    }

    fn ok(&self) -> bool {
        match self {
            VerifyOutput::One(r) => r.ok,
            VerifyOutput::Each { ok, .. } => *ok,
        }
    }

    fn render_text(&self) -> String {
        match self {
            VerifyOutput::One(r) => r.render_text(),
            VerifyOutput::Each { ok, targets } => {
                let mut s = String::new();
                for (i, r) in targets.iter().enumerate() {
                    s.push_str(&format!(
                        "=== target {} of {} ===\n{}\n",
                        i + 1,
                        targets.len(),
                        r.render_text()
                    ));
                }
                let failed = targets.iter().filter(|r| !r.ok).count();
                s.push_str(&if *ok {
                    format!("OK: all {} targets match the source.\n", targets.len())
                } else {
                    format!(
                        "FAILED: {failed} of {} targets differ. Do not cut over.\n",
                        targets.len()
                    )
                });
                s
            }
        }
    }
}

fn cmd_verify(a: VerifyArgs) -> anyhow::Result<Code> {
    let started = jiff::Timestamp::now();
    let rt = runtime()?;
    let cancel = cancel_on_signal(&rt);
    let m = plan::file::load(&a.common.file)?;
    let mut differences = None;
    let result = verify_and_record(&a, &m, &rt, cancel, started, &mut differences);
    // Last, from the final outcome (a record that could not be written is a failure too).
    if let Some(gw) = pushgateway(a.pushgateway.as_deref(), &m) {
        let run = metrics::RunMetrics {
            verify_differences: differences,
            ..run_metrics("verify", &result, started)
        };
        metrics::push_or_warn(&gw, &m.name, &run);
    }
    result
}

/// Verifies every target of the migration on the blocking pool (the source hashed once).
fn run_verify(
    rt: &tokio::runtime::Runtime,
    m: &plan::Migration,
    level: cli::VerifyLevel,
    cancel: Arc<AtomicBool>,
) -> anyhow::Result<VerifyOutput> {
    let mm = m.clone();
    rt.block_on(async move {
        tokio::task::spawn_blocking(move || {
            let progress_for = |total| progress::for_stderr("verify", total);
            let reports = if mm.targets.len() == 1 {
                vec![verify::run(&mm, level, &progress_for, &cancel)?]
            } else {
                verify::run_each(&mm, level, &progress_for, &cancel)?
            };
            check_cancel(&cancel, "verify")?;
            Ok::<_, anyhow::Error>(VerifyOutput::from(reports))
        })
        .await
    })
    .context("the verify workers stopped unexpectedly")
    .and_then(|r| r)
}

fn verify_and_record(
    a: &VerifyArgs,
    m: &plan::Migration,
    rt: &tokio::runtime::Runtime,
    cancel: Arc<AtomicBool>,
    started: jiff::Timestamp,
    differences: &mut Option<u64>,
) -> anyhow::Result<Code> {
    let record_dir = record::prepare(&a.state_dir, &m.name)?;
    let result = run_verify(rt, m, a.level, cancel);
    let code = match &result {
        Ok(r) if r.ok() => Code::Ok,
        Ok(_) => Code::Findings,
        Err(e) => exit::classify(e),
    };
    *differences = result.as_ref().ok().map(VerifyOutput::differences);
    let error = result.as_ref().err().map(|e| format!("{e:#}"));
    let rec = record::RunRecord::new(
        "verify",
        &m.plan_path,
        started,
        code as u8,
        error,
        result.as_ref().ok(),
    );
    let path = record::write(&record_dir, &rec)?;
    let report = result?;
    emit(a.common.output, &report, || {
        format!("{}Run record: {}\n", report.render_text(), path.display())
    })?;
    Ok(code)
}
