//! Format checks of a TSDB data directory: what would make a new Prometheus fail to start,
//! skip a block, drop data at startup, or serve errors or wrong data later. Byte comparisons
//! cannot see these when the source is already damaged.
//!
//! Two depths. `Cheap` reads meta.json files, file names and headers only (for `plan`).
//! `Deep` also streams every file once: every chunk CRC in block segments and head chunk
//! files, every index section (TOC, symbols, series entries and their chunk references,
//! label indices, postings lists and the postings offset table), tombstones, and every WAL/WBL
//! record fragment. Memory stays bounded: files are read through a fixed buffer and the index
//! is walked section by section. Facts: prometheus/prometheus `tsdb/docs/format/` and `tsdb/`.

mod chunks;
mod head;
mod index;
pub mod repair;
pub mod scan;
mod tombstones;
mod wal;

use crate::source::Tree;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::plan::inventory::Inventory;
use crate::progress::Progress;
use crate::relpath::RelPath;
use crate::tsdb;

/// How deep to look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Depth {
    /// meta.json, file numbering, file headers, index TOC, tombstones.
    Cheap,
    /// Every byte of every file.
    Deep,
}

/// What Prometheus does about a problem (from prometheus `tsdb/`, and shown by tests that
/// start a real prometheus on damaged copies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Startup fails ("opening storage failed").
    FailsStart,
    /// The block is skipped at startup; its data is not served.
    SkipsBlock,
    /// Startup repairs by truncating: data from the damage on is lost.
    DropsData,
    /// Startup succeeds; queries and compactions touching the damage fail.
    QueryErrors,
    /// Startup succeeds; queries can return wrong data.
    WrongData,
    /// Served, but retention and compaction delete blocks by their meta.json ulid, so this
    /// directory is never deleted.
    Undeletable,
    /// The chunk snapshot is dropped at startup ("Failed to load chunk snapshot") and the WAL
    /// is replayed instead: the samples survive, the start is slower, and exemplars older
    /// than the last checkpoint (which only the snapshot held) are lost.
    SnapshotDropped,
    /// A head chunk (in order or out of order): Prometheus deletes the head chunk files from
    /// this one on and replays the WAL and WBL: samples survive; exemplars older than the last
    /// checkpoint are lost.
    HeadReplayed,
    /// An empty chunk snapshot directory: Prometheus loads it as an empty snapshot and skips
    /// the WAL before its position, so the head data there is lost.
    EmptySnapshot,
    /// The newest checkpoint: reading it fails, and the WAL repair Prometheus then attempts
    /// deletes every WAL segment numbered above the damaged checkpoint file's (for a one-file
    /// checkpoint: all of them) and fails, so startup fails with the WAL gone (seen with 2.42
    /// and 3.16, `repair corrupted WAL`). Only a WAL that still holds a segment of that number,
    /// which Prometheus does not leave behind a checkpoint, is truncated there instead (seen
    /// with 2.42).
    FailsStartWalDeleted,
    /// WAL damage before the position of the newest chunk snapshot: Prometheus with
    /// `memory-snapshot-on-shutdown` loads the snapshot and replays the WAL only from there,
    /// so it never reads the damage at startup; without that feature, or when the snapshot
    /// does not load, it is [`Effect::DropsData`] (both seen with 2.42 and 3.16).
    CoveredBySnapshot,
    /// A damaged newest checkpoint older than the newest chunk snapshot: not read at startup
    /// when the snapshot loads; otherwise [`Effect::FailsStartWalDeleted`].
    CheckpointCoveredBySnapshot,
}

