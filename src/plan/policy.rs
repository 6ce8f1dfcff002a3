//! The plan's policy: which target entries are extraneous and what happens to each (the
//! quarantine classes), what each phase copies, what a selection leaves out, and how files
//! are counted. The decisions: the building is in the parent module, the rendering in
//! `render` (`extraneous` still reads the target's meta.json files and marks to decide).

use serde::Serialize;

use super::diff::{self, State};
use super::file::Migration;
use super::inventory::{self, FileInfo, Inventory};
use super::{BlockPlan, FilePlan, PlanStats};
use crate::relpath::RelPath;
use crate::units;

/// A target entry the plan owns that the source (selection) lacks.
#[derive(Debug, Clone, Serialize)]
pub struct Extraneous {
    /// Path relative to the TSDB root.
    pub rel: RelPath,
    /// Bytes.
    pub size: u64,
    /// What it is, which decides what happens to it.
    pub kind: ExtraKind,
}

/// Kinds of extraneous target entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtraKind {
    /// A file in `wal/`, `wbl/`, `chunks_head/`, `chunk_snapshot.*`: these are mirrored
    /// exactly, so the final phase quarantines it.
    Segment,
    /// A block the source has compacted into another one (a `compaction.parents` entry of a
    /// source block): the final phase quarantines it.
    CompactedAway,
    /// A block promigrate published (it carries [`crate::tsdb::COPIED_XATTR`]) that the source no
    /// longer has at all: retention deleted it, or it was dropped otherwise since it was
    /// copied. The final phase quarantines it, as the source did not keep it either.
    Dropped,
    /// Any other block: quarantined only with `deleteExtraneous`.
    Block,
    /// A file inside a block directory that the source block lacks: likewise.
    BlockFile,
}

impl Extraneous {
    /// Whether the final phase (and `all`) moves it to quarantine.
    pub fn quarantined(&self, delete_extraneous: bool) -> bool {
        delete_extraneous
            || matches!(
                self.kind,
                ExtraKind::Segment | ExtraKind::CompactedAway | ExtraKind::Dropped
            )
    }
}

/// Cost per phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Phases {
    /// Blocks.
    pub presync: PhaseCost,
    /// WAL, WBL, head chunks, and whatever blocks changed since the presync.
    #[serde(rename = "final")]
    pub final_: PhaseCost,
}

/// Bytes and files one phase copies, and how long that takes at its rate.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PhaseCost {
    /// Bytes to copy.
    pub bytes: u64,
    /// Files to copy.
    pub files: u64,
    /// At `rate` (seconds), if there is one.
    pub eta_seconds: Option<f64>,
    /// The rate of the estimate (bytes/s) and where it comes from (a limit, or what an
    /// earlier apply measured); `None`: no limit and nothing measured.
    pub rate: Option<Rate>,
}

/// A rate an estimate is made at, and where it comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rate {
    /// Bytes per second.
    pub bytes_per_second: u64,
    /// `transfer.bwlimit`, `transfer.finalBwlimit`, `--bwlimit`, or `measured by the apply
    /// of <time> (run record <file>)`.
    pub from: String,
    /// A limit the copy keeps to (not a measured rate).
    pub limit: bool,
}

