//! `<ULID>/tombstones`: magic 0x0130BA30, version 1, entries, then CRC32C over the entries
//! (bytes 5 to size-4). A missing file means no tombstones; a damaged one fails startup.

use crate::source::Tree;
use std::io;

use super::scan::{Scanner, be32};
use super::{Effect, Problem};

const MAGIC: u32 = 0x0130BA30;

pub(super) fn check(root: &dyn Tree, rel: &str) -> io::Result<Vec<Problem>> {
    let mut s = Scanner::in_source(root, rel, super::Depth::Cheap)?;
    let p = |loc: &str, what: String| vec![Problem::new(rel, loc, what, Effect::FailsStart)];
    let len = s.len();
    if len < 9 {
        return Ok(p(
            "header",
            format!("{len} bytes, shorter than header and CRC (9)"),
        ));
    }
    let Some(h) = s.take(5)? else {
        return Ok(p("header", "truncated".into()));
    };
    if be32(h) != MAGIC {
        return Ok(p(
            "header",
            format!("magic {:#010x}, want {MAGIC:#010x}", be32(h)),
        ));
    }
    if h[4] != 1 {
        return Ok(p("header", format!("version {}, want 1", h[4])));
    }
    let Some(crc) = s.crc_span(len - 9)? else {
        return Ok(p("entries", "truncated".into()));
    };
    let Some(stored) = s.be32()? else {
        return Ok(p("CRC", "truncated".into()));
    };
    if crc != stored {
        return Ok(p(
            "entries",
            format!("CRC32C {crc:#010x} does not match the stored {stored:#010x}"),
        ));
    }
    Ok(Vec::new())
}
