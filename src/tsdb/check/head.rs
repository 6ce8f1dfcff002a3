//! `chunks_head/NNNNNN`: header (magic 0x0130BC91, version 1), then chunks of
//! `seriesRef(8) | mint(8) | maxt(8) | encoding(1) | uvarint len | data | CRC32C` with the CRC
//! over everything from seriesRef to the end of data. Files are preallocated, so data ends at
//! a zero tail. On a bad chunk Prometheus drops the head chunk files from that one on and
//! replays the WAL: what the WAL no longer holds is lost.

use crate::source::Source;
use std::io;

use super::chunks::MAX_PER_FILE;
use super::scan::{Scanner, uvarint};
use super::{Depth, Effect, Problem};
use crate::progress::Progress;

const MAGIC: u32 = 0x0130BC91;
/// seriesRef + mint + maxt + encoding.
const FIXED: usize = 25;

pub(super) fn check(
    root: &Source,
    rel: &str,
    depth: Depth,
    progress: &dyn Progress,
) -> io::Result<Vec<Problem>> {
    let mut s = Scanner::in_source(root, rel, depth)?;
    let p = |loc: String, what: String, effect: Effect| Problem::new(rel, loc, what, effect);
    if let Some(problem) = super::segment_header(&mut s, rel, MAGIC)? {
        return Ok(vec![problem]);
    }
    let mut out = Vec::new();
    if depth == Depth::Cheap {
        return Ok(out);
    }
    while s.remaining() >= (FIXED + 1 + 4) as u64 {
        let off = s.pos();
        let Some(fixed) = s.peek(FIXED)? else { break };
        if fixed[..24].iter().all(|&b| b == 0) {
            break; // the preallocated zero tail
        }
        let encoding = fixed[24] & 0x7f; // 0x80 marks out-of-order chunks
        let mut crc = crc32c::crc32c(fixed);
        s.take(FIXED)?;
        let Some(vb) = s.peek((s.remaining().min(10)) as usize)? else {
            break;
        };
        let Some((len, n)) = uvarint(vb) else {
            out.push(p(
                format!("chunk at offset {off}"),
                "length does not decode".into(),
                Effect::DropsData,
            ));
            break;
        };
        crc = crc32c::crc32c_append(crc, &vb[..n]);
        s.take(n)?;
        if len >= super::scan::BUF as u64 || len.saturating_add(4) > s.remaining() {
            out.push(p(
                format!("chunk at offset {off}"),
                format!("chunk claims {len} bytes, more than the file holds"),
                Effect::DropsData,
            ));
            break;
        }
        let Some(data) = s.take(len as usize)? else {
            break;
        };
        crc = crc32c::crc32c_append(crc, data);
        let Some(stored) = s.be32()? else { break };
        if stored != crc {
            out.push(p(
                format!("chunk at offset {off}"),
                format!("chunk CRC32C {crc:#010x} does not match the stored {stored:#010x}"),
                Effect::DropsData,
            ));
            break; // Prometheus stops reading the file here too.
        }
        if !(1..=6).contains(&encoding) && out.len() < MAX_PER_FILE {
            out.push(p(
                format!("chunk at offset {off}"),
                format!("unknown chunk encoding {encoding}"),
                Effect::DropsData,
            ));
        }
    }
    progress.add_bytes(s.len());
    Ok(out)
}
