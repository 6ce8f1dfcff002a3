//! The run's results as Prometheus metrics, pushed to a Pushgateway at the end of every
//! `apply` and `verify`, failed runs included. Encoded with prometheus-client.
//!
//! Grouping key: `job="promigrate"`, `migration="<metadata.name>"`, `command="apply|verify"`.
//! The command is part of the key because the Pushgateway replaces metrics by name within a
//! group: with it, an apply's push never overwrites the last verify's numbers. Every push is a
//! POST, which replaces only the metrics it carries: a failed run does not carry
//! `promigrate_last_success_timestamp_seconds`, so the last success's time survives it.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// What one run reports.
#[derive(Debug, Clone, Default)]
pub struct RunMetrics {
    /// `apply` or `verify`.
    pub command: &'static str,
    /// The run succeeded (exit 0).
    pub success: bool,
    /// Its exit code.
    pub exit_code: u8,
    /// Bytes copied (apply).
    pub copied_bytes: u64,
    /// Files copied (apply).
    pub copied_files: u64,
    /// Wall time.
    pub duration_seconds: f64,
    /// Differences found by verify (or by apply's verify before the Kubernetes steps).
    pub verify_differences: Option<u64>,
    /// When it finished (Unix seconds).
    pub finished_unix: f64,
}

/// The metrics in the text exposition format.
pub fn encode_text(m: &RunMetrics) -> String {
    let mut reg = Registry::default();
    let mut gauge = |name: &str, help: &str, v: f64| {
        let g: Gauge<f64, AtomicU64> = Gauge::default();
        g.set(v);
        reg.register(name, help, g);
    };
    gauge(
        "promigrate_last_run_success",
        "1 if the last run of this command succeeded, else 0.",
        if m.success { 1.0 } else { 0.0 },
    );
    gauge(
        "promigrate_last_run_timestamp_seconds",
        "When the last run of this command finished (Unix time).",
        m.finished_unix,
    );
    gauge(
        "promigrate_last_run_exit_code",
        "Exit code of the last run (0 ok, 1 findings, 2 invalid input, 3 failure).",
        f64::from(m.exit_code),
    );
    if m.success {
        gauge(
            "promigrate_last_success_timestamp_seconds",
            "When the last successful run of this command finished (Unix time).",
            m.finished_unix,
        );
    }
    gauge(
        "promigrate_copied_bytes",
        "Bytes copied by the last run.",
        m.copied_bytes as f64,
    );
    gauge(
        "promigrate_copied_files",
        "Files copied by the last run.",
        m.copied_files as f64,
    );
    gauge(
        "promigrate_run_duration_seconds",
        "Wall time of the last run.",
        m.duration_seconds,
    );
    if let Some(d) = m.verify_differences {
        gauge(
            "promigrate_verify_differences",
            "Differences between source and target found by the last verify.",
            d as f64,
        );
    }
    let mut out = String::new();
    let _ = encode(&mut out, &reg);
    out
}

/// The Pushgateway URL of this migration's group for `command`.
pub fn group_url(base: &str, migration: &str, command: &str) -> String {
    format!(
        "{}/metrics/job/promigrate/migration/{migration}/command/{command}",
        base.trim_end_matches('/')
    )
}

/// Pushes (POST) the run's metrics. A Pushgateway that is down or answers with an error is
/// reported as a warning: it never fails the migration.
pub fn push_or_warn(base: &str, migration: &str, m: &RunMetrics) {
    match push(base, migration, m) {
        Ok(()) => tracing::info!(
            "pushed {} metrics to {}",
            m.command,
            group_url(base, migration, m.command)
        ),
        Err(e) => tracing::warn!(
            "could not push metrics to the Pushgateway at {base}: {e}; the run itself is not affected"
        ),
    }
}

fn push(base: &str, migration: &str, m: &RunMetrics) -> Result<(), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(true)
        .build()
        .into();
    agent
        .post(&group_url(base, migration, m.command))
        .content_type("text/plain; version=0.0.4")
        .send(encode_text(m))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_does_not_carry_the_success_timestamp() {
        let mut m = RunMetrics {
            command: "apply",
            success: true,
            copied_bytes: 1234,
            finished_unix: 1.7e9,
            ..Default::default()
        };
        let ok = encode_text(&m);
        assert!(
            ok.contains("promigrate_last_success_timestamp_seconds 1700000000"),
            "{ok}"
        );
        assert!(ok.contains("promigrate_copied_bytes 1234"), "{ok}");
        m.success = false;
        let failed = encode_text(&m);
        assert!(
            !failed.contains("promigrate_last_success_timestamp_seconds"),
            "{failed}"
        );
        assert!(failed.contains("promigrate_last_run_success 0"), "{failed}");
    }
}
