//! `chunks_head/NNNNNN`: header (magic 0x0130BC91, version 1), then chunks of
//! `seriesRef(8) | mint(8) | maxt(8) | encoding(1) | uvarint len | data | CRC32C` with the CRC
//! over everything from seriesRef to the end of data. Files are preallocated, so data ends at
//! a zero tail. On a bad chunk Prometheus drops the head chunk files from that one on and
//! replays the WAL: what the WAL no longer holds is lost.

use crate::source::Tree;
use std::io;

use super::chunks::MAX_PER_FILE;
use super::scan::{Scanner, uvarint};
use super::{Depth, Effect, Problem};
use crate::progress::Progress;

const MAGIC: u32 = 0x0130BC91;
/// seriesRef + mint + maxt + encoding.
const FIXED: usize = 25;

pub(super) fn check(
    root: &dyn Tree,
    rel: &str,
    last: bool,
    depth: Depth,
    progress: &dyn Progress,
) -> io::Result<Vec<Problem>> {
    let mut s = Scanner::in_source(root, rel, depth)?;
    let p = |loc: String, what: String, effect: Effect| Problem::new(rel, loc, what, effect);
    // The last file cut short by a crash (under 4 bytes, or a zero magic) is deleted by
    // Prometheus at startup without complaint (head_chunks.go repairLastChunkFile): no damage.
    if last && s.peek(4)?.is_none_or(|m| m.iter().all(|&b| b == 0)) {
        progress.add_bytes(s.len());
        return Ok(Vec::new());
    }
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
        // What Prometheus does about any bad head chunk, in order or out of order: it
        // deletes the files from there on and replays the checkpoint, WAL and WBL (head.go
        // loadMmappedChunks → DeleteCorrupted).
        let effect = Effect::HeadReplayed;
        let mut crc = crc32c::crc32c(fixed);
        s.take(FIXED)?;
        let Some(vb) = s.peek((s.remaining().min(10)) as usize)? else {
            break;
        };
        let Some((len, n)) = uvarint(vb) else {
            out.push(p(
                format!("chunk at offset {off}"),
                "length does not decode".into(),
                effect,
            ));
            break;
        };
        crc = crc32c::crc32c_append(crc, &vb[..n]);
        s.take(n)?;
        // The only limit is the file's end; the CRC is streamed over any length.
        if len.saturating_add(4) > s.remaining() {
            out.push(p(
                format!("chunk at offset {off}"),
                format!(
                    "chunk claims {len} bytes, more than the file holds ({} left)",
                    s.remaining()
                ),
                effect,
            ));
            break;
        }
        let Some(c) = s.crc_span_from(crc, len)? else {
            break;
        };
        crc = c;
        let Some(stored) = s.be32()? else { break };
        if stored != crc {
            out.push(p(
                format!("chunk at offset {off}"),
                format!("chunk CRC32C {crc:#010x} does not match the stored {stored:#010x}"),
                effect,
            ));
            break; // Prometheus stops reading the file here too.
        }
        if !(1..=6).contains(&encoding) && out.len() < MAX_PER_FILE {
            out.push(p(
                format!("chunk at offset {off}"),
                format!("unknown chunk encoding {encoding}"),
                effect,
            ));
        }
    }
    progress.add_bytes(s.len());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Source;
    use integer_encoding::VarInt;

    /// A head chunk: seriesRef | mint | maxt | encoding | uvarint len | data | CRC32C.
    fn chunk(series: u64, encoding: u8, data: &[u8]) -> Vec<u8> {
        let mut v = series.to_be_bytes().to_vec();
        v.extend_from_slice(&1000i64.to_be_bytes());
        v.extend_from_slice(&2000i64.to_be_bytes());
        v.push(encoding);
        v.extend((data.len() as u64).encode_var_vec());
        v.extend_from_slice(data);
        let crc = crc32c::crc32c(&v);
        v.extend_from_slice(&crc.to_be_bytes());
        v
    }

    fn check_file(bytes: &[u8]) -> Vec<Problem> {
        check_as(bytes, false, Depth::Deep)
    }

    fn check_as(bytes: &[u8], last: bool, depth: Depth) -> Vec<Problem> {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("chunks_head")).unwrap();
        std::fs::write(d.path().join("chunks_head/000001"), bytes).unwrap();
        check(
            &Source::Local(d.path().to_path_buf()),
            "chunks_head/000001",
            last,
            depth,
            &crate::progress::Hidden,
        )
        .unwrap()
    }

    /// Found in review: the last head chunk file cut short by a crash (under 4 bytes, or a
    /// zero magic) is deleted by Prometheus at startup without complaint, but was reported as
    /// "fails to start" (a false alarm, by plan's cheap check too). Not the last one: damage.
    #[test]
    fn a_crash_cut_last_head_chunk_file_is_no_damage() {
        for bytes in [&b""[..], &b"\x01\x30"[..], &[0u8; 4096][..]] {
            for depth in [Depth::Cheap, Depth::Deep] {
                assert!(check_as(bytes, true, depth).is_empty(), "{bytes:?}");
                assert!(!check_as(bytes, false, depth).is_empty(), "{bytes:?}");
            }
        }
    }

    /// Regression: a head chunk of 1 MiB or more was reported as damage (a false no-go), and
    /// the chunks after it were not checked.
    #[test]
    fn head_chunks_of_several_mib_pass_and_what_follows_is_checked() {
        let big: Vec<u8> = (0..2_500_000u32).map(|i| (i * 13 % 251) as u8).collect();
        let mut file = MAGIC.to_be_bytes().to_vec();
        file.extend_from_slice(&[1, 0, 0, 0]);
        file.extend(chunk(1, 2, &big));
        file.extend(chunk(2, 1, b"xor"));
        file.extend(vec![0u8; 4096]); // the preallocated zero tail
        assert!(check_file(&file).is_empty(), "{:?}", check_file(&file));
        let at = file.len() - 4096 - 6;
        file[at] ^= 0x20;
        let found = check_file(&file);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].problem.contains("does not match"), "{found:?}");
    }
}