/// What the selection leaves out of the source that the user did not name block by block
/// (`timeRange` leaves out blocks or the head; `excludeBlocks` leaves no block), or `None`.
pub(super) fn left_out(
    m: &Migration,
    src: &Inventory,
    selected: &[&inventory::Block],
    with_head: bool,
    newest: Option<i64>,
) -> Option<String> {
    let metas = || src.blocks.values().filter_map(|b| b.meta.as_ref().ok());
    let out_of_range: Vec<&inventory::Block> = src
        .blocks
        .values()
        .filter(|b| {
            b.meta.as_ref().is_ok_and(|meta| {
                m.time_range
                    .is_some_and(|tr| !tr.overlaps(meta.min_time, meta.max_time))
            })
        })
        .collect();
    let head_bytes: u64 = src.files.values().map(|f| f.size).sum();
    let head_out = !with_head && head_bytes > 0;
    let none = selected.is_empty() && !src.blocks.is_empty();
    if !none && out_of_range.is_empty() && !head_out {
        return None;
    }
    let requested = match m.time_range {
        Some(tr) => {
            let f = |v: Option<i64>| v.map_or("-".to_string(), units::ms_utc);
            format!("transfer.timeRange [{}, {})", f(tr.min), f(tr.max))
        }
        None => "transfer.excludeBlocks".to_string(),
    };
    let source_range = match (
        metas().map(|m| m.min_time).min(),
        metas().map(|m| m.max_time).max(),
    ) {
        (Some(a), Some(z)) => format!(
            "the source's blocks cover [{}, {})",
            units::ms_utc(a),
            units::ms_utc(z)
        ),
        _ => "the source has no readable block".to_string(),
    };
    let head = if head_bytes > 0 {
        format!(
            ", its head data (wal/, chunks_head/: {}) reaches {}",
            units::bytes(head_bytes),
            newest.map_or("-".into(), units::ms_utc)
        )
    } else {
        String::new()
    };
    let total: u64 = src.blocks.values().map(|b| b.size()).sum();
    if none {
        return Some(format!(
            "{requested} selects no block of the source ({} blocks, {}): {source_range}{head}; the copy would hold none of them",
            src.blocks.len(),
            units::bytes(total)
        ));
    }
    let mut parts = Vec::new();
    if !out_of_range.is_empty() {
        parts.push(format!(
            "{} of {} source blocks ({} of {})",
            out_of_range.len(),
            src.blocks.len(),
            units::bytes(out_of_range.iter().map(|b| b.size()).sum()),
            units::bytes(total)
        ));
    }
    if head_out {
        parts.push(format!(
            "the head data (wal/, chunks_head/, wbl/: {}; timeRange.max is before the newest data)",
            units::bytes(head_bytes)
        ));
    }
    Some(format!(
        "{requested} leaves out {}: {source_range}{head}",
        parts.join(" and ")
    ))
}

/// Why an extraneous entry is there, in words.
pub fn extra_reason(kind: ExtraKind) -> &'static str {
    match kind {
        ExtraKind::Segment => "not in the source; wal/ and chunks_head/ are mirrored",
        ExtraKind::CompactedAway => "compacted away in the source",
        ExtraKind::Dropped => {
            "no longer in the source (retention or compaction dropped it since promigrate copied it)"
        }
        ExtraKind::Block => "block not in the source selection",
        ExtraKind::BlockFile => "file the source block lacks",
    }
}

/// What each phase copies, per the plan's states.
pub fn phases(
    blocks: &[BlockPlan],
    files: &[FilePlan],
    presync: Option<Rate>,
    final_: Option<Rate>,
) -> Phases {
    let eta = |bytes: u64, r: &Option<Rate>| {
        r.as_ref()
            .map(|r| bytes as f64 / r.bytes_per_second.max(1) as f64)
    };
    let presync_bytes: u64 = blocks.iter().map(|b| b.copy_bytes).sum();
    let presync_files = blocks.iter().map(|b| b.copy.len() as u64).sum();
    let todo = files.iter().filter(|f| f.state != State::Identical);
    let final_bytes: u64 = todo.clone().map(|f| f.size).sum();
    Phases {
        presync: PhaseCost {
            bytes: presync_bytes,
            files: presync_files,
            eta_seconds: eta(presync_bytes, &presync),
            rate: presync,
        },
        final_: PhaseCost {
            bytes: final_bytes,
            files: todo.count() as u64,
            eta_seconds: eta(final_bytes, &final_),
            rate: final_,
        },
    }
}

/// Adds `files` to the plan's totals, each by its state.
pub(super) fn count<'a>(
    stats: &mut PlanStats,
    files: impl Iterator<Item = &'a FileInfo>,
    state: impl Fn(&FileInfo) -> State,
) {
    for f in files {
        stats.source_bytes += f.size;
        stats.source_files += 1;
        match state(f) {
            State::Identical => stats.identical_files += 1,
            s => {
                stats.copy_bytes += f.size;
                stats.copy_files += 1;
                if s == State::Differs {
                    stats.differing_files += 1;
                }
            }
        }
    }
}

