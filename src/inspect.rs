//! `inspect`: a summary of any TSDB data directory, like promdump's `meta`: the persistent
//! blocks (count, time range in UTC, samples, series, size) and the WAL/WBL/head segment
//! ranges. Reads only.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::plan::inventory::{self, Inventory};
use crate::units;

/// One block in an inspect report.
#[derive(Debug, Clone, Serialize)]
pub struct BlockSummary {
    /// ULID.
    pub ulid: String,
    /// minTime (ms).
    pub min_time: i64,
    /// maxTime (ms).
    pub max_time: i64,
    /// Samples.
    pub num_samples: u64,
    /// Series.
    pub num_series: u64,
    /// Chunks.
    pub num_chunks: u64,
    /// Compaction level.
    pub level: u32,
    /// Bytes on disk.
    pub size: u64,
}

/// The segment files of one segment directory.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentRange {
    /// `wal`, `wbl` or `chunks_head`.
    pub dir: String,
    /// First segment number.
    pub first: u64,
    /// Last segment number.
    pub last: u64,
    /// Number of segment files.
    pub count: usize,
    /// Bytes.
    pub size: u64,
    /// Checkpoint directories (`checkpoint.N`), for the WAL.
    pub checkpoints: Vec<String>,
}

/// One chunk snapshot directory.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotSummary {
    /// Its name, `chunk_snapshot.<index>.<offset>`.
    pub dir: String,
    /// Segment files in it.
    pub files: usize,
    /// Bytes.
    pub size: u64,
    /// Whether Prometheus would load this one (the newest).
    pub loaded: bool,
}

/// The result of `inspect`.
#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    /// `true` when no problem was found.
    pub ok: bool,
    /// Whether the directory is a Prometheus TSDB at all (a block, `wal/` or `chunks_head/`).
    pub tsdb: bool,
    /// The directory inspected.
    pub dir: PathBuf,
    /// Blocks, oldest first.
    pub blocks: Vec<BlockSummary>,
    /// Earliest block minTime (ms).
    pub min_time: Option<i64>,
    /// Latest block maxTime (ms).
    pub max_time: Option<i64>,
    /// Samples in all blocks.
    pub total_samples: u64,
    /// Bytes in all blocks.
    pub total_block_bytes: u64,
    /// WAL, WBL and head chunk segments.
    pub segments: Vec<SegmentRange>,
    /// Chunk snapshots (`chunk_snapshot.<index>.<offset>/`, written at shutdown with
    /// `memory-snapshot-on-shutdown`), oldest first; Prometheus loads the newest.
    pub chunk_snapshots: Vec<SnapshotSummary>,
    /// Problems found (unreadable meta.json, name mismatch).
    pub problems: Vec<String>,
    /// With `--deep`: format problems, with what Prometheus would do about each.
    pub format_problems: Option<Vec<crate::tsdb::check::Problem>>,
}

/// Inspects a data directory; with `deep`, also validates every file's format.
pub fn run(
    dir: &Path,
    deep: bool,
    parallelism: usize,
    cancel: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<InspectReport> {
    if !dir.is_dir() {
        return Err(crate::exit::InvalidInput(format!(
            "{} is not a directory: pass a Prometheus data directory",
            dir.display()
        ))
        .into());
    }
    let inv = inventory::scan(dir)?;
    let mut report = summarise(&inv);
    if !inventory::is_tsdb(&inv) {
        // Not a TSDB (/etc, a volume's root above its subPath, wal/): say so first, and
        // where the TSDB is when there is one near.
        report.ok = false;
        report.problems.insert(
            0,
            format!(
                "{} is not a Prometheus TSDB directory (no block, no wal/ or chunks_head/){}",
                dir.display(),
                match inventory::tsdb_near(dir) {
                    Some(t) => format!(": the TSDB is at {} (inspect that)", t.display()),
                    None => String::new(),
                }
            ),
        );
        return Ok(report);
    }
    if deep {
        let progress = crate::progress::for_stderr(
            "inspect --deep",
            inv.blocks.values().map(|b| b.size()).sum::<u64>()
                + inv.files.values().map(|f| f.size).sum::<u64>(),
        );
        let found = crate::tsdb::check::run(
            &crate::source::Source::Local(dir.to_path_buf()),
            &inv,
            crate::tsdb::check::Depth::Deep,
            parallelism,
            progress.as_ref(),
            cancel,
        );
        progress.finish(true);
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            anyhow::bail!("inspect --deep was interrupted; the result is incomplete");
        }
        report.ok &= found.is_empty();
        report.format_problems = Some(found);
    }
    Ok(report)
}

