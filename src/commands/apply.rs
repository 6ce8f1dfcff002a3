//! `promigrate apply`: refuse what must not run (blockers, a running source), confirm,
//! quiesce the Kubernetes workloads, copy, and after the final phase verify before the
//! cluster objects are restored; the report and the run record say what was done.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use serde::Serialize;

use super::verify::{VerifyOutput, run_verify};
use super::{
    Outcome, Push, arm_cancel, build_plans, check_cancel, compare_of, kube_preflight, limit_of,
    load, render_plans, report, runtime, set_rates,
};
use crate::cli::{self, ApplyArgs, Output};
use crate::exit::{self, Code};
use crate::{k8s, live, metrics, perms, plan, progress, record, sync, tsdb, units, volume};

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
    /// A dry run: what apply would do, in order (from each target's `would`); and the
    /// Kubernetes steps.
    actions: Vec<String>,
    /// Every target volume, in plan-file order (one for `target:`): its plan, what was done
    /// (also when apply failed part-way) and, in a dry run, what would be done.
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
    /// It failed before it changed anything, on the targets or in the cluster (see `error`).
    not_started: bool,
    /// The copy engine was entered (reports come back from it, unless it panicked).
    #[serde(skip)]
    copy_entered: bool,
    record: Option<std::path::PathBuf>,
    /// The command line that reaches this plan again, for the "Next:" lines
    /// (`promigrate … -f PLAN`, the plan as it was given).
    #[serde(skip)]
    again: String,
}

/// One target volume's part of an apply.
#[derive(Serialize)]
struct TargetOutcome {
    plan: plan::MigrationPlan,
    apply: Option<sync::ApplyReport>,
    /// A dry run: the changes apply's engine would make to this target (recorded, not made;
    /// `[]` when none). Absent when apply ran for real.
    #[serde(skip_serializing_if = "Option::is_none")]
    would: Option<Vec<volume::Op>>,
}

impl ApplyOutput {
    /// Stores the plans and, once apply ran, what it did to each target.
    fn set(&mut self, plans: Vec<plan::MigrationPlan>, reports: Option<Vec<sync::ApplyReport>>) {
        let mut reports = reports.unwrap_or_default().into_iter();
        self.targets = plans
            .into_iter()
            .map(|plan| TargetOutcome {
                plan,
                apply: reports.next(),
                would: None,
            })
            .collect();
    }

    /// Every target's plan and report, in plan-file order.
    fn outcomes(&self) -> Vec<(&plan::MigrationPlan, Option<&sync::ApplyReport>)> {
        self.targets
            .iter()
            .map(|t| (&t.plan, t.apply.as_ref()))
            .collect()
    }
}

/// Runs `apply`: exit 0 when everything asked for was done, 1 when refused or stopped at
/// the deadline; with a run record (not for a dry run), and the metrics pushed when a
/// gateway is set.
pub fn run(a: &ApplyArgs) -> Outcome {
    let started = jiff::Timestamp::now();
    let (deadline, rt, m, mut receivers) = match prepare(a, started) {
        Ok(p) => p,
        Err(e) => return Outcome::bare(Err(e)),
    };
    // Armed after the confirmation prompt (see arm_cancel).
    let cancel = Arc::new(AtomicBool::new(false));
    let mut out = ApplyOutput {
        dry_run: a.dry_run,
        again: super::again(a.common.file(), &a.state_dir()),
        ..Default::default()
    };
    let result = apply_and_record(
        a,
        &m,
        &rt,
        &cancel,
        deadline,
        started,
        &mut out,
        &mut receivers,
    );
    let push = if a.dry_run {
        None
    } else {
        let reports: Vec<&sync::ApplyReport> =
            out.outcomes().into_iter().filter_map(|(_, r)| r).collect();
        let run = metrics::RunMetrics {
            command: "apply",
            copied_bytes: reports.iter().map(|r| r.copied_bytes).sum(),
            copied_files: reports.iter().map(|r| r.copied_files).sum(),
            verify_differences: out.verify.as_ref().map(VerifyOutput::differences),
            ..Default::default()
        };
        Push::of(a.pushgateway.as_deref(), &m, run, started)
    };
    match result {
        Ok(result) => Outcome {
            report: Some(report(out, render_apply)),
            result,
            push,
        },
        Err(e) => Outcome::bare(Err(e)).with_push(push),
    }
}