/// Target entries owned by the plan's kinds (blocks, segment files and directories) that the
/// selection lacks. `in_source` names every source block (selected or not); `ancestry` holds
/// the ULIDs the selected blocks were compacted from.
#[allow(clippy::too_many_arguments)]
pub(super) fn extraneous(
    m: &Migration,
    survey: &dyn super::Survey,
    selected: &[&inventory::Block],
    files: &[FilePlan],
    dirs: &[RelPath],
    with_head: bool,
    tgt: &Inventory,
    in_source: &std::collections::BTreeSet<&str>,
    ancestry: &std::collections::BTreeSet<ulid::Ulid>,
) -> Vec<Extraneous> {
    // A target block was compacted away when the source no longer has it and the selected
    // blocks hold its data: it is a parent of one, or every level-1 block it holds is held by
    // them. A block still in the source (only not selected) never is.
    let compacted_away = |b: &inventory::Block| {
        if in_source.contains(b.dir.as_str()) {
            return false;
        }
        if ancestry.contains(&b.ulid) {
            return true;
        }
        let meta = survey.read(&format!("{}/meta.json", b.dir));
        match meta
            .ok()
            .and_then(|bytes| crate::tsdb::BlockMeta::parse(&bytes).ok())
        {
            Some((meta, _)) => {
                !meta.compaction.sources.is_empty()
                    && meta.compaction.sources.iter().all(|s| ancestry.contains(s))
            }
            None => false,
        }
    };
    let mut out = Vec::new();
    for (dir, b) in &tgt.blocks {
        match selected.iter().find(|s| &s.dir == dir) {
            None => out.push(Extraneous {
                rel: dir.into(),
                size: b.size(),
                kind: if compacted_away(b) {
                    ExtraKind::CompactedAway
                } else if !in_source.contains(dir.as_str()) && survey.is_copied(dir, &m.name) {
                    ExtraKind::Dropped
                } else {
                    ExtraKind::Block
                },
            }),
            Some(s) => out.extend(diff::block(s, Some(b)).extra_files.into_iter().map(|rel| {
                let size = b.files[&rel].size;
                Extraneous {
                    rel,
                    size,
                    kind: ExtraKind::BlockFile,
                }
            })),
        }
    }
    // WAL/WBL/head are mirrored, directories (checkpoint.N, chunk_snapshot.*) included: a
    // foreign checkpoint would make Prometheus skip every segment before it. Without the
    // head (timeRange.max set) none of it is copied, so none of it is extraneous either.
    if !with_head {
        return out;
    }
    let mut extra_dirs: Vec<&RelPath> = Vec::new();
    for d in &tgt.dirs {
        if !dirs.contains(d) && !crate::relpath::is_below_any(d, &extra_dirs) {
            extra_dirs.push(d);
        }
    }
    let under = crate::relpath::is_below;
    for d in &extra_dirs {
        let size = tgt
            .files
            .iter()
            .filter(|(r, _)| under(r, d))
            .map(|(_, f)| f.size)
            .sum();
        out.push(Extraneous {
            rel: (*d).clone(),
            size,
            kind: ExtraKind::Segment,
        });
    }
    for (rel, f) in &tgt.files {
        if !files.iter().any(|p| &p.rel == rel) && !extra_dirs.iter().any(|d| under(rel, d)) {
            out.push(Extraneous {
                rel: rel.clone(),
                size: f.size,
                kind: ExtraKind::Segment,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::MTime;

    fn block(ulid: &str, state: State, copy: &[(&str, u64)]) -> BlockPlan {
        BlockPlan {
            ulid: ulid.into(),
            min_time: 0,
            max_time: 1,
            level: 1,
            num_samples: 0,
            num_series: 0,
            size: copy.iter().map(|(_, n)| n).sum(),
            files: copy.len(),
            state,
            copy: copy
                .iter()
                .map(|(f, _)| format!("{ulid}/{f}").into())
                .collect(),
            copy_bytes: copy.iter().map(|(_, n)| n).sum(),
        }
    }

    fn file(rel: &str, size: u64, state: State) -> FilePlan {
        FilePlan {
            rel: rel.into(),
            size,
            state,
        }
    }

    #[test]
    fn mirrored_compacted_away_and_dropped_entries_are_quarantined_others_only_when_asked() {
        use ExtraKind::*;
        for (kind, always) in [
            (Segment, true),
            (CompactedAway, true),
            (Dropped, true),
            (Block, false),
            (BlockFile, false),
        ] {
            let e = Extraneous {
                rel: "x".into(),
                size: 1,
                kind,
            };
            assert_eq!(e.quarantined(false), always, "{kind:?}");
            assert!(e.quarantined(true), "{kind:?} with deleteExtraneous");
            assert!(!extra_reason(kind).is_empty());
        }
    }

    #[test]
    fn a_presync_copies_the_blocks_and_the_final_phase_the_files_that_differ() {
        let blocks = [
            block("A", State::Copy, &[("index", 10), ("chunks/000001", 90)]),
            block("B", State::Differs, &[("meta.json", 5)]),
            block("C", State::Identical, &[]),
        ];
        let files = [
            file("wal/00000001", 1000, State::Copy),
            file("wal/00000000", 500, State::Identical),
            file("chunks_head/000001", 300, State::Differs),
        ];
        let at = |r| {
            Some(Rate {
                bytes_per_second: r,
                from: "test".into(),
                limit: true,
            })
        };
        let p = phases(&blocks, &files, at(100), at(50));
        assert_eq!((p.presync.bytes, p.presync.files), (105, 3));
        assert_eq!((p.final_.bytes, p.final_.files), (1300, 2));
        assert_eq!(p.presync.eta_seconds, Some(1.05));
        assert_eq!(
            p.final_.eta_seconds,
            Some(26.0),
            "each phase at its own rate"
        );
        let p = phases(&blocks, &files, at(100), None);
        assert_eq!(p.final_.eta_seconds, None);
    }

    /// A block directory with a minimal meta.json (and a chunk segment).
    fn write_block(
        root: &std::path::Path,
        ulid: ulid::Ulid,
        parents: &[ulid::Ulid],
        sources: &[ulid::Ulid],
    ) {
        let dir = root.join(ulid.to_string());
        std::fs::create_dir_all(dir.join("chunks")).unwrap();
        let meta = serde_json::json!({
            "ulid": ulid.to_string(), "minTime": 0, "maxTime": 7_200_000, "version": 1,
            "stats": {"numSamples": 1, "numSeries": 1, "numChunks": 1},
            "compaction": {
                "level": if parents.is_empty() { 1 } else { 2 },
                "sources": sources.iter().map(|u| u.to_string()).collect::<Vec<_>>(),
                "parents": parents.iter().map(|u| serde_json::json!({"ulid": u.to_string()})).collect::<Vec<_>>(),
            },
        });
        std::fs::write(dir.join("meta.json"), meta.to_string()).unwrap();
        std::fs::write(dir.join("chunks/000001"), b"chunks").unwrap();
    }

    /// How target entries the selection lacks are sorted into the quarantine classes: a
    /// parent of a selected block is compacted away; one promigrate marked and the source
    /// dropped is dropped; any other block is foreign; a file a selected block lacks is a
    /// block file; WAL files and directories the source lacks are segments (a directory
    /// once, not its files), and none of them without the head.
    #[test]
    fn target_entries_the_selection_lacks_are_sorted_into_their_classes() {
        use std::collections::BTreeSet;
        let d = tempfile::tempdir().unwrap();
        let (src, mount) = (d.path().join("source"), d.path().join("pv"));
        let tgt_root = mount.join("prometheus-db");
        let u = |n: u64| ulid::Ulid::from_parts(n, 0);
        let (kept, parent, dropped, foreign, level1) = (u(1), u(2), u(3), u(4), u(5));
        // The source: `kept`, compacted from `parent` (whose data came from `level1`).
        write_block(&src, kept, &[parent], &[level1]);
        // The target: `kept` with a file too many, its parent, a block promigrate copied
        // that the source no longer has, a foreign one; a WAL segment and a checkpoint the
        // source lacks.
        write_block(&tgt_root, kept, &[parent], &[level1]);
        std::fs::write(tgt_root.join(kept.to_string()).join("extra"), b"x").unwrap();
        write_block(&tgt_root, parent, &[], &[level1]);
        write_block(&tgt_root, dropped, &[], &[dropped]);
        write_block(&tgt_root, foreign, &[], &[foreign]);
        std::fs::create_dir_all(tgt_root.join("wal/checkpoint.00000001")).unwrap();
        std::fs::write(tgt_root.join("wal/00000009"), b"seg").unwrap();
        std::fs::write(tgt_root.join("wal/checkpoint.00000001/00000000"), b"ckpt").unwrap();
        let plan = d.path().join("plan.yaml");
        std::fs::write(
            &plan,
            format!(
                "apiVersion: promigrate/v1\nkind: Migration\nmetadata:\n  name: m\nsource:\n  path: {}\ntarget:\n  path: {}\n  subPath: prometheus-db\n  securityContext:\n    runAsUser: 1000\n    fsGroup: 2000\n",
                src.display(),
                mount.display()
            ),
        )
        .unwrap();
        let m = crate::plan::file::load(&plan, &crate::plan::file::offline).unwrap();
        if crate::tsdb::mark_copied(&tgt_root.join(dropped.to_string()), &m.name).is_err() {
            eprintln!("no user xattrs on this filesystem: the dropped class is not checked");
        }
        let marked = crate::tsdb::is_copied(&tgt_root.join(dropped.to_string()), &m.name);
        let source = inventory::scan(&src).unwrap();
        let target = inventory::scan(&tgt_root).unwrap();
        let selected: Vec<&inventory::Block> = source.blocks.values().collect();
        let in_source: BTreeSet<&str> = source.blocks.keys().map(String::as_str).collect();
        let ancestry: BTreeSet<ulid::Ulid> = [parent, level1].into();
        // The source's head: wal/ with one segment.
        let (files, dirs) = ([file("wal/00000000", 3, State::Copy)], ["wal".into()]);
        let classes = |with_head: bool| -> Vec<(String, ExtraKind)> {
            let survey = m.survey();
            let mut v: Vec<(String, ExtraKind)> = extraneous(
                &m,
                survey.as_ref(),
                &selected,
                &files,
                &dirs,
                with_head,
                &target,
                &in_source,
                &ancestry,
            )
            .into_iter()
            .map(|e| (e.rel.to_string(), e.kind))
            .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let mut want = vec![
            (parent.to_string(), ExtraKind::CompactedAway),
            (
                dropped.to_string(),
                if marked {
                    ExtraKind::Dropped
                } else {
                    ExtraKind::Block
                },
            ),
            (foreign.to_string(), ExtraKind::Block),
            (format!("{kept}/extra"), ExtraKind::BlockFile),
        ];
        want.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(classes(false), want);
        want.extend([
            ("wal/00000009".to_string(), ExtraKind::Segment),
            ("wal/checkpoint.00000001".to_string(), ExtraKind::Segment),
        ]);
        want.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(classes(true), want);
    }

    #[test]
    fn counting_adds_every_file_to_the_source_and_the_others_to_what_is_copied() {
        let info = |rel: &str, size: u64| FileInfo {
            rel: rel.into(),
            size,
            mtime: MTime { sec: 0, nsec: 0 },
            mode: 0o100644,
            uid: 0,
            gid: 0,
        };
        let files = [info("a", 1), info("b", 10), info("c", 100)];
        let mut stats = PlanStats::default();
        count(&mut stats, files.iter(), |f| match f.rel.as_str() {
            "a" => State::Identical,
            "b" => State::Copy,
            _ => State::Differs,
        });
        assert_eq!((stats.source_files, stats.source_bytes), (3, 111));
        assert_eq!((stats.copy_files, stats.copy_bytes), (2, 110));
        assert_eq!((stats.identical_files, stats.differing_files), (1, 1));
    }
}