impl Effect {
    /// A sentence for reports.
    pub fn describe(self) -> &'static str {
        match self {
            Effect::FailsStart => "Prometheus fails to start",
            Effect::SkipsBlock => "Prometheus skips this block at startup (its data is not served)",
            Effect::DropsData => {
                "Prometheus repairs it at startup by truncating: the data from here on is lost"
            }
            Effect::QueryErrors => {
                "Prometheus starts, but queries and compactions that read it fail"
            }
            Effect::WrongData => "Prometheus starts, but queries may return wrong data",
            Effect::Undeletable => {
                "Prometheus serves it, but deletes blocks by their meta.json ulid, so retention and compaction never remove this directory"
            }
            Effect::SnapshotDropped => {
                "Prometheus drops the chunk snapshot at startup and replays the WAL instead: the samples survive, the start is slower, and exemplars older than the last checkpoint are lost"
            }
            Effect::EmptySnapshot => {
                "Prometheus loads it as an empty snapshot and does not replay the WAL before its position: the head data there is lost"
            }
            Effect::HeadReplayed => {
                "Prometheus deletes the head chunk files from this one on and replays the WAL and WBL: the samples survive, the start is slower, and exemplars older than the last checkpoint are lost"
            }
            Effect::FailsStartWalDeleted => {
                "Prometheus fails to start, after the WAL repair it attempts has deleted the WAL segments numbered above this file's (for a one-file checkpoint: every segment)"
            }
            Effect::CoveredBySnapshot => {
                "Prometheus with memory-snapshot-on-shutdown loads the newer chunk snapshot and does not read this at startup, but its next WAL checkpoint reads it and fails (per Prometheus' source: head.go truncateWAL, not reproduced here), so the WAL stops being truncated and grows; without that feature, or if the snapshot fails to load, it repairs the WAL at startup by truncating here: the data from here on is lost. Repair the source either way"
            }
            Effect::CheckpointCoveredBySnapshot => {
                "Prometheus with memory-snapshot-on-shutdown loads the newer chunk snapshot and does not read this checkpoint at startup, but its next WAL checkpoint reads it and fails (per Prometheus' source: head.go truncateWAL, not reproduced here), so the WAL stops being truncated and grows; without that feature, or if the snapshot fails to load, it fails to start, after the WAL repair it attempts has deleted the WAL segments numbered above this file's. Repair the source either way"
            }
        }
    }
}

/// One problem found in a data directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// Path relative to the TSDB root.
    pub path: RelPath,
    /// Where in the file (section, offset), or empty.
    pub location: String,
    /// What is wrong.
    pub problem: String,
    /// What Prometheus would do.
    pub effect: Effect,
}

impl PartialOrd for Effect {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Effect {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (*self as u8).cmp(&(*other as u8))
    }
}

impl Problem {
    /// A problem with the target as a whole (the checks could not run there).
    pub fn of_target(problem: String) -> Problem {
        Problem::new("", "", problem, Effect::FailsStart)
    }

    fn new(
        path: impl Into<RelPath>,
        location: impl Into<String>,
        problem: impl Into<String>,
        effect: Effect,
    ) -> Self {
        Problem {
            path: path.into(),
            location: location.into(),
            problem: problem.into(),
            effect,
        }
    }

    /// One line for people: `path (location): problem; effect`.
    pub fn line(&self) -> String {
        let loc = if self.location.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.location)
        };
        format!(
            "{}{loc}: {}; {}",
            self.path,
            self.problem,
            self.effect.describe()
        )
    }
}

/// Checks the 8-byte header of a chunk segment or head chunk file: a magic number, version
/// 1, three bytes of padding. A bad header fails startup.
fn segment_header(
    s: &mut scan::Scanner,
    rel: &str,
    magic: u32,
) -> std::io::Result<Option<Problem>> {
    let bad = |what: String| Some(Problem::new(rel, "header", what, Effect::FailsStart));
    let Some(h) = s.take(8)? else {
        return Ok(bad(format!(
            "{} bytes, shorter than the 8-byte header",
            s.len()
        )));
    };
    Ok(if scan::be32(h) != magic {
        bad(format!("magic {:#010x}, want {magic:#010x}", scan::be32(h)))
    } else if h[4] != 1 {
        bad(format!("version {}, want 1", h[4]))
    } else {
        None
    })
}

/// One file to read.
enum Job {
    BlockChunks {
        rel: String,
    },
    Index {
        rel: String,
        segments: Vec<u64>,
    },
    Tombstones {
        rel: String,
    },
    HeadChunks {
        rel: String,
        last: bool,
    },
    Wal {
        rel: String,
        last: bool,
        kind: wal::Kind,
        covered: wal::Covered,
    },
}

