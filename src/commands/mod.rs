//! The commands: each takes its parsed arguments and returns an [`Outcome`] (its report and
//! its result) without printing it; [`finish`] prints it once, then pushes the run's
//! metrics. Shared here: the async runtime and Ctrl-C handling, loading the plan file,
//! building plans and the Kubernetes preflight.
//!
//! `crate::run` dispatches to [`plan`], [`apply`] (which gates its Kubernetes steps on
//! [`verify`]), [`verify`], [`inspect`] and [`generate`] (completions, man page, schema).

pub mod apply;
pub mod generate;
pub mod inspect;
pub mod plan;
pub mod receive;
pub mod verify;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use serde::Serialize;

use crate::cli::Output;
use crate::exit::{self, Code};
use crate::plan::file::{KubeTarget, TargetSpec};
use crate::plan::{Compare, Migration, MigrationPlan};
use crate::{k8s, metrics, progress, sync};

/// A command's report: JSON serialised from its data, or text rendered from the same data.
pub trait Report {
    /// Writes the report as `output` asks (pretty JSON and a newline, or the text); a JSON
    /// report carries how the command `ended`.
    fn write(&self, output: Output, ended: &Ended, out: &mut dyn Write) -> std::io::Result<()>;
}

/// How a command ended, for the keys every JSON report has: `ok` (the report's own),
/// `exit_code`, `error` (`null` unless it failed) and `record` (the run record's path, or
/// `null` for a command that keeps none).
pub struct Ended {
    pub exit_code: u8,
    pub error: Option<String>,
    pub record: Option<std::path::PathBuf>,
}

/// A value and how it reads as text.
struct Rendered<T, F> {
    value: T,
    text: F,
}

impl<T: Serialize, F: Fn(&T) -> String> Report for Rendered<T, F> {
    fn write(&self, output: Output, ended: &Ended, out: &mut dyn Write) -> std::io::Result<()> {
        match output {
            Output::Json => {
                let mut v = serde_json::to_value(&self.value).map_err(std::io::Error::from)?;
                if let Some(o) = v.as_object_mut() {
                    o.insert("exit_code".into(), ended.exit_code.into());
                    if o.get("error").is_none_or(|e| e.is_null()) {
                        o.insert("error".into(), ended.error.clone().into());
                    }
                    if o.get("record").is_none_or(|r| r.is_null()) {
                        let record = ended.record.as_ref().map(|p| p.display().to_string());
                        o.insert("record".into(), record.into());
                    }
                }
                serde_json::to_writer_pretty(&mut *out, &v)
                    .map_err(std::io::Error::from)
                    .and_then(|_| writeln!(out))
            }
            Output::Text => write!(out, "{}", (self.text)(&self.value)),
        }
    }
}

/// The report of `value`, read as text through `text`.
pub fn report<T, F>(value: T, text: F) -> Box<dyn Report>
where
    T: Serialize + 'static,
    F: Fn(&T) -> String + 'static,
{
    Box::new(Rendered { value, text })
}

/// How a command ended: what to print, its result, and the metrics to push.
pub struct Outcome {
    /// The report; `None` when the command failed before it had one (the error is then
    /// the report) or writes its own output (completions, man, schema).
    pub report: Option<Box<dyn Report>>,
    /// The exit code, or the error for `main` to print and classify.
    pub result: anyhow::Result<Code>,
    /// Pushed last, with the final result.
    pub push: Option<Push>,
}

impl Outcome {
    /// A report and its exit code, or the error that came before any report.
    pub fn of(r: anyhow::Result<(Box<dyn Report>, Code)>) -> Self {
        match r {
            Ok((report, code)) => Outcome {
                report: Some(report),
                result: Ok(code),
                push: None,
            },
            Err(e) => Outcome::bare(Err(e)),
        }
    }

    /// A result with no report.
    pub fn bare(result: anyhow::Result<Code>) -> Self {
        Outcome {
            report: None,
            result,
            push: None,
        }
    }

    /// The same, with the metrics to push at the end.
    pub fn with_push(self, push: Option<Push>) -> Self {
        Outcome { push, ..self }
    }
}