fn summarise(inv: &Inventory) -> InspectReport {
    let mut blocks = Vec::new();
    let mut problems = Vec::new();
    for b in inv.blocks.values() {
        match &b.meta {
            Ok(m) => {
                if m.ulid.to_string() != b.dir {
                    problems.push(format!("{}: meta.json ulid is {}", b.dir, m.ulid));
                }
                blocks.push(BlockSummary {
                    ulid: b.dir.clone(),
                    min_time: m.min_time,
                    max_time: m.max_time,
                    num_samples: m.stats.num_samples,
                    num_series: m.stats.num_series,
                    num_chunks: m.stats.num_chunks,
                    level: m.compaction.level,
                    size: b.size(),
                });
            }
            Err(e) => problems.push(e.clone()),
        }
    }
    blocks.sort_by_key(|b| (b.min_time, b.ulid.clone()));
    let segments = ["wal", "wbl", "chunks_head"]
        .iter()
        .filter_map(|dir| {
            let segs = inventory::segments(inv.files.values(), dir);
            let checkpoints: Vec<String> = inv
                .dirs
                .iter()
                .filter_map(|d| {
                    crate::relpath::below(d, dir)
                        .filter(|n| n.starts_with("checkpoint."))
                        .map(String::from)
                })
                .collect();
            if segs.is_empty() && checkpoints.is_empty() {
                return None;
            }
            Some(SegmentRange {
                dir: dir.to_string(),
                first: segs.first().map_or(0, |s| s.0),
                last: segs.last().map_or(0, |s| s.0),
                count: segs.len(),
                size: segs.iter().map(|s| s.2).sum(),
                checkpoints,
            })
        })
        .collect();
    let newest = crate::tsdb::check::newest_snapshot(inv);
    let mut chunk_snapshots: Vec<SnapshotSummary> = inv
        .dirs
        .iter()
        .filter(|d| d.starts_with("chunk_snapshot.") && !d.contains('/'))
        .map(|d| {
            let under = |rel: &&crate::relpath::RelPath| rel.is_below(d);
            SnapshotSummary {
                dir: d.to_string(),
                files: inv.files.keys().filter(under).count(),
                size: inv
                    .files
                    .iter()
                    .filter(|(r, _)| under(r))
                    .map(|(_, f)| f.size)
                    .sum(),
                loaded: newest.as_deref() == Some(d.as_str()),
            }
        })
        .collect();
    chunk_snapshots.sort_by(|a, b| a.dir.cmp(&b.dir));
    InspectReport {
        tsdb: inventory::is_tsdb(inv),
        chunk_snapshots,
        ok: problems.is_empty(),
        dir: inv.root.clone(),
        min_time: blocks.iter().map(|b| b.min_time).min(),
        max_time: blocks.iter().map(|b| b.max_time).max(),
        total_samples: blocks
            .iter()
            .fold(0u64, |a, b| a.saturating_add(b.num_samples)),
        total_block_bytes: blocks.iter().fold(0u64, |a, b| a.saturating_add(b.size)),
        blocks,
        segments,
        problems,
        format_problems: None,
    }
}