/// Checks a scanned data directory. Files are read by `parallelism` workers; `progress`
/// receives the bytes read.
pub fn run(
    root: &dyn Tree,
    inv: &Inventory,
    depth: Depth,
    parallelism: usize,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut jobs = Vec::new();
    for b in inv.blocks.values() {
        match &b.meta {
            Err(e) => problems.push(Problem::new(
                format!("{}/meta.json", b.dir),
                "",
                e.clone(),
                Effect::SkipsBlock,
            )),
            Ok(m) => {
                if m.version != 1 {
                    problems.push(Problem::new(
                        format!("{}/meta.json", b.dir),
                        "version",
                        format!("version {} (only 1 exists)", m.version),
                        Effect::SkipsBlock,
                    ));
                }
                if m.ulid.to_string() != b.dir {
                    problems.push(Problem::new(
                        format!("{}/meta.json", b.dir),
                        "ulid",
                        format!("ulid {} differs from the directory name", m.ulid),
                        Effect::Undeletable,
                    ));
                }
                if m.min_time >= m.max_time {
                    problems.push(Problem::new(
                        format!("{}/meta.json", b.dir),
                        "minTime/maxTime",
                        format!(
                            "minTime {} is not before maxTime {}",
                            m.min_time, m.max_time
                        ),
                        Effect::WrongData,
                    ));
                }
            }
        }
        let segs = numbered(inv, &format!("{}/chunks", b.dir));
        problems.extend(contiguity(
            &format!("{}/chunks", b.dir),
            &segs,
            Some(1),
            Effect::WrongData,
            "chunks are addressed by file position, so with a file missing every later reference points into the wrong file",
        ));
        for (_, rel, _) in &segs {
            jobs.push(Job::BlockChunks { rel: rel.clone() });
        }
        let index = format!("{}/index", b.dir);
        if b.files.contains_key(index.as_str()) {
            jobs.push(Job::Index {
                rel: index,
                segments: segs.iter().map(|s| s.2).collect(),
            });
        } else {
            problems.push(Problem::new(index, "", "missing", Effect::FailsStart));
        }
        let tomb = format!("{}/tombstones", b.dir);
        if b.files.contains_key(tomb.as_str()) {
            jobs.push(Job::Tombstones { rel: tomb });
        }
    }

    let head = numbered(inv, "chunks_head");
    problems.extend(contiguity(
        "chunks_head",
        &head,
        None,
        Effect::FailsStart,
        "found unsequential head chunk files",
    ));
    jobs.extend(
        head.iter()
            .enumerate()
            .map(|(i, (_, rel, _))| Job::HeadChunks {
                rel: rel.clone(),
                last: i + 1 == head.len(),
            }),
    );

    // Where WAL replay starts when the newest chunk snapshot loads: (its directory, WAL
    // segment, offset). Damage before that is not read at startup.
    let snapshot = newest_snapshot(inv).and_then(|d| {
        let (i, o) = snapshot_position(&d)?;
        Some((d, i, o))
    });
    let mut last_wal_segment = None;
    for (dir, kind) in wal_dirs(inv) {
        let segs = numbered(inv, &dir);
        if dir == "wal" {
            last_wal_segment = segs.last().map(|s| s.0);
        }
        // A checkpoint is replayed only when its number is not below the snapshot's segment.
        let checkpoint_covered = dir
            .strip_prefix("wal/checkpoint.")
            .and_then(|n| n.parse::<u64>().ok())
            .zip(snapshot.as_ref())
            .is_some_and(|(n, (_, i, _))| n < *i);
        // Prometheus lists every segment and refuses a gap anywhere, checkpoints included;
        // in a chunk snapshot that only drops the snapshot.
        problems.extend(contiguity(
            &dir,
            &segs,
            None,
            if kind == wal::Kind::Snapshot {
                Effect::SnapshotDropped
            } else {
                Effect::FailsStart
            },
            "segments are not sequential",
        ));
        if kind == wal::Kind::Snapshot && segs.is_empty() {
            problems.push(Problem::new(
                format!("{dir}/"),
                "",
                "the chunk snapshot holds no segment",
                Effect::EmptySnapshot,
            ));
        }
        let n = segs.len();
        jobs.extend(
            segs.into_iter()
                .enumerate()
                .map(|(i, (num, rel, _))| Job::Wal {
                    rel,
                    last: i + 1 == n,
                    kind,
                    covered: match (&snapshot, dir.as_str()) {
                        _ if checkpoint_covered => wal::Covered::Whole,
                        (Some((_, si, _)), "wal") if num < *si => wal::Covered::Whole,
                        (Some((_, si, so)), "wal") if num == *si => wal::Covered::Before(*so),
                        _ => wal::Covered::No,
                    },
                }),
        );
    }

    let found = crate::par::map(&jobs, parallelism, |job| {
        if cancel.load(Ordering::Relaxed) {
            Vec::new() // interrupted: the jobs not started yet are skipped
        } else {
            run_job(root, job, depth, progress)
        }
    });
    problems.extend(found.into_iter().flatten());
    // The snapshot covers nothing when Prometheus will not load it: it is damaged itself, a
    // head chunk file is (Prometheus then replays the WAL from the checkpoint on), or the WAL
    // ends before it (Prometheus deletes it as outdated).
    let loads = snapshot.is_some_and(|(dir, i, _)| {
        last_wal_segment.is_some_and(|last| last >= i)
            && !problems.iter().any(|p| {
                p.path.starts_with("chunks_head") || crate::relpath::is_below(&p.path, &dir)
            })
    });
    if !loads {
        for p in &mut problems {
            p.effect = match p.effect {
                Effect::CoveredBySnapshot => Effect::DropsData,
                Effect::CheckpointCoveredBySnapshot => Effect::FailsStartWalDeleted,
                e => e,
            };
        }
    }
    problems.sort();
    problems
}