/// What comes before apply reads anything: the deadline (counted from `started`), the
/// check that it can ask, the runtime, the plan file and the targets' receivers (kept
/// until apply ends).
fn prepare(
    a: &ApplyArgs,
    started: jiff::Timestamp,
) -> anyhow::Result<(
    Option<cli::ResolvedDeadline>,
    tokio::runtime::Runtime,
    plan::Migration,
    crate::remote::Attached,
)> {
    // The deadline counts from now, before anything is read or changed.
    let deadline = a.deadline.map(|d| d.resolve(started)).transpose()?;
    if !a.yes && !a.dry_run && !std::io::stdin().is_terminal() {
        return Err(exit::InvalidInput(
            "apply would write, and stdin is not a terminal to confirm it on: pass --yes (or --dry-run to see what it would do). Nothing was written".into(),
        )
        .into());
    }
    let rt = runtime()?;
    // A claim a pod holds: apply scales the StatefulSet down before its receiver starts,
    // which is before the plan can be shown, so only with --yes.
    let held = match (a.dry_run, a.yes) {
        (true, _) => k8s::receiver::Held::Refuse,
        (false, false) => k8s::receiver::Held::NeedsYes,
        (false, true) => k8s::receiver::Held::Quiesce,
    };
    let (m, receivers) = load(&rt, a.common.file(), !a.dry_run, held)?;
    Ok((deadline, rt, m, receivers))
}

