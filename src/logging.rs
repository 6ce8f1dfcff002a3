//! Logging setup: `tracing` to stderr, as text or JSON lines, filtered by `RUST_LOG`
//! (default `info`). Reports go to stdout; logs never do.

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// How log lines are written on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber. Safe to call once per process.
pub fn init(format: LogFormat) {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // ureq-proto dumps every request's bytes at trace level (its `util` module), a Pushgateway
    // push's Authorization header included: off, whatever RUST_LOG says.
    if let Ok(d) = "ureq_proto::util=off".parse() {
        filter = filter.add_directive(d);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A line that cannot be written (stderr's reader gone: a closed pipe, a dropped
        // session) is lost, not reported with eprintln!, which panics on that same stderr
        // (and a panicking signal task would leave Ctrl-C and SIGTERM unheard).
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Prints the error a run ends with on stderr: `error: …` as text, or, with JSON logs, one
/// JSON line like the log lines (`level` `ERROR`, `message`, `exit_code`, `timestamp`), so a
/// log collector that reads JSON lines sees why the run failed.
pub fn final_error(format: LogFormat, err: &anyhow::Error, exit_code: u8) {
    // Written, not eprintln!: with stderr gone the exit code still says what happened.
    use std::io::Write;
    let line = match format {
        LogFormat::Text => format!("error: {err:#}"),
        LogFormat::Json => serde_json::json!({
            "timestamp": jiff::Timestamp::now().to_string(),
            "level": "ERROR",
            "message": format!("{err:#}"),
            "exit_code": exit_code,
        })
        .to_string(),
    };
    let _ = writeln!(std::io::stderr(), "{line}");
}
