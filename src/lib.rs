//! promigrate: move a Prometheus TSDB onto a Kubernetes volume and prove the copy is good.
//!
//! Phases, each its own module: [`plan`] (read-only inventory, diff and cost), [`sync`]
//! (execute a plan: rate-limited, parallel, resumable copies), [`perms`] (ownership and
//! modes), [`verify`] (prove equality). [`inspect`] summarises any data directory.
//! `run` resolves the command line once and maps outcomes to [`exit::Code`]s.

pub mod cli;
pub mod exit;
pub mod fsutil;
pub mod inspect;
pub mod logging;
pub mod perms;
pub mod plan;
pub mod progress;
pub mod record;
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

/// Runs one command line. Errors are returned for `main` to print; with `--output json` a
/// JSON document with `"ok": false` is printed on stdout as well.
pub fn run(cli: Cli) -> anyhow::Result<Code> {
    let output = match &cli.command {
        Command::Plan(a) => a.common.output,
        Command::Apply(a) => a.common.output,
        Command::Verify(a) => a.common.output,
        Command::Inspect(a) => a.output,
    };
    let result = match cli.command {
        Command::Plan(a) => cmd_plan(&a.common),
        Command::Apply(a) => cmd_apply(a),
        Command::Verify(a) => cmd_verify(a),
        Command::Inspect(a) => {
            let rt = runtime()?;
            let cancel = cancel_on_signal(&rt);
            let report = inspect::run(&a.dir, a.deep, a.parallelism as usize, &cancel)?;
            emit(a.output, &report, || report.render_text())?;
            Ok(if report.ok { Code::Ok } else { Code::Findings })
        }
    };
    if let (Err(e), Output::Json) = (&result, output) {
        let doc = serde_json::json!({"ok": false, "error": format!("{e:#}"), "exit_code": exit::classify(e) as u8});
        println!("{doc}");
    }
    result
}

fn emit<T: Serialize>(
    output: Output,
    value: &T,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
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

fn cmd_plan(a: &cli::PlanFileArgs) -> anyhow::Result<Code> {
    let m = plan::file::load(&a.file)?;
    let p = plan::build(&m)?;
    emit(a.output, &p, || p.render_text())?;
    Ok(if p.ok { Code::Ok } else { Code::Findings })
}

/// Sets the flag on Ctrl-C or SIGTERM, so workers stop at the next chunk and the run ends
/// resumable.
fn cancel_on_signal(runtime: &tokio::runtime::Runtime) -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    runtime.spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::warn!("signal received: stopping at the next chunk; rerun to resume");
        f.store(true, Ordering::Relaxed);
    });
    flag
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

#[derive(Serialize)]
struct ApplyOutput<'a> {
    ok: bool,
    dry_run: bool,
    plan: &'a plan::MigrationPlan,
    actions: Vec<String>,
    apply: Option<sync::ApplyReport>,
    error: Option<String>,
    record: Option<std::path::PathBuf>,
}