/// Applies, filling in `out`, and writes the run record (not for a dry run). The outer
/// error: the record could not be kept, and there is no report; the inner result is the
/// apply's own, with `out` reporting it.
#[allow(clippy::too_many_arguments)] // the run's parts, each used once
fn apply_and_record(
    a: &ApplyArgs,
    m: &plan::Migration,
    rt: &tokio::runtime::Runtime,
    cancel: &Arc<AtomicBool>,
    deadline: Option<cli::ResolvedDeadline>,
    started: jiff::Timestamp,
    out: &mut ApplyOutput,
    receivers: &mut crate::remote::Attached,
) -> anyhow::Result<anyhow::Result<Code>> {
    let record_dir = if a.dry_run {
        None
    } else {
        Some(record::prepare(&a.state_dir(), &m.name)?)
    };
    let outcome = apply_steps(a, m, rt, cancel, deadline, out, receivers);
    let code = match &outcome {
        Ok(code) => *code,
        Err(e) => {
            out.error = Some(format!("{e:#}"));
            // Nothing changed anywhere: no cluster object (a quiesce that failed half-way
            // has changed some), and the copy either not entered, or entered and stopped
            // before it began on any target (a copy that ended without its reports, a worker
            // that panicked, may have written anything).
            let reports: Vec<&sync::ApplyReport> = out
                .targets
                .iter()
                .filter_map(|t| t.apply.as_ref())
                .collect();
            out.not_started = out.kubernetes_changes.is_empty()
                && (!out.copy_entered || (!reports.is_empty() && !reports.iter().any(|r| r.began)));
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
    Ok(outcome)
}

/// [`apply_steps_until`], and, for a run that stopped before it began to change the targets,
/// the StatefulSets scaled down so that a receiver could mount a claim a pod held scaled back.
fn apply_steps(
    a: &ApplyArgs,
    m: &plan::Migration,
    rt: &tokio::runtime::Runtime,
    cancel: &Arc<AtomicBool>,
    deadline: Option<cli::ResolvedDeadline>,
    out: &mut ApplyOutput,
    receivers: &mut crate::remote::Attached,
) -> anyhow::Result<Code> {
    out.kubernetes_changes.append(&mut receivers.changes);
    let mut writing = false;
    let early = receivers.quiesced.clone();
    let r = apply_steps_until(a, m, rt, cancel, deadline, out, &early, &mut writing);
    if writing || early.is_empty() {
        return r;
    }
    let notes = receivers.give_back(rt);
    out.kubernetes_changes.append(&mut receivers.changes);
    match r {
        Ok(code) => {
            out.kubernetes_note = Some(notes.join("; "));
            Ok(code)
        }
        Err(e) => Err(notes.into_iter().fold(e, |e, n| e.context(n))),
    }
}

/// The steps of apply. `early`: the targets whose StatefulSets were scaled down before
/// their receivers started; `writing` is set once the run begins to change the targets.
#[allow(clippy::too_many_arguments)]
fn apply_steps_until(
    a: &ApplyArgs,
    m: &plan::Migration,
    rt: &tokio::runtime::Runtime,
    cancel: &Arc<AtomicBool>,
    deadline: Option<cli::ResolvedDeadline>,
    out: &mut ApplyOutput,
    early: &[plan::file::KubeTarget],
    writing: &mut bool,
) -> anyhow::Result<Code> {
    let mut plans = build_plans(m, compare_of(a.checksum, a.phase()))?;
    // With the source stopped its binary no longer answers: an earlier apply's answer holds.
    let records = a.state_dir().join(&m.name);
    for p in &mut plans {
        p.source_version = p.source_version.clone().or_recorded(&records);
    }
    // (index of the target, its cluster objects)
    let kube_targets: Vec<(usize, plan::file::KubeTarget)> = m
        .targets
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.kubernetes.clone().map(|k| (i, k)))
        .collect();
    if !kube_targets.is_empty() {
        kube_preflight(rt, m, &mut plans, a.phase());
    }
    for p in &mut plans {
        set_rates(p, a.bwlimit, Some(a.phase()), &records);
    }
    let source = m.src.clone();
    let several = plans.len() > 1;
    // The final phase copies wal/ and chunks_head/: only consistent with the source stopped.
    if a.phase() != sync::Phase::Presync
        && let Some(why) = refusal(&plans[0].source_state, a.source_stopped)
    {
        out.refusal = Some(why);
        out.refused = true;
        out.set(plans, None);
        return Ok(Code::Findings);
    }
    let prefixed = |p: &plan::MigrationPlan, act: String| {
        if several {
            format!("{}: {act}", p.target.display())
        } else {
            act
        }
    };
    let ok = plans.iter().all(|p| p.ok);
    let mut would = Vec::new();
    if ok && a.dry_run {
        // The engine itself, on targets that record instead of writing.
        let opts = sync::ApplyOptions {
            bwlimit: None,
            cancel: &AtomicBool::new(false),
            progress: &progress::Hidden,
            phase: a.phase(),
            deadline: None,
            held: std::sync::Mutex::new(Vec::new()),
            dry_run: true,
            starting: None,
            sent: None,
        };
        let (reports, result) = sync::apply(&plans, &opts);
        result.context("the dry run stopped")?;
        for (p, r) in plans.iter().zip(reports) {
            out.actions.extend(
                describe_ops(&r.would, &p.target, p.owner)
                    .into_iter()
                    .map(|act| prefixed(p, act)),
            );
            would.push(r.would);
        }
    }
    // The Kubernetes steps it takes (or would).
    for p in &plans {
        if let Some(k) = &p.kubernetes {
            out.actions
                .extend(k.actions.iter().map(|act| prefixed(p, act.clone())));
        }
    }
    if !ok || a.dry_run {
        out.refused = !ok;
        out.ok = ok;
        if !ok {
            out.refusal = Some(
                "resolve the blockers above (`targets[].blockers` in JSON); nothing was written"
                    .into(),
            );
        }
        out.set(plans, None);
        for (t, w) in out.targets.iter_mut().zip(would) {
            t.would = Some(w);
        }
        return Ok(if ok { Code::Ok } else { Code::Findings });
    }
    if let Some(d) = deadline {
        let estimate = plans
            .iter()
            .filter_map(|p| match a.phase() {
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
        // Written, not print!: a stdout that is gone (a closed pipe) does not panic the run.
        let _ = write!(
            std::io::stdout(),
            "{}",
            render_plans(&plans.iter().collect::<Vec<_>>())
        );
    }
    if !a.yes && !confirm(&plans)? {
        out.refused = true;
        out.set(plans, None);
        return Ok(Code::Findings);
    }
    arm_cancel(rt, cancel.clone());
    check_cancel(cancel, "apply")?;
    // Again right before the first write: the prompt may have waited a while.
    if a.phase() != sync::Phase::Presync
        && let Some(why) = refusal(&source.probe(), a.source_stopped)
    {
        out.refusal = Some(why);
        out.refused = true;
        out.set(plans, None);
        return Ok(Code::Findings);
    }
    let phase = a.phase();
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
    *writing = true;
    // From here a StatefulSet scaled down for its receiver is apply's own to scale back
    // (after the verify), as any other it quiesces.
    k8s::receiver::forget_early();
    let same = |x: &plan::file::KubeTarget, y: &plan::file::KubeTarget| {
        (&x.namespace, &x.persistent_volume_claim) == (&y.namespace, &y.persistent_volume_claim)
    };
    // Those scaled down for their receivers already are in the notes and scaled back as
    // the others are.
    let mut quiesced: Vec<plan::file::KubeTarget> = early.to_vec();
    for (i, c, k) in &clusters {
        if plans[*i].phase_writes_nothing(phase) || early.iter().any(|e| same(e, k)) {
            continue;
        }
        let r = rt.block_on(k8s::quiesce(c, k, &mut out.kubernetes_changes));
        if let Err(e) = r {
            // What this target was left in is what its changes so far say.
            let mut notes = vec![left_after_failed_quiesce(k, &out.kubernetes_changes)];
            if !quiesced.is_empty() {
                notes.push(left_scaled_down_all(&quiesced));
            }
            return Err(e.context(notes.join("; ")));
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
    // As for the bytes: what this phase copies (a presync logs its blocks' files, not the
    // plan's total).
    let files = plans
        .iter()
        .map(|p| match phase {
            sync::Phase::Presync => p.phases.presync.files,
            _ => p.stats.copy_files,
        })
        .max()
        .unwrap_or(0);
    // The limit of this phase: the presync's, or the final phase's (the downtime), said
    // before the copy so that a throttled downtime is not a surprise.
    let (limit, limit_from) = limit_of(&plans[0], a.bwlimit, phase);
    tracing::info!(
        "apply: {} phase, bandwidth limit {}",
        phase.as_str(),
        match (limit, limit_from) {
            (Some(r), from) => format!("{}/s ({from})", units::bytes(r)),
            (None, "--bwlimit") => "none (--bwlimit 0)".to_string(),
            (None, from) if phase == sync::Phase::Presync => format!("none ({from} is not set)"),
            (None, from) => format!("none ({from} is not set: the downtime is not throttled)"),
        }
    );
    let worker_plans = plans.clone();
    let worker_cancel = cancel.clone();
    // The verify that gates the scale-up follows the final phase: the source bytes are
    // hashed as they are copied, so that it reads the source's copied files once, not twice;
    // the block files' hashes are kept beside the run records, for the final phase after a
    // presync (blocks are never rewritten).
    let sent = (!clusters.is_empty() && a.verify_level() != crate::verify::VerifyLevel::Meta)
        .then(|| Arc::new(crate::hash::Sent::default()));
    let kept_dir = a.state_dir().join(&m.name);
    let source_id = m.src.describe();
    // Taken in every phase: a presync rewrites the file with them and its own.
    if let Some(sent) = &sent {
        match sent.take_kept(&kept_dir, &source_id) {
            Ok(n) => tracing::debug!(files = n, "source hashes kept by earlier applies"),
            Err(why) => tracing::warn!(
                "{why}: the verify after the final phase reads again the source's blocks that earlier applies copied (this run writes the file anew)"
            ),
        }
    }
    let worker_sent = sent.clone();
    out.copy_entered = true;
    let (reports, result) = rt
        .block_on(async move { tokio::task::spawn_blocking(move || {
            // Logged once every target is locked and ready (not for a run that cannot
            // start), before the progress bar is drawn, so the two do not tear each other.
            let starting = || {
                for p in &worker_plans {
                    tracing::info!(files, bytes = total, target = %p.target.display(), "apply: copying");
                }
            };
            let progress = progress::for_stderr_from_start("apply", total);
            let opts = sync::ApplyOptions {
                bwlimit: limit,
                cancel: &worker_cancel,
                progress: progress.as_ref(),
                phase,
                deadline,
                held: std::sync::Mutex::new(held),
                dry_run: false,
                starting: Some(&starting),
                sent: worker_sent.as_deref(),
            };
            sync::apply(&worker_plans, &opts)
        }).await })
        .context("the copy workers stopped unexpectedly")?;
    if let Some(sent) = &sent {
        // What was copied whole is kept, whatever became of the run.
        let still = |dir: &str| plans.iter().any(|p| p.blocks.iter().any(|b| b.ulid == dir));
        match sent.keep(&kept_dir, &source_id, still) {
            Ok(n) => tracing::debug!(files = n, "source hashes kept for the next apply"),
            Err(e) => {
                tracing::warn!(
                    "{e:#}: the hashes this run took of the source's blocks are not kept (the next final phase's verify reads those blocks again)"
                )
            }
        }
    }
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
        let verified = run_verify(
            rt,
            m,
            a.verify_level(),
            cancel.clone(),
            &a.state_dir().join(&m.name),
            sent,
        );
        kube_finish(rt, &pairs, note, verified, out)?;
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

/// What a target's objects were left in when its quiesce failed, from the changes made.
fn left_after_failed_quiesce(k: &plan::file::KubeTarget, changes: &[k8s::Change]) -> String {
    let changed = |object: String, field: &str| {
        changes
            .iter()
            .any(|c| c.object == object && c.field == field)
    };
    let scaled = k
        .stateful_set
        .as_ref()
        .is_some_and(|s| changed(format!("statefulset/{}/{s}", k.namespace), "spec.replicas"));
    let paused = k
        .prometheus
        .as_ref()
        .is_some_and(|p| changed(format!("prometheus/{}/{p}", k.namespace), "spec.paused"));
    match (scaled, paused, &k.prometheus) {
        (true, _, _) => left_scaled_down(k),
        (false, true, Some(p)) => format!(
            "prometheus/{}/{p} is left paused (spec.paused: true; the value it had is in its annotation {}) and its StatefulSet was not scaled: rerun apply to continue, or set spec.paused back and remove the annotation by hand",
            k.namespace,
            k8s::server::PAUSED_ANNOTATION
        ),
        _ => format!(
            "nothing was changed by this run for persistentvolume/{} (see kubernetes_changes)",
            k.persistent_volume
        ),
    }
}

/// What to tell the runbook owner when a step fails after the scale-down.
fn left_scaled_down(k: &plan::file::KubeTarget) -> String {
    let paused = k.prometheus.as_ref().map_or(String::new(), |p| {
        format!(
            " and prometheus/{}/{p} is left paused (spec.paused: true; the value it had is in its annotation {}; unpause it only after scaling the StatefulSet back, or the operator does it)",
            k.namespace,
            k8s::server::PAUSED_ANNOTATION
        )
    });
    match &k.stateful_set {
        Some(s) => format!(
            "statefulset/{}/{s} is left at 0 replicas (the replicas it had are in its annotation {}){paused}: the runbook owner decides; rerun apply to continue, or restore it by hand",
            k.namespace,
            k8s::REPLICAS_ANNOTATION
        ),
        None => format!(
            "the Kubernetes steps for persistentvolume/{} stopped here",
            k.persistent_volume
        ),
    }
}

/// After the final phase, with the verify of every target (`verified`): only if all match,
/// recover Released PVs and scale the StatefulSets back (waiting for their claims to bind).
fn kube_finish(
    rt: &tokio::runtime::Runtime,
    clusters: &[(k8s::Cluster, plan::file::KubeTarget)],
    note: Option<String>,
    verified: anyhow::Result<VerifyOutput>,
    out: &mut ApplyOutput,
) -> anyhow::Result<()> {
    let left = || note.clone().unwrap_or_default();
    let verified = verified.map_err(|e| e.context(left()))?;
    let ok = verified.ok();
    out.verify = Some(verified);
    if !ok {
        return Err(anyhow::Error::new(exit::Finding(format!(
            "the verify after the copy did not pass (see `verify` in the report: differences, or blockers in the target Prometheus); no PV was recovered and no StatefulSet scaled back{}",
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
                    "restoring the objects of persistentvolume/{} (see kubernetes_changes for what was already done{})",
                    k.persistent_volume,
                    k.prometheus.as_ref().map_or(String::new(), |p| format!(
                        "; unless it lists spec.paused set back, prometheus/{}/{p} is still paused, with the value it had in its annotation {}",
                        k.namespace,
                        k8s::server::PAUSED_ANNOTATION
                    ))
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
    if out.not_started {
        // Failed before any target was changed: said as such, not as a copy of 0 B.
        s.push_str(&format!(
            "Not started: {}. Nothing was written to the target.\n",
            out.error.as_deref().unwrap_or("?")
        ));
    }
    if outcomes.is_empty() && !out.not_started {
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
        let Some(r) = r.filter(|_| !out.not_started) else {
            continue;
        };
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
        // Bytes of files left unfinished are written too (the bar counted them): said, so
        // that the two agree.
        // What the bar counted beyond the files finished: files left unfinished (written,
        // then removed), and, on a run that stops short (its bar stays), staged files kept
        // from an earlier run: said, so that the two agree.
        let kept = r.resumed_bytes > 0 && (r.unfinished_bytes > 0 || !r.ok);
        let mut unfinished = String::new();
        if r.unfinished_bytes > 0 {
            unfinished.push_str(&format!(
                " and {} of unfinished files (removed; {}): {} written",
                units::bytes(r.unfinished_bytes),
                if r.ok {
                    "copied again after a retry"
                } else {
                    "the rerun copies them again"
                },
                units::bytes(r.copied_bytes + r.unfinished_bytes),
            ));
        }
        if kept {
            unfinished.push_str(&format!(
                "{} {} of staged files kept from an earlier run ({} in all)",
                if r.unfinished_bytes > 0 {
                    " and"
                } else {
                    ", with"
                },
                units::bytes(r.resumed_bytes),
                units::bytes(r.copied_bytes + r.unfinished_bytes + r.resumed_bytes)
            ));
        }
        unfinished.push(',');
        s.push_str(&format!(
            "\n{verb}{to}: {} in {} copied{unfinished} {} published, {}, {} in {} ({}/s)\n",
            units::bytes(r.copied_bytes),
            units::count(r.copied_files, "file"),
            units::count(r.blocks_published, "block"),
            units::count(r.resumed_files, "resumed file"),
            units::count(r.ownership_fixed, "owner/mode fix"),
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
                "Quarantined {} in {}\n",
                units::count(r.quarantined.len() as u64, "entry"),
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
        s.push_str(&format!(
            "Next: stop the source Prometheus, then run: {} --phase final\n",
            out.again.replacen("{}", "apply", 1)
        ));
    } else if out.ok && !out.dry_run && out.verify.is_some() {
        // The verify above gated the scale-up, and the new server now writes its own WAL:
        // a verify from here on reports that as differences (docs/runbook.md, step 5).
        s.push_str(&cutover_line(out, &outcomes));
    } else if out.ok && !out.dry_run {
        s.push_str(&format!(
            "Next: {} --level deep (its exit code gates the cutover).\n",
            out.again.replacen("{}", "verify", 1)
        ));
    }
    s
}

/// The "Next: cut over" line after a gated apply: which StatefulSets run again on the copy
/// (scaled back by this run), and which the operator must start (every target's, by name,
/// when there are several).
fn cutover_line(
    out: &ApplyOutput,
    outcomes: &[(&plan::MigrationPlan, Option<&sync::ApplyReport>)],
) -> String {
    // Each target's StatefulSet (derived from the operator's resource where the plan names
    // that one), once.
    let mut named: Vec<String> = Vec::new();
    for (p, _) in outcomes {
        let Some(k) = &p.kubernetes else { continue };
        if let Some(o) = k
            .stateful_set_name
            .as_ref()
            .map(|n| format!("statefulset/{}/{n}", k.namespace))
            && !named.contains(&o)
        {
            named.push(o);
        }
    }
    cutover_text(&out.kubernetes_changes, &named)
}

/// [`cutover_line`] from the run's cluster changes and the targets' StatefulSets.
fn cutover_text(changes: &[k8s::Change], named: &[String]) -> String {
    let back: Vec<&str> = changes
        .iter()
        .filter(|c| c.field == "spec.replicas" && c.before == "0" && c.after != "0")
        .map(|c| c.object.as_str())
        .collect();
    let left: Vec<&str> = named
        .iter()
        .map(String::as_str)
        .filter(|o| !back.contains(o))
        .collect();
    let after = "a `promigrate verify` from now on reports the new server's own wal/ and chunks_head/ as different.";
    match (back.as_slice(), left.as_slice()) {
        // One StatefulSet, scaled back: as it always read.
        ([_], []) if named.len() <= 1 => format!(
            "Next: cut over. The verify above was the go/no-go and the StatefulSet runs again on the copy; {after}\n"
        ),
        ([], _) => "Next: cut over. The verify above was the go/no-go; promigrate scaled nothing back (nothing was scaled down by it, e.g. a StatefulSet scaled to 0 by hand): start the target Prometheus on the copy yourself. A `promigrate verify` once it runs reports its own wal/ and chunks_head/ as different.\n".to_string(),
        (back, []) => format!(
            "Next: cut over. The verify above was the go/no-go and {} run again on the copies; {after}\n",
            back.join(", ")
        ),
        (back, left) => format!(
            "Next: cut over. The verify above was the go/no-go; {} {}, but promigrate did not scale {} back (it did not scale {} down): if {} not running, start {} on the copy yourself. Once each runs, {after}\n",
            back.join(", "),
            crate::units::verb_for(
                back.len() as u64,
                "runs again on its copy",
                "run again on their copies"
            ),
            left.join(", "),
            crate::units::verb_for(left.len() as u64, "it", "them"),
            crate::units::verb_for(left.len() as u64, "it is", "they are"),
            crate::units::verb_for(left.len() as u64, "it", "them"),
        ),
    }
}

/// A dry run's recorded changes to one target as lines for people: a staged block (its
/// directories, files and rename into place) is one line, and so is a file written under a
/// temp name and renamed, or an entry moved to the quarantine. Paths are shown below the
/// target's TSDB directory.
fn describe_ops(ops: &[volume::Op], root: &Path, owner: perms::Owner) -> Vec<String> {
    use volume::Op;
    let short = |p: &str| -> String {
        match Path::new(p).strip_prefix(root) {
            Ok(r) if r.as_os_str().is_empty() => root.display().to_string(),
            Ok(r) => r.display().to_string(),
            Err(_) => p.to_string(),
        }
    };
    let staging = |p: &str| short(p).starts_with(tsdb::STAGING_DIR);
    let quarantine = |p: &str| short(p).starts_with(tsdb::QUARANTINE_DIR);
    // What was written under each staged directory, or temp file: (files, bytes).
    let mut staged: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    let mut lines = Vec::new();
    for op in ops {
        match op {
            Op::Mkdir { path } if staging(path) || quarantine(path) => {}
            Op::Mkdir { path } => lines.push(format!(
                "create directory {} (owner {}:{})",
                short(path),
                owner.uid,
                owner.gid
            )),
            Op::Write { path, bytes } => {
                let p = short(path);
                let key = if staging(path) {
                    p.split('/').take(2).collect::<Vec<_>>().join("/")
                } else {
                    p
                };
                let e = staged.entry(key).or_default();
                e.0 += 1;
                e.1 += bytes;
            }
            Op::Rename { from, to } if quarantine(to) => {
                let q = short(to);
                let dir = q.split('/').take(2).collect::<Vec<_>>().join("/");
                lines.push(format!("quarantine {} to {dir}/", short(from)));
            }
            Op::Rename { from, to } => {
                let (files, bytes) = staged.remove(&short(from)).unwrap_or_default();
                let what = if staging(from) && tsdb::staged_as_a_whole(&short(to)) {
                    "copy directory"
                } else if staging(from) {
                    "copy block"
                } else {
                    "copy"
                };
                let to = short(to);
                let block = to
                    .split_once('/')
                    .filter(|(dir, _)| dir.parse::<ulid::Ulid>().is_ok());
                lines.push(match block {
                    // Staged whole by an earlier, interrupted run: kept, and put in place.
                    _ if staging(from) && files == 0 => format!(
                        "{what} {to} (staged in {}/ by an earlier run: kept, renamed into place)",
                        short(from)
                    ),
                    _ if staging(from) => format!(
                        "{what} {to} ({}, {}: staged in {}/, then renamed into place)",
                        units::count(files, "file"),
                        units::bytes(bytes),
                        short(from)
                    ),
                    // A file of a block that is there already (one --checksum found differing).
                    Some((ulid, file)) => format!(
                        "update block {ulid} (1 file, {}: {file} through {})",
                        units::bytes(bytes),
                        short(from)
                    ),
                    None => format!(
                        "{what} {to} ({}: through {})",
                        units::bytes(bytes),
                        short(from)
                    ),
                });
            }
            Op::Remove { path } if short(path) == tsdb::LOCK_FILE => lines.push(format!(
                "remove {} (the lock file of an earlier release; the lock is a flock on the directory now)",
                short(path)
            )),
            // This run's staging of a block a presync leaves for the final phase.
            Op::RemoveTree { path } if staged.remove(&short(path)).is_some() => {
                lines.push(format!(
                    "leave {} for the final phase (a file of it is gone from the source); its staging is removed",
                    short(path).rsplit('/').next().unwrap_or_default()
                ))
            }
            Op::Remove { path } => lines.push(format!(
                "remove {} (left by an interrupted run)",
                short(path)
            )),
            Op::Rmdir { path } => lines.push(format!("remove the empty {}", short(path))),
            Op::RemoveTree { path } => lines.push(format!(
                "remove {} (staged by an interrupted run, no longer to be copied)",
                short(path)
            )),
            Op::Chown { path } => lines.push(format!(
                "give {} owner {}:{} and a group-writable mode",
                short(path),
                owner.uid,
                owner.gid
            )),
        }
    }
    // Written and never renamed: a presync that leaves a block for the final phase does not.
    for (p, (files, bytes)) in staged {
        lines.push(format!(
            "write {p} ({}, {})",
            units::count(files, "file"),
            units::bytes(bytes)
        ));
    }
    lines
}

fn confirm(plans: &[plan::MigrationPlan]) -> anyhow::Result<bool> {
    let to: Vec<String> = plans
        .iter()
        .map(|p| p.target.display().to_string())
        .collect();
    let _ = write!(
        std::io::stderr(),
        "\nApply this plan to {}? [y/N] ",
        to.join(" and ")
    );
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the answer from stdin")?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaled(object: &str) -> k8s::Change {
        k8s::Change {
            object: object.into(),
            field: "spec.replicas".into(),
            before: "0".into(),
            after: "1".into(),
        }
    }

    #[test]
    fn the_cutover_line_names_each_statefulset_when_there_are_several() {
        let (a, b) = ("statefulset/m/a".to_string(), "statefulset/m/b".to_string());
        let one = cutover_text(&[scaled(&a)], std::slice::from_ref(&a));
        assert!(
            one.contains("the StatefulSet runs again on the copy"),
            "{one}"
        );
        let both = cutover_text(&[scaled(&a), scaled(&b)], &[a.clone(), b.clone()]);
        assert!(
            both.contains("statefulset/m/a, statefulset/m/b run again on the copies"),
            "{both}"
        );
        let half = cutover_text(&[scaled(&a)], &[a.clone(), b.clone()]);
        assert!(
            half.contains("statefulset/m/a runs again on its copy")
                && half.contains("did not scale statefulset/m/b back")
                && half.contains("start it on the copy yourself"),
            "{half}"
        );
        let none = cutover_text(&[], &[a, b]);
        assert!(none.contains("promigrate scaled nothing back"), "{none}");
    }
}
