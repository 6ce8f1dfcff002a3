//! WAL and WBL segments (`wal/00000012`, `wal/checkpoint.N/…`, `wbl/…`): 32 KiB pages of record
//! fragments `type(1) | BE16 len | BE32 CRC32C(data) | data`; type low bits 1 full, 2 first,
//! 3 middle, 4 last, 0 = zero padding to the page end; 0x08 snappy, 0x10 zstd. Records never
//! cross segments. Prometheus repairs a damaged WAL at startup by truncating at the damage and
//! deleting later segments: the data there is lost. A damaged checkpoint is a hard error: it
//! does not start ("requires user intervention"), and the WAL repair it attempts first
//! deletes the WAL segments (seen with 2.42 and 3.16). With `memory-snapshot-on-shutdown`,
//! Prometheus loads the newest chunk snapshot and replays only the WAL after its position:
//! damage before it is not read at startup ([`Covered`]).

use crate::source::Tree;
use std::io;

use super::scan::{Scanner, be32};
use super::{Depth, Effect, Problem};
use crate::progress::Progress;

const PAGE: u64 = 32 * 1024;
const HEADER: u64 = 7;

/// Which WAL-format directory a segment is in: what Prometheus does about damage differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// `wal/` or `wbl/`: repaired by truncation.
    Log,
    /// `wal/checkpoint.N/`: a hard error.
    Checkpoint,
    /// `chunk_snapshot.N.M/`: dropped, and the WAL replayed instead.
    Snapshot,
}

/// How much of a segment the newest chunk snapshot covers (what Prometheus does not replay
/// when it loads that snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Covered {
    /// Nothing.
    No,
    /// All of it: a WAL segment before the snapshot's, or a checkpoint older than it.
    Whole,
    /// The bytes before this offset (the snapshot's own segment).
    Before(u64),
}

pub(super) fn check(
    root: &dyn Tree,
    rel: &str,
    last: bool,
    kind: Kind,
    covered: Covered,
    depth: Depth,
    progress: &dyn Progress,
) -> io::Result<Vec<Problem>> {
    // Only the live log can end in a torn write (a server that was not stopped cleanly);
    // checkpoints and snapshots are written whole under a temporary name first.
    let checkpoint = kind != Kind::Log;
    if depth == Depth::Cheap {
        return Ok(Vec::new());
    }
    let mut s = Scanner::in_source(root, rel, super::Depth::Deep)?;
    let len = s.len();
    let bad = |off: u64, what: String| {
        let covered = match covered {
            Covered::No => false,
            Covered::Whole => true,
            Covered::Before(end) => off < end,
        };
        vec![Problem::new(
            rel,
            format!("offset {off} (page {})", off / PAGE),
            what,
            match (kind, covered) {
                (Kind::Log, false) => Effect::DropsData,
                (Kind::Log, true) => Effect::CoveredBySnapshot,
                (Kind::Checkpoint, false) => Effect::FailsStartWalDeleted,
                (Kind::Checkpoint, true) => Effect::CheckpointCoveredBySnapshot,
                (Kind::Snapshot, _) => Effect::SnapshotDropped,
            },
        )]
    };
    let mut out = Vec::new();
    if let Some((off, what)) = scan(&mut s, 0, last, checkpoint)? {
        out.extend(bad(off, what));
        // Damage before the snapshot's position in its own segment is covered; what comes
        // after it is replayed, so it is read on from there.
        if let Covered::Before(from) = covered
            && off < from
            && let Some((off, what)) = scan(&mut s, from, last, checkpoint)?
        {
            out.extend(bad(off, what));
        }
    }
    progress.add_bytes(len);
    Ok(out)
}

/// Reads record fragments from `start` (a record boundary) to the end of the segment:
/// the first damage found, as (offset, what), or `None`.
fn scan(
    s: &mut Scanner,
    start: u64,
    last: bool,
    checkpoint: bool,
) -> io::Result<Option<(u64, String)>> {
    let len = s.len();
    let bad = |off: u64, what: String| Some((off, what));
    // Inside a multi-fragment record (after `first`, before `last`)?
    let mut open_record = false;
    let mut page_start = start - start % PAGE;
    let mut first = true;
    while page_start < len {
        let page_end = (page_start + PAGE).min(len);
        s.seek(if first { start } else { page_start })?;
        first = false;
        while s.pos() < page_end {
            let off = s.pos();
            if page_end - off < HEADER {
                if !s.zeros_until(page_end)? {
                    return Ok(bad(
                        off,
                        "non-zero bytes in the padding at the end of a page".into(),
                    ));
                }
                break;
            }
            let Some(h) = s.take(HEADER as usize)? else {
                break;
            };
            let (typ, n, stored) = (
                h[0],
                u16::from_be_bytes([h[1], h[2]]) as u64,
                be32(&h[3..7]),
            );
            if typ == 0 {
                if h[1..].iter().any(|&b| b != 0) || !s.zeros_until(page_end)? {
                    return Ok(bad(off, "non-zero bytes in a padded page".into()));
                }
                break;
            }
            if typ & !0x1f != 0 {
                return Ok(bad(off, format!("unknown record flags {typ:#04x}")));
            }
            if n > page_end - s.pos() {
                let what = if last && !checkpoint && page_end == len {
                    "torn record at the end of the last segment (the server was not stopped cleanly)".to_string()
                } else {
                    format!("record fragment of {n} bytes runs past its page")
                };
                return Ok(bad(off, what));
            }
            let Some(crc) = s.crc_span(n)? else { break };
            if crc != stored {
                return Ok(bad(
                    off,
                    format!("record CRC32C {crc:#010x} does not match the stored {stored:#010x}"),
                ));
            }
            let seq_ok = match typ & 0x07 {
                1 => !open_record,
                2 => !std::mem::replace(&mut open_record, true),
                3 => open_record,
                4 => std::mem::replace(&mut open_record, false),
                _ => false,
            };
            if !seq_ok {
                return Ok(bad(
                    off,
                    format!("record fragment of type {} out of sequence", typ & 0x07),
                ));
            }
        }
        page_start = page_end;
    }
    if open_record {
        let what = if last && !checkpoint {
            "the last record is incomplete (torn write)"
        } else {
            "a record continues past the end of the segment (records never cross segments)"
        };
        return Ok(bad(len, what.into()));
    }
    Ok(None)
}