fn run_job(root: &dyn Tree, job: &Job, depth: Depth, progress: &dyn Progress) -> Vec<Problem> {
    let (rel, result) = match job {
        Job::BlockChunks { rel } => (rel, chunks::check(root, rel, depth, progress)),
        Job::Index { rel, segments } => (rel, index::check(root, rel, segments, depth, progress)),
        Job::Tombstones { rel } => (rel, tombstones::check(root, rel)),
        Job::HeadChunks { rel, last } => (rel, head::check(root, rel, *last, depth, progress)),
        Job::Wal {
            rel,
            last,
            kind,
            covered,
        } => (
            rel,
            wal::check(root, rel, *last, *kind, *covered, depth, progress),
        ),
    };
    match result {
        Ok(problems) => problems,
        // Listed a moment ago and gone now: a live server compacted or truncated it away.
        // That is no damage; the next listing does not have it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => vec![Problem::new(
            rel.clone(),
            "",
            format!("cannot read: {e}"),
            Effect::FailsStart,
        )],
    }
}

/// Numbered files directly in `dir`, from blocks and segment directories alike.
fn numbered(inv: &Inventory, dir: &str) -> Vec<(u64, String, u64)> {
    crate::plan::inventory::segments(inv.data_files(), dir)
        .into_iter()
        .map(|(n, rel, size)| (n, rel.into(), size))
        .collect()
}

/// A problem for every gap in a numbered sequence (and for a wrong first number).
fn contiguity(
    dir: &str,
    segs: &[(u64, String, u64)],
    first: Option<u64>,
    effect: Effect,
    what: &str,
) -> Vec<Problem> {
    let mut out = Vec::new();
    if let (Some(want), Some((n, rel, _))) = (first, segs.first())
        && *n != want
    {
        out.push(Problem::new(
            rel.clone(),
            "file numbering",
            format!("first file is {n}, not {want}: {what}"),
            effect,
        ));
    }
    for w in segs.windows(2) {
        if w[0].0.checked_add(1) != Some(w[1].0) {
            out.push(Problem::new(
                format!("{dir}/"),
                "file numbering",
                format!("gap between {} and {}: {what}", w[0].1, w[1].1),
                effect,
            ));
        }
    }
    out
}

/// The WAL-format directories Prometheus reads: `wal`, `wbl`, the newest
/// `wal/checkpoint.N` and the newest `chunk_snapshot.N.M` (older checkpoints and snapshots
/// are never read; Prometheus deletes them later).
fn wal_dirs(inv: &Inventory) -> Vec<(RelPath, wal::Kind)> {
    let mut dirs: Vec<(RelPath, wal::Kind)> = inv
        .dirs
        .iter()
        .filter(|d| *d == "wal" || *d == "wbl")
        .map(|d| (d.clone(), wal::Kind::Log))
        .collect();
    let newest_checkpoint = inv
        .dirs
        .iter()
        .filter_map(|d| {
            let n = d.strip_prefix("wal/checkpoint.")?;
            (!n.contains('/')).then(|| tsdb::segment_number(n).map(|num| (num, d.clone())))?
        })
        .max();
    dirs.extend(newest_checkpoint.map(|(_, d)| (d, wal::Kind::Checkpoint)));
    dirs.extend(newest_snapshot(inv).map(|d| (d, wal::Kind::Snapshot)));
    dirs.sort_by(|a, b| a.0.cmp(&b.0));
    dirs
}

/// The chunk snapshot Prometheus loads: the `chunk_snapshot.<index>.<offset>` with the
/// highest (index, offset), as tsdb's LastChunkSnapshot picks it.
pub fn newest_snapshot(inv: &Inventory) -> Option<RelPath> {
    inv.dirs
        .iter()
        .filter_map(|d| Some((snapshot_position(d)?, d.clone())))
        .max()
        .map(|(_, d)| d)
}