fn cmd_apply(a: ApplyArgs) -> anyhow::Result<Code> {
    let started = jiff::Timestamp::now();
    let m = plan::file::load(&a.common.file)?;
    let record_dir = if a.dry_run {
        None
    } else {
        Some(record::prepare(&a.state_dir, &m.name)?)
    };
    let mut p = plan::build(&m)?;
    if let Some(r) = a.bwlimit {
        p.bwlimit = r.limit();
        p.stats.eta_seconds = p.bwlimit.map(|r| p.stats.copy_bytes as f64 / r as f64);
    }
    let mut out = ApplyOutput {
        ok: false,
        dry_run: a.dry_run,
        actions: p.actions(),
        plan: &p,
        apply: None,
        error: None,
        record: None,
    };

    if !p.ok || a.dry_run {
        out.ok = p.ok;
        emit(a.common.output, &out, || {
            let mut s = p.render_text();
            if p.ok {
                s.push_str("\nDry run: apply would\n");
                for act in &out.actions {
                    s.push_str(&format!("  - {act}\n"));
                }
                s.push_str("Nothing was written.\n");
            } else {
                s.push_str("apply refused: resolve the blockers above; nothing was written.\n");
            }
            s
        })?;
        return Ok(if p.ok { Code::Ok } else { Code::Findings });
    }

    if a.common.output == Output::Text {
        print!("{}", p.render_text());
    }
    if !a.yes && std::io::stdin().is_terminal() && !confirm(&p)? {
        eprintln!("Not applied: nothing was written.");
        return Ok(Code::Findings);
    }

    let rt = runtime()?;
    let cancel = cancel_on_signal(&rt);
    let bwlimit = p.bwlimit;
    let total = p.stats.copy_bytes;
    let plan_for_worker = p.clone();
    let cancel_w = cancel.clone();
    let result = rt.block_on(async move {
        tokio::task::spawn_blocking(move || {
            // Logged before the progress bar is drawn, so the two do not tear each other.
            tracing::info!(files = plan_for_worker.stats.copy_files, bytes = total, target = %plan_for_worker.target.display(), "apply: copying");
            let progress = progress::for_stderr("apply", total);
            let opts = sync::ApplyOptions {
                bwlimit,
                cancel: &cancel_w,
                progress: progress.as_ref(),
            };
            sync::apply(&plan_for_worker, &opts)
        })
        .await
        .context("the copy workers stopped unexpectedly")?
    });
    let code = match &result {
        Ok(_) => Code::Ok,
        Err(e) => exit::classify(e),
    };
    if let Err(e) = &result {
        out.error = Some(format!("{e:#}"));
    }
    out.apply = result.as_ref().ok().cloned();
    out.ok = result.is_ok();
    if let Some(dir) = &record_dir {
        let rec = record::RunRecord::new(
            "apply",
            &m.plan_path,
            started,
            code as u8,
            out.error.clone(),
            &out,
        );
        out.record = Some(record::write(dir, &rec)?);
    }
    let report = result?;
    emit(a.common.output, &out, || {
        let mut s = format!(
            "\nApplied: {} in {} file(s) copied, {} block(s) published, {} resumed file(s), {} owner/mode fix(es) in {} ({}/s)\n",
            units::bytes(report.copied_bytes),
            report.copied_files,
            report.blocks_published,
            report.resumed_files,
            report.ownership_fixed,
            units::duration(report.duration_seconds),
            units::bytes(report.average_rate as u64)
        );
        if let Some(q) = &report.quarantine_dir {
            s.push_str(&format!(
                "Quarantined {} entr(ies) in {}\n",
                report.quarantined.len(),
                q.display()
            ));
        }
        if let Some(r) = &out.record {
            s.push_str(&format!("Run record: {}\n", r.display()));
        }
        s.push_str("Next: promigrate verify -f <plan> (its exit code gates the cutover).\n");
        s
    })?;
    Ok(code)
}

fn confirm(p: &plan::MigrationPlan) -> anyhow::Result<bool> {
    eprint!("\nApply this plan to {}? [y/N] ", p.target.display());
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the answer from stdin")?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

fn cmd_verify(a: VerifyArgs) -> anyhow::Result<Code> {
    let started = jiff::Timestamp::now();
    let m = plan::file::load(&a.common.file)?;
    let record_dir = record::prepare(&a.state_dir, &m.name)?;
    let rt = runtime()?;
    let cancel = cancel_on_signal(&rt);
    let mm = m.clone();
    let level = a.level;
    let report = rt.block_on(async move {
        tokio::task::spawn_blocking(move || {
            let progress = progress::for_stderr("verify", 0);
            verify::run(&mm, level, progress.as_ref(), &cancel)
        })
        .await
        .context("the verify workers stopped unexpectedly")?
    })?;
    let code = if report.ok { Code::Ok } else { Code::Findings };
    let rec = record::RunRecord::new("verify", &m.plan_path, started, code as u8, None, &report);
    let path = record::write(&record_dir, &rec)?;
    emit(a.common.output, &report, || {
        format!("{}Run record: {}\n", report.render_text(), path.display())
    })?;
    Ok(code)
}