impl InspectReport {
    /// The report for people.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        if !self.tsdb {
            // What it is not comes first, and alone.
            for p in &self.problems {
                let _ = writeln!(s, "problem: {p}");
            }
            return s;
        }
        let _ = writeln!(s, "TSDB {}", self.dir.display());
        let _ = writeln!(
            s,
            "{:<26}  {:<20}  {:<20}  {:>12}  {:>8}  {:>8}  {:>3}  {:>10}",
            "BLOCK ULID",
            "MIN TIME (UTC)",
            "MAX TIME (UTC)",
            "SAMPLES",
            "SERIES",
            "CHUNKS",
            "LVL",
            "SIZE"
        );
        for b in &self.blocks {
            let _ = writeln!(
                s,
                "{:<26}  {:<20}  {:<20}  {:>12}  {:>8}  {:>8}  {:>3}  {:>10}",
                b.ulid,
                units::ms_utc(b.min_time),
                units::ms_utc(b.max_time),
                b.num_samples,
                b.num_series,
                b.num_chunks,
                b.level,
                units::bytes(b.size)
            );
        }
        match (self.min_time, self.max_time) {
            (Some(a), Some(z)) => {
                let _ = writeln!(
                    s,
                    "{}, {} .. {} UTC, {} samples, {}",
                    units::count(self.blocks.len() as u64, "block"),
                    units::ms_utc(a),
                    units::ms_utc(z),
                    self.total_samples,
                    units::bytes(self.total_block_bytes)
                );
            }
            _ => {
                let _ = writeln!(s, "no persistent blocks");
            }
        }
        for g in &self.segments {
            // chunks_head files are named %06d, WAL/WBL segments %08d.
            let w = if g.dir == "chunks_head" { 6 } else { 8 };
            let _ = write!(
                s,
                "{}/: segments {:0w$}..{:0w$} ({}, {})",
                g.dir,
                g.first,
                g.last,
                units::count(g.count as u64, "file"),
                units::bytes(g.size)
            );
            if !g.checkpoints.is_empty() {
                let _ = write!(s, ", {}", g.checkpoints.join(", "));
            }
            let _ = writeln!(s);
        }
        for c in &self.chunk_snapshots {
            let _ = writeln!(
                s,
                "{}/: chunk snapshot ({}, {}){}",
                c.dir,
                units::count(c.files as u64, "file"),
                units::bytes(c.size),
                if c.loaded {
                    "; loaded at startup"
                } else {
                    "; older, not loaded (Prometheus deletes it)"
                }
            );
        }
        for p in &self.problems {
            let _ = writeln!(s, "problem: {p}");
        }
        match &self.format_problems {
            Some(f) if f.is_empty() => {
                let _ = writeln!(s, "format: every file checked, no problem found");
            }
            Some(f) => {
                for p in f {
                    let _ = writeln!(s, "problem: {}", p.line());
                }
                let _ = writeln!(s, "format: {}", units::count(f.len() as u64, "problem"));
            }
            None => {}
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `inspect` lists chunk snapshots as `plan` does, and says which one Prometheus loads.
    #[test]
    fn chunk_snapshots_are_listed_with_the_one_prometheus_loads() {
        let d = tempfile::tempdir().unwrap();
        for (dir, bytes) in [
            ("chunk_snapshot.000002.0000001000", 10usize),
            ("chunk_snapshot.000010.0000000000", 20),
        ] {
            std::fs::create_dir_all(d.path().join(dir)).unwrap();
            std::fs::write(d.path().join(dir).join("00000000"), vec![0u8; bytes]).unwrap();
        }
        std::fs::create_dir_all(d.path().join("wal")).unwrap();
        let r = run(
            d.path(),
            false,
            1,
            &std::sync::atomic::AtomicBool::new(false),
        )
        .unwrap();
        assert_eq!(r.chunk_snapshots.len(), 2);
        assert!(!r.chunk_snapshots[0].loaded);
        assert!(r.chunk_snapshots[1].loaded, "index 10 is newer than 2");
        assert_eq!(r.chunk_snapshots[1].size, 20);
        let text = r.render_text();
        assert!(
            text.contains("chunk_snapshot.000010.0000000000/: chunk snapshot (1 file, 20 B); loaded at startup"),
            "{text}"
        );
    }
}