/// Prints the outcome once and pushes its metrics; returns the final result (a report that
/// could not be written is a failure). With `--output json`, a command that ends in an
/// error before its report prints a JSON document with `"ok": false` instead.
pub fn finish(outcome: Outcome, output: Output) -> anyhow::Result<Code> {
    let Outcome {
        report,
        mut result,
        push,
    } = outcome;
    let reported = report.is_some();
    let ended = Ended {
        exit_code: match &result {
            Ok(c) => *c as u8,
            Err(e) => exit::classify(e) as u8,
        },
        error: result.as_ref().err().map(|e| format!("{e:#}")),
        record: crate::record::last_written(),
    };
    if let Some(r) = report
        && let Err(e) = print(&*r, output, &ended)
    {
        result = Err(e);
    }
    // Last, from the final outcome.
    if let Some(p) = push {
        p.send(&result);
    }
    if let (Err(e), Output::Json, false) = (&result, output, reported) {
        let record = crate::record::last_written().map(|p| p.display().to_string());
        let doc = serde_json::json!({"ok": false, "error": format!("{e:#}"), "exit_code": exit::classify(e) as u8, "record": record});
        // Written, not println!: with stdout gone the exit code still says what happened.
        let _ = writeln!(std::io::stdout(), "{doc}");
    }
    if let (Err(_), Output::Text, false, Some(rec)) =
        (&result, output, reported, crate::record::last_written())
    {
        // Through the logger, so that it is a JSON line with --log-format json; at warn, so
        // that RUST_LOG=warn still says where the failed run's record is.
        tracing::warn!("the run failed; its record: {}", rec.display());
    }
    result
}

fn print(report: &dyn Report, output: Output, ended: &Ended) -> anyhow::Result<()> {
    // Buffered: stdout is line-buffered, and a JSON report has thousands of lines.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let r = report
        .write(output, ended, &mut out)
        .and_then(|_| out.flush());
    match r {
        // A closed pipe (`| head`) is not a failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("cannot write the report to stdout"),
    }
}

/// The metrics of an `apply` or `verify`, to push once its outcome is final.
pub struct Push {
    gateway: metrics::Pushgateway,
    migration: String,
    started: jiff::Timestamp,
    /// The command's own figures; the outcome, duration and end are filled in by `send`.
    metrics: metrics::RunMetrics,
}

impl Push {
    /// The push of `metrics` for a run of `m` that started at `started`, if there is a
    /// gateway: `--pushgateway URL` replaces `report.pushgateway.url` and keeps the plan's
    /// CA and credentials.
    pub fn of(
        cli_url: Option<&str>,
        m: &Migration,
        metrics: metrics::RunMetrics,
        started: jiff::Timestamp,
    ) -> Option<Push> {
        let gateway = match (cli_url, &m.pushgateway) {
            (Some(url), Some(gw)) => Some(metrics::Pushgateway {
                url: url.to_string(),
                ..gw.clone()
            }),
            (Some(url), None) => Some(metrics::Pushgateway::new(url)),
            (None, gw) => gw.clone(),
        }?;
        Some(Push {
            gateway,
            migration: m.name.clone(),
            started,
            metrics,
        })
    }

