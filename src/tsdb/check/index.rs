//! A block `index`: header (magic 0xBAAAD700, version 1-3), TOC (last 52 bytes, CRC),
//! symbols, series entries (16-byte aligned, CRC over the body) and the chunk references in
//! them, postings lists (4-byte aligned, CRC) and the postings offset table (CRC; every offset
//! must start a postings list). Walked section by section through a bounded buffer.
//!
//! Startup reads and checks the header, the TOC, the symbols and the postings offset table;
//! series entries and postings lists are checked only when a query or compaction reads them.

use crate::source::Tree;
use std::io;

use super::chunks::MAX_PER_FILE;
use super::scan::{Scanner, be32, uvarint, varint};
use super::{Depth, Effect, Problem};
use crate::progress::Progress;

const MAGIC: u32 = 0xBAAAD700;
const TOC_LEN: u64 = 52;

struct Toc {
    symbols: u64,
    series: u64,
    label_indices: u64,
    label_indices_table: u64,
    postings: u64,
    postings_table: u64,
}

pub(super) fn check(
    root: &dyn Tree,
    rel: &str,
    segments: &[u64],
    depth: Depth,
    progress: &dyn Progress,
) -> io::Result<Vec<Problem>> {
    let mut s = Scanner::in_source(root, rel, depth)?;
    let mut out = Vec::new();
    let len = s.len();
    let fatal = |loc: &str, what: String| vec![Problem::new(rel, loc, what, Effect::FailsStart)];
    if len < 5 + TOC_LEN {
        return Ok(fatal(
            "header",
            format!("{len} bytes, too short for an index"),
        ));
    }
    let Some(h) = s.take(5)? else {
        return Ok(fatal("header", "truncated".into()));
    };
    if be32(h) != MAGIC {
        return Ok(fatal(
            "header",
            format!("magic {:#010x}, want {MAGIC:#010x}", be32(h)),
        ));
    }
    if !(1..=3).contains(&h[4]) {
        return Ok(fatal("header", format!("version {}, want 1 to 3", h[4])));
    }
    s.seek(len - TOC_LEN)?;
    let Some(t) = s.take(TOC_LEN as usize)? else {
        return Ok(fatal("TOC", "truncated".into()));
    };
    let u64at = |i: usize| u64::from_be_bytes(t[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
    let toc = Toc {
        symbols: u64at(0),
        series: u64at(1),
        label_indices: u64at(2),
        label_indices_table: u64at(3),
        postings: u64at(4),
        postings_table: u64at(5),
    };
    let (crc, stored) = (crc32c::crc32c(&t[..48]), be32(&t[48..]));
    if crc != stored {
        return Ok(fatal(
            "TOC",
            format!("CRC32C {crc:#010x} does not match the stored {stored:#010x}"),
        ));
    }
    let toc_start = len - TOC_LEN;
    for (name, off) in [
        ("symbols", toc.symbols),
        ("series", toc.series),
        ("postings", toc.postings),
        ("postings offset table", toc.postings_table),
    ] {
        if off >= toc_start {
            return Ok(fatal(
                "TOC",
                format!("{name} offset {off} lies beyond the sections ({toc_start})"),
            ));
        }
    }
    if depth == Depth::Cheap {
        return Ok(out);
    }

    // Symbols: checked at startup.
    s.seek(toc.symbols)?;
    if let Some(p) = crc_section(&mut s, "symbol table")? {
        return Ok(fatal(&format!("symbol table at offset {}", toc.symbols), p));
    }

    // Series, up to the next section.
    let series_end = [toc.label_indices, toc.postings]
        .into_iter()
        .filter(|&o| o > toc.series)
        .min()
        .unwrap_or(toc_start);
    let mut extra = 0usize;
    let mut report = |out: &mut Vec<Problem>, p: Problem| {
        if out.len() < MAX_PER_FILE {
            out.push(p);
        } else {
            extra += 1;
        }
    };
    let mut pos = toc.series;
    loop {
        pos = pos.div_ceil(16) * 16;
        if pos >= series_end {
            break;
        }
        s.seek(pos)?;
        let Some(n) = s.uvarint()? else {
            report(
                &mut out,
                Problem::new(
                    rel,
                    format!("series entry at offset {pos}"),
                    "truncated length",
                    Effect::QueryErrors,
                ),
            );
            break;
        };
        if n == 0 {
            if !s.zeros_until(series_end)? {
                report(
                    &mut out,
                    Problem::new(
                        rel,
                        format!("series section at offset {pos}"),
                        "zero-length entry followed by data",
                        Effect::QueryErrors,
                    ),
                );
            }
            break;
        }
        if s.pos().saturating_add(n).saturating_add(4) > series_end {
            report(
                &mut out,
                Problem::new(
                    rel,
                    format!("series entry at offset {pos}"),
                    format!("length {n} runs past the series section"),
                    Effect::QueryErrors,
                ),
            );
            break;
        }
        // An entry longer than the buffer (a series with very many chunks) is read whole, as
        // Prometheus reads it: its size is bounded by the series section.
        let read = |body: &[u8]| (crc32c::crc32c(body), chunk_refs(body));
        let found = if n <= super::scan::BUF as u64 {
            s.take(n as usize)?.map(read)
        } else {
            // A long entry is parsed only once its CRC matches: a garbage length must not
            // make the chunk references of megabytes of garbage be collected in memory.
            let body = s.pos();
            match s.crc_span(n)? {
                None => None,
                Some(crc) if s.peek(4)?.map(super::scan::be32) == Some(crc) => {
                    s.seek(body)?;
                    s.take_vec(n)?.map(|b| (crc, chunk_refs(&b)))
                }
                Some(crc) => Some((crc, None)),
            }
        };
        let Some((crc, refs)) = found else {
            break;
        };
        let Some(stored) = s.be32()? else { break };
        if crc != stored {
            report(
                &mut out,
                Problem::new(
                    rel,
                    format!("series entry at offset {pos} (series ref {})", pos / 16),
                    format!("CRC32C {crc:#010x} does not match the stored {stored:#010x}"),
                    Effect::QueryErrors,
                ),
            );
        } else {
            match refs {
                None => report(
                    &mut out,
                    Problem::new(
                        rel,
                        format!("series entry at offset {pos}"),
                        "body does not decode",
                        Effect::QueryErrors,
                    ),
                ),
                Some(refs) => {
                    if let Some(bad) = refs.iter().find(|&&r| !ref_ok(r, segments)) {
                        report(
                            &mut out,
                            Problem::new(
                                rel,
                                format!("series entry at offset {pos}"),
                                format!(
                                    "chunk reference {bad:#x} (segment {}, offset {}) points outside the chunk files",
                                    (bad >> 32) + 1,
                                    bad & 0xffff_ffff
                                ),
                                Effect::QueryErrors,
                            ),
                        );
                    }
                }
            }
        }
        pos = s.pos();
    }

    // Postings lists, up to the next section; remember where each starts.
    let postings_end = [toc.label_indices_table, toc.postings_table]
        .into_iter()
        .filter(|&o| o > toc.postings)
        .min()
        .unwrap_or(toc_start);
    let mut starts: Vec<u64> = Vec::new();
    let mut pos = toc.postings;
    loop {
        pos = pos.div_ceil(4) * 4;
        if pos >= postings_end {
            break;
        }
        s.seek(pos)?;
        let Some(n) = s.be32()? else { break };
        if n == 0 {
            if !s.zeros_until(postings_end)? {
                report(
                    &mut out,
                    Problem::new(
                        rel,
                        format!("postings at offset {pos}"),
                        "zero-length list followed by data",
                        Effect::QueryErrors,
                    ),
                );
            }
            break;
        }
        if s.pos() + n as u64 + 4 > postings_end {
            report(
                &mut out,
                Problem::new(
                    rel,
                    format!("postings list at offset {pos}"),
                    format!("length {n} runs past the postings section"),
                    Effect::QueryErrors,
                ),
            );
            break;
        }
        starts.push(pos);
        let Some(crc) = s.crc_span(n as u64)? else {
            break;
        };
        let Some(stored) = s.be32()? else { break };
        if crc != stored {
            report(
                &mut out,
                Problem::new(
                    rel,
                    format!("postings list at offset {pos}"),
                    format!("CRC32C {crc:#010x} does not match the stored {stored:#010x}"),
                    Effect::QueryErrors,
                ),
            );
        }
        pos = s.pos();
    }

    // Postings offset table: CRC checked at startup; every entry must point at a list.
    s.seek(toc.postings_table)?;
    if let Some(p) = crc_section(&mut s, "postings offset table")? {
        out.push(Problem::new(
            rel,
            format!("postings offset table at offset {}", toc.postings_table),
            p,
            Effect::FailsStart,
        ));
    } else {
        s.seek(toc.postings_table + 4)?;
        let count = s.be32()?.unwrap_or(0);
        for i in 0..count {
            let entry = read_offset_entry(&mut s)?;
            match entry {
                Some((name, value, off)) if starts.binary_search(&off).is_err() => {
                    report(
                        &mut out,
                        Problem::new(
                            rel,
                            format!("postings offset table entry {i}"),
                            format!(
                                "{name}={value:?} points at offset {off}, where no postings list starts"
                            ),
                            Effect::QueryErrors,
                        ),
                    );
                }
                Some(_) => {}
                None => {
                    out.push(Problem::new(
                        rel,
                        format!("postings offset table entry {i}"),
                        "does not decode",
                        Effect::FailsStart,
                    ));
                    break;
                }
            }
        }
    }
    if extra > 0 {
        out.push(Problem::new(
            rel,
            "",
            format!(
                "{extra} more {}",
                crate::units::noun_for(extra as u64, "damaged entry")
            ),
            Effect::QueryErrors,
        ));
    }
    progress.add_bytes(len);
    Ok(out)
}

/// Reads `BE32 len | len bytes | BE32 CRC` and returns a description if the CRC is wrong.
fn crc_section(s: &mut Scanner, what: &str) -> io::Result<Option<String>> {
    let Some(n) = s.be32()? else {
        return Ok(Some(format!("{what}: truncated length")));
    };
    if n as u64 + 4 > s.remaining() {
        return Ok(Some(format!(
            "{what}: length {n} runs past the end of the file"
        )));
    }
    let Some(crc) = s.crc_span(n as u64)? else {
        return Ok(Some(format!("{what}: truncated")));
    };
    let Some(stored) = s.be32()? else {
        return Ok(Some(format!("{what}: truncated CRC")));
    };
    Ok((crc != stored)
        .then(|| format!("{what}: CRC32C {crc:#010x} does not match the stored {stored:#010x}")))
}

/// One postings offset table entry: `uvarint n(=2) | name | value | uvarint64 offset`.
fn read_offset_entry(s: &mut Scanner) -> io::Result<Option<(String, String, u64)>> {
    let Some(_n) = s.uvarint()? else {
        return Ok(None);
    };
    let mut strs = Vec::with_capacity(2);
    for _ in 0..2 {
        let Some(l) = s.uvarint()? else {
            return Ok(None);
        };
        let Some(b) = s.take(l as usize)? else {
            return Ok(None);
        };
        strs.push(String::from_utf8_lossy(b).into_owned());
    }
    let Some(off) = s.uvarint()? else {
        return Ok(None);
    };
    let value = strs.pop().unwrap_or_default();
    let name = strs.pop().unwrap_or_default();
    Ok(Some((name, value, off)))
}

/// The chunk references of a series entry body, or `None` if it does not decode.
fn chunk_refs(body: &[u8]) -> Option<Vec<u64>> {
    let mut b = body;
    let next_u = |b: &mut &[u8]| -> Option<u64> {
        let (v, n) = uvarint(b)?;
        *b = &b[n..];
        Some(v)
    };
    let labels = next_u(&mut b)?;
    for _ in 0..labels.checked_mul(2)? {
        next_u(&mut b)?;
    }
    let chunks = next_u(&mut b)?;
    let mut refs = Vec::with_capacity(chunks.min(4096) as usize);
    if chunks == 0 {
        return Some(refs);
    }
    let (_mint, n) = varint(b)?;
    b = &b[n..];
    next_u(&mut b)?;
    let mut r = next_u(&mut b)?;
    refs.push(r);
    for _ in 1..chunks {
        next_u(&mut b)?;
        next_u(&mut b)?;
        let (d, n) = varint(b)?;
        b = &b[n..];
        r = r.checked_add_signed(d)?;
        refs.push(r);
    }
    Some(refs)
}

/// Whether a chunk reference (`segment index << 32 | offset`) lies inside the segments.
fn ref_ok(r: u64, segments: &[u64]) -> bool {
    let (seq, off) = ((r >> 32) as usize, r & 0xffff_ffff);
    segments
        .get(seq)
        .is_some_and(|&size| off >= 8 && off < size)
}
