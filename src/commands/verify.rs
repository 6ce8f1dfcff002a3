//! `promigrate verify`: prove every target equal to the source, re-check the target
//! Prometheus servers in their clusters, and keep a run record. Apply runs the same verify
//! before its Kubernetes steps.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use serde::Serialize;

use super::{
    Outcome, Push, Report, cancel_on_signal, check_cancel, inspect_target, load, report, runtime,
    server_findings,
};
use crate::cli::{VerifyArgs, VerifyLevel};
use crate::exit::{self, Code};
use crate::plan::Migration;
use crate::verify::VerifyReport;
use crate::{metrics, progress, record};

/// What `verify` reports: every target's report, in plan-file order (one for `target:`).
#[derive(Serialize)]
pub(super) struct VerifyOutput {
    ok: bool,
    targets: Vec<VerifyReport>,
}

impl From<Vec<VerifyReport>> for VerifyOutput {
    fn from(reports: Vec<VerifyReport>) -> Self {
        VerifyOutput {
            ok: reports.iter().all(|r| r.ok),
            targets: reports,
        }
    }
}

impl VerifyOutput {
    /// Differences over all targets.
    pub(super) fn differences(&self) -> u64 {
        self.targets
            .iter()
            .map(|r| r.differences.len() as u64)
            .sum()
    }

    pub(super) fn ok(&self) -> bool {
        self.ok
    }

    pub(super) fn render_text(&self) -> String {
        let targets = &self.targets;
        let mut s = super::numbered(targets, |_| String::new(), VerifyReport::render_text);
        if targets.len() == 1 {
            return s;
        }
        let failed = targets.iter().filter(|r| !r.ok).count();
        s.push_str(&if self.ok {
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

/// Runs `verify`: exit 0 when every target matches, 1 on differences; with a run record,
/// and the metrics pushed when a gateway is set.
pub fn run(a: &VerifyArgs) -> Outcome {
    let started = jiff::Timestamp::now();
    let loaded = runtime().and_then(|rt| {
        // Armed after the receiver pods started: until then a Ctrl-C deletes them and ends
        // the process (start does not look at the flag; see end_on_signal).
        let (m, receivers) = load(
            &rt,
            a.common.file(),
            false,
            crate::k8s::receiver::Held::Refuse,
        )?;
        let cancel = cancel_on_signal(&rt);
        Ok((rt, cancel, m, receivers))
    });
    let (rt, cancel, m, _receivers) = match loaded {
        Ok(l) => l,
        Err(e) => return Outcome::bare(Err(e)),
    };
    let mut differences = None;
    let result = verify_and_record(a, &m, &rt, cancel, started, &mut differences);
    let run = metrics::RunMetrics {
        command: "verify",
        verify_differences: differences,
        ..Default::default()
    };
    Outcome::of(result).with_push(Push::of(a.pushgateway.as_deref(), &m, run, started))
}

/// Verifies every target of the migration on the blocking pool (the source hashed once, or
/// not at all for the files whose hashes the apply before it took as it copied them:
/// `sent`).
pub(super) fn run_verify(
    rt: &tokio::runtime::Runtime,
    m: &Migration,
    level: VerifyLevel,
    cancel: Arc<AtomicBool>,
    records: &std::path::Path,
    sent: Option<Arc<crate::hash::Sent>>,
) -> anyhow::Result<VerifyOutput> {
    let mm = m.clone();
    let mut reports = rt
        .block_on(async move {
            tokio::task::spawn_blocking(move || {
                let progress_for = |total| progress::for_stderr("verify", total);
                let reports =
                    crate::verify::run(&mm, level, &progress_for, &cancel, sent.as_deref())?;
                check_cancel(&cancel, "verify")?;
                Ok::<_, anyhow::Error>(reports)
            })
            .await
        })
        .context("the verify workers stopped unexpectedly")??;
    if m.targets.iter().any(|t| t.kubernetes.is_some()) {
        recheck_servers(rt, m, &mut reports, records);
    }
    Ok(VerifyOutput::from(reports))
}

/// The cross-checks of the target Prometheus servers again (owner, subPath, retention,
/// GitOps): a change made in the cluster since `plan` is caught before the go.
fn recheck_servers(
    rt: &tokio::runtime::Runtime,
    m: &Migration,
    reports: &mut [VerifyReport],
    records: &std::path::Path,
) {
    for (t, r) in m.targets.iter().zip(reports.iter_mut()) {
        let Some(k) = &t.kubernetes else { continue };
        // A verify that compared nothing (an apply held the target) is not OK already.
        let Some(mut p) = r.plan.take() else { continue };
        // Verify runs with the source stopped: an earlier apply's answer holds.
        p.source_version = p.source_version.clone().or_recorded(records);
        let p = &*p;
        match inspect_target(rt, k).map(|state| server_findings(t, p, &state)) {
            Ok(Some(f)) => {
                r.cluster_blockers.extend(f.blockers);
                r.cluster_warnings.extend(f.warnings);
            }
            Ok(None) if k.stateful_set.is_none() && k.prometheus.is_none() => {}
            Ok(None) => r.cluster_blockers.push(format!(
                "the target's {} no longer exists in namespace {}",
                k.prometheus.as_ref().map_or_else(
                    || format!("statefulset {}", k.stateful_set.as_deref().unwrap_or("?")),
                    |p| format!("Prometheus resource {p}")
                ),
                k.namespace
            )),
            Err(e) => r.cluster_blockers.push(format!(
                "cannot read the target Prometheus's settings from the cluster ({e:#}): the owner, subPath and retention are not re-checked"
            )),
        }
        r.ok = r.ok && r.cluster_blockers.is_empty();
    }
}

/// Verifies, writes the run record (whatever the verify found, or its error), and returns
/// the report with the record's path; `differences` is set once the verify has run.
fn verify_and_record(
    a: &VerifyArgs,
    m: &Migration,
    rt: &tokio::runtime::Runtime,
    cancel: Arc<AtomicBool>,
    started: jiff::Timestamp,
    differences: &mut Option<u64>,
) -> anyhow::Result<(Box<dyn Report>, Code)> {
    let record_dir = record::prepare(&a.state_dir(), &m.name)?;
    let result = run_verify(rt, m, a.level(), cancel, &record_dir, None);
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
    let text =
        move |r: &VerifyOutput| format!("{}Run record: {}\n", r.render_text(), path.display());
    Ok((report(result?, text), code))
}