    fn send(self, result: &anyhow::Result<Code>) {
        let code = match result {
            Ok(c) => *c,
            Err(e) => exit::classify(e),
        };
        let run = metrics::RunMetrics {
            success: code == Code::Ok,
            exit_code: code as u8,
            duration_seconds: (jiff::Timestamp::now() - self.started)
                .total(jiff::Unit::Second)
                .unwrap_or(0.0),
            finished_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            ..self.metrics
        };
        metrics::push_or_warn(&self.gateway, &self.migration, &run);
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Sets the flag on Ctrl-C or SIGTERM, so workers stop at the next chunk and the run ends
/// resumable.
fn cancel_on_signal(runtime: &tokio::runtime::Runtime) -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    arm_cancel(runtime, flag.clone());
    flag
}

/// What Ctrl-C and SIGTERM do: end the process at once ([`end_on_signal`]), until
/// [`arm_cancel`] makes them stop the command at its next chunk. One state, changed by
/// compare-and-swap, so that the two never both act on one signal.
static SIGNALS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(AT_ONCE);
const AT_ONCE: u8 = 0;
/// A signal came before [`arm_cancel`]: the process is deleting its pods and ending.
const ENDING: u8 = 1;
const COOPERATIVE: u8 = 2;

/// From now on, Ctrl-C and SIGTERM set `flag` instead of ending the process. Until this is
/// called the process ends at once (apply arms it only once it is past its prompt, so
/// Ctrl-C at `[y/N]` ends it with nothing written): by the default action, or, once
/// [`end_on_signal`] ran, after removing the receiver pods.
fn arm_cancel(runtime: &tokio::runtime::Runtime, flag: Arc<AtomicBool>) {
    use tokio::signal::unix::{SignalKind, signal};
    if SIGNALS.compare_exchange(AT_ONCE, COOPERATIVE, Ordering::SeqCst, Ordering::SeqCst)
        == Err(ENDING)
    {
        // end_on_signal is deleting the pods and ends the process: nothing more may start
        // (no quiesce, no write).
        loop {
            std::thread::park();
        }
    }
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
        // The flag first: nothing the log line does can keep the workers from stopping.
        f.store(true, Ordering::Relaxed);
        tracing::warn!(
            "signal received: stopping at the next chunk; rerun to resume (Ctrl-C again ends at once)"
        );
        // A second one: the chunk does not end (a stalled stream, a receiver that does not
        // answer). End now, as a killed run would, but with the receiver pods deleted.
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        tracing::warn!(
            "second signal: ending at once, without the run record; a rerun continues where this run stopped (a StatefulSet that apply scaled down stays at 0 until then). Removing the receiver pods first (Ctrl-C again ends without waiting)"
        );
        clean_up_and_exit(&mut int, &mut term).await;
    });
}

/// Deletes the receiver pods this process created and scales back what it scaled down for
/// them before writing (at most 60 s; another signal ends the wait), then ends the process
/// with exit 3.
async fn clean_up_and_exit(
    int: &mut tokio::signal::unix::Signal,
    term: &mut tokio::signal::unix::Signal,
) {
    let cleaned = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        crate::k8s::receiver::delete_created().await;
        crate::k8s::receiver::give_back_early().await;
    });
    tokio::select! {
        r = cleaned => if r.is_err() {
            tracing::warn!("the receiver pods are not gone after 60 s: ending anyway; the next run removes them");
        },
        _ = int.recv() => {},
        _ = term.recv() => {},
    }
    std::process::exit(Code::Failure as i32);
}

/// For a run that starts receiver pods: until [`arm_cancel`], Ctrl-C and SIGTERM end the
/// process (exit 3) only after deleting the receiver pods it created (a plan, apply up to
/// its prompt: nothing was written).
fn end_on_signal(runtime: &tokio::runtime::Runtime) {
    use tokio::signal::unix::{SignalKind, signal};
    let _in_runtime = runtime.enter();
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!(
            "cannot install the signal handlers: Ctrl-C ends the process at once and leaves its receiver pods (the next run removes them)"
        );
        return;
    };
    runtime.spawn(async move {
        loop {
            tokio::select! {
                _ = int.recv() => {},
                _ = term.recv() => {},
            }
            let ending =
                SIGNALS.compare_exchange(AT_ONCE, ENDING, Ordering::SeqCst, Ordering::SeqCst);
            if ending.is_err() {
                // arm_cancel's task stops the run at its next chunk.
                continue;
            }
            tracing::warn!(
                "interrupted before anything was written: removing the receiver pods of this run and scaling back a StatefulSet scaled down for one, then ending (Ctrl-C again ends at once and leaves them: the next run removes the pods)"
            );
            clean_up_and_exit(&mut int, &mut term).await;
        }
    });
}

/// Fails with "interrupted" if the flag is set (checked between phases).
fn check_cancel(cancel: &AtomicBool, what: &str) -> anyhow::Result<()> {
    if cancel.load(Ordering::Relaxed) {
        anyhow::bail!("{what} was interrupted before it finished; nothing is lost, rerun it");
    }
    Ok(())
}

/// Reads and resolves the plan file; what a Kubernetes target leaves out (the names the
/// operator gives, the pod's owner and subPath) is read from its cluster.
fn load(
    rt: &tokio::runtime::Runtime,
    file: &std::path::Path,
    writes: bool,
    held: crate::k8s::receiver::Held,
) -> anyhow::Result<(Migration, crate::remote::Attached)> {
    let derive = |k: &KubeTarget, wants| {
        rt.block_on(async {
            let cluster = k8s::connect(k).await?;
            k8s::server::derive(&cluster, k, wants).await
        })
    };
    let mut m = crate::plan::file::load(file, &derive)?;
    if m.targets.iter().any(|t| {
        t.kubernetes
            .as_ref()
            .is_some_and(|k| k.receiver_pod.is_some())
    }) {
        end_on_signal(rt);
    }
    let attached = crate::remote::attach(&mut m, rt, writes, held)?;
    Ok((m, attached))
}

