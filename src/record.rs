//! Run records: each `apply` and `verify` writes one JSON document to
//! `<state-dir>/<metadata.name>/<UTC time>-<command>.json`: the change window's audit trail.
//! Written to a temp name and renamed, so a record is whole or absent.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

/// The envelope of a run record.
#[derive(Debug, Serialize)]
pub struct RunRecord<'a, T: Serialize> {
    /// `apply` or `verify`.
    pub command: &'a str,
    /// promigrate version.
    pub version: &'a str,
    /// The plan file used.
    pub plan_file: &'a Path,
    /// Start time (RFC 3339 UTC).
    pub started: String,
    /// End time (RFC 3339 UTC).
    pub finished: String,
    /// The process exit code.
    pub exit_code: u8,
    /// Host name of the machine that ran it.
    pub host: String,
    /// uid that ran it.
    pub uid: u32,
    /// The error, if the run failed.
    pub error: Option<String>,
    /// The command's report.
    pub report: T,
}

impl<'a, T: Serialize> RunRecord<'a, T> {
    /// A record of a run that started at `started` and ends now, on this host, as this uid.
    pub fn new(
        command: &'a str,
        plan_file: &'a Path,
        started: jiff::Timestamp,
        exit_code: u8,
        error: Option<String>,
        report: T,
    ) -> Self {
        RunRecord {
            command,
            version: env!("CARGO_PKG_VERSION"),
            plan_file,
            started: started.to_string(),
            finished: jiff::Timestamp::now().to_string(),
            exit_code,
            host: hostname(),
            uid: nix::unistd::getuid().as_raw(),
            error,
            report,
        }
    }
}

/// Creates `<state_dir>/<name>/` up front so a run fails before it writes any data if its
/// audit trail cannot be kept.
pub fn prepare(state_dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    // Absolute, so that the path printed and recorded is one to paste from anywhere.
    let dir = std::path::absolute(state_dir.join(name)).unwrap_or_else(|_| state_dir.join(name));
    std::fs::create_dir_all(&dir).with_context(|| {
        format!(
            "cannot create the run-record directory {} (set --state-dir to a writable directory)",
            dir.display()
        )
    })?;
    Ok(dir)
}

/// The copy rate the latest apply recorded in `dir` that copied enough to measure one (at
/// least 16 MiB, not a dry run) without a bandwidth limit (a limited run measures its limit,
/// not what an unlimited phase does; records older than this field are not taken): bytes
/// per second, its start time, and the record's absolute path.
pub fn last_measured_rate(dir: &Path) -> Option<(f64, String, PathBuf)> {
    let dir = std::path::absolute(dir).ok()?;
    let dir = dir.as_path();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with("-apply.json"))
        .collect();
    files.sort();
    files.into_iter().rev().find_map(|f| {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&f).ok()?).ok()?;
        if v["report"]["dry_run"].as_bool() == Some(true) {
            return None;
        }
        let (bytes, secs) = v["report"]["targets"]
            .as_array()?
            .iter()
            .filter_map(|t| {
                let a = &t["apply"];
                // Unlimited: the key is there, and null.
                if !a.get("bwlimit").is_some_and(serde_json::Value::is_null) {
                    return None;
                }
                Some((a["copied_bytes"].as_u64()?, a["duration_seconds"].as_f64()?))
            })
            .max_by_key(|(b, _)| *b)?;
        (bytes >= 16 << 20 && secs > 0.0).then(|| {
            let started = v["started"].as_str().unwrap_or("?").to_string();
            (bytes as f64 / secs, started, f)
        })
    })
}

/// The record this process wrote last, for the report's `record` key (also when the run
/// failed after writing it).
static WRITTEN: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

/// The path of the record this process wrote last, if any.
pub fn last_written() -> Option<PathBuf> {
    WRITTEN.lock().ok().and_then(|w| w.clone())
}

/// Writes a record into `dir` and returns its path.
pub fn write<T: Serialize>(dir: &Path, record: &RunRecord<T>) -> anyhow::Result<PathBuf> {
    let stamp = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%S%.3fZ")
        .to_string();
    let path = dir.join(format!("{stamp}-{}.json", record.command));
    let tmp = dir.join(format!(
        ".{stamp}-{}.json{}",
        record.command,
        crate::tsdb::TMP_SUFFIX
    ));
    let body = serde_json::to_vec_pretty(record)?;
    std::fs::write(&tmp, body)
        .with_context(|| format!("cannot write run record {}", tmp.display()))?;
    std::fs::rename(&tmp, &path)
        .with_context(|| format!("cannot write run record {}", path.display()))?;
    if let Ok(mut w) = WRITTEN.lock() {
        *w = Some(path.clone());
    }
    Ok(path)
}

/// This machine's host name, for the record.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
