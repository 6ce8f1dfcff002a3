//! Block chunk segments (`<ULID>/chunks/000001…`): 8-byte header (magic 0x85BD40DD,
//! version 1), then chunks of `uvarint len | encoding | data | CRC32C(encoding‖data)`.
//! Startup checks only the headers; chunk CRCs are checked when a query or compaction
//! reads the chunk.

use crate::source::Tree;
use std::io;

use super::scan::Scanner;
use super::{Depth, Effect, Problem};
use crate::progress::Progress;

const MAGIC: u32 = 0x85BD40DD;
/// Problems reported per file before the rest are summarised.
pub(super) const MAX_PER_FILE: usize = 20;

pub(super) fn check(
    root: &dyn Tree,
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
        // Prometheus's only limit: a chunk ends inside its segment (chunks of several MiB are
        // normal for large native histograms). The CRC is streamed, so memory stays bounded.
        if len.saturating_add(5) > s.remaining() {
            out.push(p(
                format!("offset {off}"),
                format!(
                    "chunk claims {len} bytes, more than the file holds ({} left)",
                    s.remaining()
                ),
                Effect::QueryErrors,
            ));
            break;
        }
        let Some(encoding) = s.take(1)?.map(|b| b[0]) else {
            break;
        };
        let Some(crc) = s.crc_span_from(crc32c::crc32c(&[encoding]), len)? else {
            break;
        };
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
            format!(
                "{extra} more {}",
                crate::units::noun_for(extra as u64, "damaged chunk")
            ),
            Effect::QueryErrors,
        ));
    }
    progress.add_bytes(s.len());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Source;
    use integer_encoding::VarInt;

    /// A block chunk: uvarint len | encoding | data | CRC32C(encoding‖data).
    pub(crate) fn chunk(encoding: u8, data: &[u8]) -> Vec<u8> {
        let mut v = (data.len() as u64).encode_var_vec();
        let mut body = vec![encoding];
        body.extend_from_slice(data);
        v.extend_from_slice(&body);
        v.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
        v
    }

    fn check_file(bytes: &[u8]) -> Vec<Problem> {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("b/chunks")).unwrap();
        std::fs::write(d.path().join("b/chunks/000001"), bytes).unwrap();
        check(
            &Source::Local(d.path().to_path_buf()),
            "b/chunks/000001",
            Depth::Deep,
            &crate::progress::Hidden,
        )
        .unwrap()
    }

    /// Regression: a chunk of 1 MiB or more (a large native histogram: Prometheus writes and
    /// reads them) was reported as "claims N bytes, more than the file holds", and nothing
    /// after it was checked: a damaged later chunk went unreported.
    #[test]
    fn chunks_of_several_mib_are_checked_like_small_ones_and_so_is_what_follows() {
        let big: Vec<u8> = (0..3_500_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut file = MAGIC.to_be_bytes().to_vec();
        file.extend_from_slice(&[1, 0, 0, 0]);
        file.extend(chunk(2, &big));
        file.extend(chunk(1, b"small xor chunk"));
        assert!(check_file(&file).is_empty(), "{:?}", check_file(&file));
        // A flipped byte in the small chunk after the big one is found.
        let at = file.len() - 8;
        file[at] ^= 0x40;
        let found = check_file(&file);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].problem.contains("does not match"), "{found:?}");
        // And one inside the big chunk too.
        file[at] ^= 0x40;
        file[2_000_000] ^= 0x01;
        let found = check_file(&file);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].problem.contains("does not match"), "{found:?}");
        // A chunk that really runs past its file is still reported.
        let mut cut = MAGIC.to_be_bytes().to_vec();
        cut.extend_from_slice(&[1, 0, 0, 0]);
        cut.extend(&chunk(2, &big)[..1_000_000]);
        let found = check_file(&cut);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].problem.contains("more than the file holds"),
            "{found:?}"
        );
    }
}