/// Sets the rate each phase of `p` is estimated at: `--bwlimit` (`cli`) for the phases the
/// command runs (`phase`; `None`: both), else the plan's limits (`transfer.bwlimit` for the
/// presync, `transfer.finalBwlimit` for the final phase and `--phase all`); a phase with no
/// limit at the rate the latest apply measured (its run record in `records`), said so.
fn set_rates(
    p: &mut MigrationPlan,
    cli: Option<crate::units::Rate>,
    phase: Option<sync::Phase>,
    records: &std::path::Path,
) {
    use crate::plan::policy::Rate;
    let from_cli = cli.map(|r| {
        r.limit().map(|b| Rate {
            bytes_per_second: b,
            from: "--bwlimit".into(),
            limit: true,
        })
    });
    let mut presync = p.phases.presync.rate.clone();
    let mut final_ = p.phases.final_.rate.clone();
    if let Some(c) = &from_cli {
        if matches!(phase, None | Some(sync::Phase::Presync)) {
            presync = c.clone();
        }
        if matches!(phase, None | Some(sync::Phase::Final | sync::Phase::All)) {
            final_ = c.clone();
        }
    }
    // The run records are read once, and only when a phase has no limit to estimate by.
    if presync.is_none() || final_.is_none() {
        let measured = crate::record::last_measured_rate(records).map(|(rate, when, file)| Rate {
            bytes_per_second: rate as u64,
            from: format!("measured by the apply of {when}, {}", file.display()),
            limit: false,
        });
        presync = presync.or_else(|| measured.clone());
        final_ = final_.or(measured);
    }
    p.stats.eta_seconds = final_
        .as_ref()
        .map(|r| p.stats.copy_bytes as f64 / r.bytes_per_second.max(1) as f64);
    p.phases = crate::plan::phases(&p.blocks, &p.files, presync, final_);
}

/// The bandwidth limit a run of `phase` keeps to, and where it comes from: `--bwlimit`
/// (`cli`), or the plan's limit of that phase.
fn limit_of(
    p: &MigrationPlan,
    cli: Option<crate::units::Rate>,
    phase: sync::Phase,
) -> (Option<u64>, &'static str) {
    match (cli, phase) {
        (Some(r), _) => (r.limit(), "--bwlimit"),
        (None, sync::Phase::Presync) => (p.bwlimit, "transfer.bwlimit"),
        (None, _) => (p.final_bwlimit, "transfer.finalBwlimit"),
    }
}

/// The command line that runs a command on `plan` again, with `{}` where the command goes:
/// `promigrate {} -f PLAN` (the plan path as given, quoted for a shell when it must be;
/// `kubectl promigrate` when run as the kubectl plugin), with `--state-dir DIR` unless it
/// is the default (`migrations/` beside the plan).
fn again(plan: &std::path::Path, state_dir: &std::path::Path) -> String {
    let quote = |s: &str| {
        if !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._-+,:@%=".contains(c))
        {
            s.to_string()
        } else {
            format!("'{}'", s.replace('\'', "'\\''"))
        }
    };
    let plugin = std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().starts_with("kubectl-promigrate"))
        })
        .unwrap_or(false);
    let me = if plugin {
        "kubectl promigrate"
    } else {
        "promigrate"
    };
    let mut s = format!("{me} {{}} -f {}", quote(&plan.to_string_lossy()));
    if state_dir != crate::cli::default_state_dir(plan) {
        s.push_str(&format!(
            " --state-dir {}",
            quote(&state_dir.to_string_lossy())
        ));
    }
    s
}

/// Builds the plan of every target volume, scanning the source once.
fn build_plans(m: &Migration, compare: Compare) -> anyhow::Result<Vec<MigrationPlan>> {
    let progress_for = |total| progress::for_stderr("checksum", total);
    crate::plan::build(m, compare, &progress_for)
}