/// The WAL position a `chunk_snapshot.<segment>.<offset>` directory was taken at.
fn snapshot_position(dir: &str) -> Option<(u64, u64)> {
    let (i, o) = dir.strip_prefix("chunk_snapshot.")?.split_once('.')?;
    Some((i.parse().ok()?, o.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Source;

    /// One WAL-format segment holding `records`, each a full record in one fragment.
    fn wal_segment(records: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for r in records {
            v.push(1u8);
            v.extend_from_slice(&(r.len() as u16).to_be_bytes());
            v.extend_from_slice(&crc32c::crc32c(r).to_be_bytes());
            v.extend_from_slice(r);
        }
        v.resize(32 * 1024, 0);
        v
    }

    fn deep(dir: &std::path::Path) -> Vec<Problem> {
        let inv = crate::plan::inventory::scan(dir).unwrap();
        run(
            &Source::Local(dir.to_path_buf()),
            &inv,
            Depth::Deep,
            2,
            &crate::progress::Hidden,
            &AtomicBool::new(false),
        )
    }

    /// Regression: `chunk_snapshot.*` was never format-checked. A damaged one is dropped by
    /// Prometheus at start, which then replays the WAL: a slower start, and the exemplars
    /// only the snapshot held are lost. Only the newest snapshot is read by Prometheus.
    #[test]
    fn the_newest_chunk_snapshot_is_checked_and_its_damage_reported_truthfully() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("wal")).unwrap();
        std::fs::write(d.path().join("wal/00000003"), wal_segment(&[b"series"])).unwrap();
        let snap = d.path().join("chunk_snapshot.000003.0000032768");
        std::fs::create_dir_all(&snap).unwrap();
        let mut seg = wal_segment(&[b"snapshot series record", b"exemplars"]);
        std::fs::write(snap.join("00000000"), &seg).unwrap();
        assert!(deep(d.path()).is_empty(), "{:?}", deep(d.path()));
        seg[10] ^= 0x01; // inside the first record's data
        std::fs::write(snap.join("00000000"), &seg).unwrap();
        let found = deep(d.path());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].path, "chunk_snapshot.000003.0000032768/00000000");
        assert_eq!(found[0].effect, Effect::SnapshotDropped);
        let text = found[0].effect.describe();
        assert!(text.contains("replays the WAL"), "{text}");
        assert!(text.contains("exemplars"), "{text}");
        // An older snapshot is not read by Prometheus (and is deleted by it): not checked.
        let old = d.path().join("chunk_snapshot.000002.0000001000");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("00000000"), b"garbage").unwrap();
        assert_eq!(deep(d.path()).len(), 1);
    }

    /// WAL damage before the newest chunk snapshot's position is not read by a Prometheus
    /// that loads the snapshot (seen with 2.42 and 3.16): the effect says so, and falls back
    /// to what Prometheus does without the snapshot when it will not load it.
    #[test]
    fn wal_damage_a_loadable_snapshot_covers_is_described_as_such() {
        let d = tempfile::tempdir().unwrap();
        let wal = d.path().join("wal");
        std::fs::create_dir_all(wal.join("checkpoint.00000002")).unwrap();
        let mut bad = wal_segment(&[b"series", b"samples"]);
        bad[10] ^= 0x01;
        std::fs::write(wal.join("checkpoint.00000002/00000000"), &bad).unwrap();
        std::fs::write(wal.join("00000003"), &bad).unwrap();
        std::fs::write(wal.join("00000004"), &bad).unwrap();
        std::fs::write(wal.join("00000005"), &bad).unwrap();
        let snap = d.path().join("chunk_snapshot.000004.0000032768");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("00000000"), wal_segment(&[b"snapshot"])).unwrap();
        let effects = |dir: &std::path::Path| -> Vec<(String, Effect)> {
            deep(dir)
                .into_iter()
                .map(|p| (p.path.to_string(), p.effect))
                .collect()
        };
        let covered = vec![
            ("wal/00000003".to_string(), Effect::CoveredBySnapshot),
            ("wal/00000004".into(), Effect::CoveredBySnapshot),
            ("wal/00000005".into(), Effect::DropsData),
            (
                "wal/checkpoint.00000002/00000000".into(),
                Effect::CheckpointCoveredBySnapshot,
            ),
        ];
        assert_eq!(effects(d.path()), covered);

        // Taken at the start of segment 4: the damage there is replayed.
        std::fs::rename(&snap, d.path().join("chunk_snapshot.000004.0000000000")).unwrap();
        let found = effects(d.path());
        assert_eq!(found[1], ("wal/00000004".into(), Effect::DropsData));
        assert_eq!(found[0].1, Effect::CoveredBySnapshot);
        std::fs::rename(d.path().join("chunk_snapshot.000004.0000000000"), &snap).unwrap();

        let uncovered = vec![
            ("wal/00000003".to_string(), Effect::DropsData),
            ("wal/00000004".into(), Effect::DropsData),
            ("wal/00000005".into(), Effect::DropsData),
            (
                "wal/checkpoint.00000002/00000000".into(),
                Effect::FailsStartWalDeleted,
            ),
        ];
        // A damaged head chunk file: Prometheus then replays the WAL from the checkpoint.
        // (A wrong magic: a zero one in the last file is a crash-cut file Prometheus deletes.)
        std::fs::create_dir_all(d.path().join("chunks_head")).unwrap();
        std::fs::write(
            d.path().join("chunks_head/000001"),
            [0xde, 0xad, 0, 0, 1, 0, 0, 0],
        )
        .unwrap();
        let mut found = effects(d.path());
        found.retain(|p| p.0.starts_with("wal/"));
        assert_eq!(found, uncovered);
        std::fs::remove_dir_all(d.path().join("chunks_head")).unwrap();

        // A damaged snapshot is dropped.
        std::fs::write(snap.join("00000000"), &bad).unwrap();
        let mut found = effects(d.path());
        found.retain(|p| p.0.starts_with("wal/"));
        assert_eq!(found, uncovered);
        std::fs::write(snap.join("00000000"), wal_segment(&[b"snapshot"])).unwrap();

        // A WAL that ends before the snapshot: Prometheus deletes the snapshot as outdated.
        std::fs::remove_file(wal.join("00000005")).unwrap();
        std::fs::remove_file(wal.join("00000004")).unwrap();
        assert_eq!(
            effects(d.path()),
            vec![uncovered[0].clone(), uncovered[3].clone()]
        );
    }
}

