//! Opt-in repairs of a broken file sequence in `chunks_head/` or `wal/` (`transfer.headRepair:
//! dropUnsequential`), as data for the plan: which files to leave out and what that costs.
//! Nothing here writes; the source is never touched. The copy then holds only the contiguous
//! run of files after the last gap.

use crate::source::Tree;
use std::io;

use super::scan::{Scanner, uvarint};
use crate::plan::inventory::{self, Inventory};
use crate::units;

/// A repair the plan will make.
#[derive(Debug, Clone)]
pub struct Repair {
    /// Paths (relative to the TSDB root) left out of the copy.
    pub dropped: Vec<String>,
    /// What is dropped and what that costs, for the plan.
    pub describe: String,
}

/// Plans dropping the files of `dir` before its last numbering gap. For `wal` this is only
/// allowed when a checkpoint covers every dropped segment and the rest follows it.
/// `Ok(Err(why))` when the repair is not possible.
pub fn drop_before_last_gap(
    root: &dyn Tree,
    inv: &Inventory,
    dir: &str,
) -> io::Result<Result<Repair, String>> {
    let segs = inventory::segments(inv.files.values(), dir);
    let Some(cut) = (1..segs.len())
        .rev()
        .find(|&i| segs[i - 1].0.checked_add(1) != Some(segs[i].0))
    else {
        return Ok(Err("no gap found".into()));
    };
    let (before, after) = segs.split_at(cut);
    let width = if dir == "chunks_head" { 6 } else { 8 };
    let name = |n: u64| format!("{dir}/{n:0width$}");
    let dropped: Vec<String> = before.iter().map(|s| name(s.0)).collect();
    let bytes: u64 = before.iter().map(|s| s.2).sum();
    let range = format!(
        "{}..{} ({}, {}), keeping {}..{}",
        name(before[0].0),
        name(before[before.len() - 1].0),
        crate::units::count(before.len() as u64, "file"),
        units::bytes(bytes),
        name(after[0].0),
        name(after[after.len() - 1].0)
    );
    if dir == "wal" {
        let checkpoint = inv
            .dirs
            .iter()
            .filter_map(|d| d.strip_prefix("wal/checkpoint.")?.parse::<u64>().ok())
            .filter(|&n| n >= before[before.len() - 1].0 && after[0].0 <= n + 1)
            .max();
        return Ok(match checkpoint {
            Some(n) => Ok(Repair {
                dropped,
                describe: format!(
                    "wal/: dropping {range}; checkpoint.{n:08} already holds what the dropped segments held, so nothing is lost"
                ),
            }),
            None => Err(format!(
                "the segments before the gap ({range}) are not covered by a checkpoint, so dropping them would lose data; restore the missing segments on the source"
            )),
        });
    }
    let mut lost: Option<(i64, i64)> = None;
    for rel in &dropped {
        if let Some((a, z)) = head_time_range(root, rel)? {
            lost = Some(lost.map_or((a, z), |(x, y)| (x.min(a), y.max(z))));
        }
    }
    // Seen with 3.16 (tests/deep.rs): with its chunk snapshot loaded, Prometheus replayed no
    // WAL before it and served 34 of 53 samples of a series in that range; without the
    // feature the WAL replay gave back all 53.
    let snapshot = match super::newest_snapshot(inv) {
        Some(snap) => format!(
            " and Prometheus replays it: with memory-snapshot-on-shutdown it loads {snap} instead and replays no WAL before it"
        ),
        None => String::new(),
    };
    let cost = match lost {
        Some((a, z)) => format!(
            "head chunks from {} to {} UTC are lost unless the WAL still holds them{snapshot}",
            units::ms_utc(a),
            units::ms_utc(z)
        ),
        None => "the dropped files hold no chunks".into(),
    };
    Ok(Ok(Repair {
        dropped,
        describe: format!("chunks_head/: dropping {range}; {cost}"),
    }))
}

/// The min and max sample time of the chunks in a head chunk file (no CRC checks).
pub fn head_time_range(root: &dyn Tree, rel: &str) -> io::Result<Option<(i64, i64)>> {
    let mut s = Scanner::in_source(root, rel, super::Depth::Deep)?;
    if s.take(8)?.is_none() {
        return Ok(None);
    }
    let mut range: Option<(i64, i64)> = None;
    while let Some(fixed) = s.take(25)? {
        if fixed[..24].iter().all(|&b| b == 0) {
            break;
        }
        let mint = i64::from_be_bytes(fixed[8..16].try_into().unwrap_or_default());
        let maxt = i64::from_be_bytes(fixed[16..24].try_into().unwrap_or_default());
        range = Some(range.map_or((mint, maxt), |(a, z)| (a.min(mint), z.max(maxt))));
        let Some(vb) = s.peek((s.remaining().min(10)) as usize)? else {
            break;
        };
        let Some((len, n)) = uvarint(vb) else { break };
        let next = s.pos() + n as u64 + len.saturating_add(4);
        if next > s.len() {
            break;
        }
        s.seek(next)?;
    }
    Ok(range)
}