/// How `--checksum` compares for a run of `phase`: a presync copies no WAL/head file, so
/// it hashes block files only.
fn compare_of(checksum: bool, phase: sync::Phase) -> Compare {
    match (checksum, phase) {
        (false, _) => Compare::Quick,
        (true, sync::Phase::Presync) => Compare::ChecksumBlocks,
        (true, _) => Compare::Checksum,
    }
}

/// The text of several plans, each under a heading naming its target.
fn render_plans(plans: &[&MigrationPlan]) -> String {
    numbered(
        plans,
        |p| format!(": {}", p.target.display()),
        |p| p.render_text(),
    )
}

/// One report's text alone; several each under `=== target N of M<heading> ===`.
fn numbered<T>(items: &[T], heading: impl Fn(&T) -> String, text: impl Fn(&T) -> String) -> String {
    if let [one] = items {
        return text(one);
    }
    let mut s = String::new();
    for (i, t) in items.iter().enumerate() {
        s.push_str(&format!(
            "=== target {} of {}{} ===\n{}\n",
            i + 1,
            items.len(),
            heading(t),
            text(t)
        ));
    }
    s
}

/// Reads each target's cluster objects (read-only) and adds them, with their blockers, to
/// its plan, for an apply of `phase`. An unreachable cluster is a blocker that names the
/// context and server.
fn kube_preflight(
    rt: &tokio::runtime::Runtime,
    m: &Migration,
    plans: &mut [MigrationPlan],
    phase: sync::Phase,
) {
    for (p, t) in plans.iter_mut().zip(&m.targets) {
        let Some(k) = &t.kubernetes else { continue };
        let data = p.stats.source_bytes;
        let writes = !p.phase_writes_nothing(phase);
        let report = match inspect_target(rt, k) {
            Ok(state) => {
                let mut r = k8s::assess(k, &state, data, writes);
                if let Some(f) = server_findings(t, p, &state) {
                    r.blockers.extend(f.blockers);
                    r.warnings.extend(f.warnings);
                }
                r
            }
            Err(e) => k8s::unreachable(k, &e),
        };
        p.attach_kubernetes(report);
    }
}

/// Reads a target's cluster objects (read-only).
pub(crate) fn inspect_target(
    rt: &tokio::runtime::Runtime,
    k: &crate::plan::file::KubeTarget,
) -> anyhow::Result<k8s::KubeState> {
    rt.block_on(async {
        let cluster = k8s::connect(k).await?;
        k8s::inspect(&cluster, k).await
    })
}

/// The target server held against the plan and the data ([`k8s::server::cross_check`]);
/// `None` when the cluster shows no server for the target.
pub(crate) fn server_findings(
    t: &TargetSpec,
    p: &MigrationPlan,
    state: &k8s::KubeState,
) -> Option<k8s::server::Findings> {
    let k = t.kubernetes.as_ref()?;
    let server = state.prometheus_server.as_ref()?;
    let capacity = state
        .persistent_volume
        .as_ref()
        .and_then(|v| v.capacity_bytes);
    Some(k8s::server::cross_check(
        k,
        server,
        &expect_of(t, p, capacity),
    ))
}

/// What a target's plan and data say, to hold its Prometheus server against.
fn expect_of(t: &TargetSpec, p: &MigrationPlan, capacity: Option<u64>) -> k8s::server::Expect {
    k8s::server::Expect {
        uid: t.owner.uid,
        gid: t.owner.gid,
        sub_path: t
            .root
            .strip_prefix(&t.mount)
            .map(|s| s.display().to_string())
            .unwrap_or_default(),
        blocks: p.blocks.iter().map(|b| (b.max_time, b.size)).collect(),
        // What Prometheus counts as the head's size: wal/, wbl/, chunks_head/.
        head_bytes: p
            .files
            .iter()
            .filter(|f| {
                ["wal/", "wbl/", "chunks_head/"]
                    .iter()
                    .any(|d| f.rel.starts_with(d))
            })
            .map(|f| f.size)
            .sum(),
        capacity,
        now_ms: jiff::Timestamp::now().as_millisecond(),
        source_version: p.source_version.version.clone(),
        source_version_how: if p.source_version.version.is_some() {
            p.source_version.how.clone()
        } else {
            p.source_version.tried.join("; ")
        },
    }
}