#[cfg(test)]
mod snapshot_position_tests {
    use super::*;
    use crate::source::Source;

    /// Found in review: in the snapshot's own WAL segment, damage before the snapshot's
    /// position (covered: Prometheus does not replay it) hid damage after it, which
    /// Prometheus replays and truncates at.
    #[test]
    fn damage_after_the_snapshot_position_is_found_behind_covered_damage() {
        let rec = |fill: u8| vec![fill; 100];
        let frag = |r: &[u8]| {
            let mut v = vec![1u8];
            v.extend_from_slice(&(r.len() as u16).to_be_bytes());
            v.extend_from_slice(&crc32c::crc32c(r).to_be_bytes());
            v.extend_from_slice(r);
            v
        };
        let mut seg = frag(&rec(1));
        let second = seg.len();
        seg.extend(frag(&rec(2)));
        seg.resize(32 * 1024, 0);
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("wal")).unwrap();
        // The snapshot was taken at the second record of segment 3.
        let snap = d.path().join(format!("chunk_snapshot.000003.{second:010}"));
        std::fs::create_dir_all(&snap).unwrap();
        let mut s = vec![1u8];
        s.extend_from_slice(&4u16.to_be_bytes());
        s.extend_from_slice(&crc32c::crc32c(b"snap").to_be_bytes());
        s.extend_from_slice(b"snap");
        s.resize(32 * 1024, 0);
        std::fs::write(snap.join("00000000"), &s).unwrap();
        seg[20] ^= 1; // in the first record: before the snapshot's position
        seg[second + 30] ^= 1; // in the second: after it
        std::fs::write(d.path().join("wal/00000003"), &seg).unwrap();
        let inv = crate::plan::inventory::scan(d.path()).unwrap();
        let found = run(
            &Source::Local(d.path().to_path_buf()),
            &inv,
            Depth::Deep,
            1,
            &crate::progress::Hidden,
            &AtomicBool::new(false),
        );
        let wal: Vec<&Problem> = found.iter().filter(|p| p.path == "wal/00000003").collect();
        assert_eq!(wal.len(), 2, "{found:?}");
        assert!(
            wal.iter()
                .any(|p| p.location.starts_with(&format!("offset {}", second))),
            "{found:?}"
        );
    }
}
