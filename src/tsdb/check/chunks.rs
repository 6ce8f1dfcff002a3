//! Block chunk segments (`<ULID>/chunks/000001…`): 8-byte header (magic 0x85BD40DD,
//! version 1), then chunks of `uvarint len | encoding | data | CRC32C(encoding‖data)`.
//! Startup checks only the headers; chunk CRCs are checked when a query or compaction
//! reads the chunk.

use crate::source::Source;
use std::io;

use super::scan::Scanner;
use super::{Depth, Effect, Problem};
use crate::progress::Progress;

const MAGIC: u32 = 0x85BD40DD;
/// Problems reported per file before the rest are summarised.
pub(super) const MAX_PER_FILE: usize = 20;

pub(super) fn check(
    root: &Source,
    rel: &str,
    depth: Depth,
    progress: &dyn Progress,
) -> io::Result<Vec<Problem>> {
    let mut s = Scanner::in_source(root, rel, depth)?;
    let mut out = Vec::new();
    let p = |loc: String, what: String, effect: Effect| Problem::new(rel, loc, what, effect);
    if let Some(problem) = super::segment_header(&mut s, rel, MAGIC)? {
        return Ok(vec![problem]);
    }
    if depth == Depth::Cheap {
        return Ok(out);
    }
    let mut extra = 0usize;
    while s.remaining() > 0 {
        let off = s.pos();
        let Some(len) = s.uvarint()? else {
            out.push(p(
                format!("offset {off}"),
                "truncated chunk length".into(),
                Effect::QueryErrors,
            ));
            break;
        };
        if len == 0 {
            let end = s.len();
            if !s.zeros_until(end)? {
                out.push(p(
                    format!("offset {off}"),
                    "zero-length chunk followed by data".into(),
                    Effect::QueryErrors,
                ));
            }
            break;
        }
        if len >= super::scan::BUF as u64 || len.saturating_add(5) > s.remaining() {
            out.push(p(
                format!("offset {off}"),
                format!("chunk claims {len} bytes, more than the file holds"),
                Effect::QueryErrors,
            ));
            break;
        }
        let Some(body) = s.take(len as usize + 1)? else {
            break;
        };
        let (encoding, crc) = (body[0], crc32c::crc32c(body));
        let Some(stored) = s.be32()? else { break };
        let problem = if stored != crc {
            Some(format!(
                "chunk CRC32C {crc:#010x} does not match the stored {stored:#010x}"
            ))
        } else if !(1..=6).contains(&encoding) {
            Some(format!("unknown chunk encoding {encoding}"))
        } else {
            None
        };
        if let Some(what) = problem {
            if out.len() < MAX_PER_FILE {
                out.push(p(
                    format!("chunk at offset {off}"),
                    what,
                    Effect::QueryErrors,
                ));
            } else {
                extra += 1;
            }
        }
    }
    if extra > 0 {
        out.push(p(
            String::new(),
            format!("{extra} more damaged chunk(s)"),
            Effect::QueryErrors,
        ));
    }
    progress.add_bytes(s.len());
    Ok(out)
}
