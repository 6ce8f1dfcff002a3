//! Prometheus TSDB on-disk layout: which entries of a data directory are data to copy,
//! which are runtime or transient files to leave out, and the block `meta.json` model.
//! Facts from prometheus/prometheus `tsdb/` and its `tsdb/docs/format/`.

pub mod check;
pub mod meta;

use ulid::Ulid;

pub use meta::BlockMeta;

/// Suffix of promigrate's own temporary files (renamed into place once complete).
pub const TMP_SUFFIX: &str = ".promigrate-tmp";
/// Directory under the target root where new blocks are assembled before being renamed in.
pub const STAGING_DIR: &str = ".promigrate-staging";
/// Directory under the target root where extraneous entries are moved (never deleted).
pub const QUARANTINE_DIR: &str = ".promigrate-quarantine";
/// File under the target root that a running apply holds an exclusive flock on.
pub const LOCK_FILE: &str = ".promigrate-lock";
/// Extended attribute promigrate sets on every block directory it publishes (the value is the
/// migration's name): a target block the source no longer has (retention, compaction) is
/// promigrate's to quarantine only when it carries this mark.
pub const COPIED_XATTR: &str = "user.promigrate.copied";

/// Marks a block directory as published by promigrate for migration `name`.
pub fn mark_copied(dir: &std::path::Path, name: &str) -> std::io::Result<()> {
    xattr::set(dir, COPIED_XATTR, name.as_bytes())
}

/// Whether a block directory carries promigrate's mark for migration `name` (see
/// [`COPIED_XATTR`]): a block another migration copied onto the same volume is not this
/// one's to move.
pub fn is_copied(dir: &std::path::Path, name: &str) -> bool {
    matches!(xattr::get(dir, COPIED_XATTR), Ok(Some(v)) if v == name.as_bytes())
}

/// What a top-level entry of a TSDB data directory is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootEntry {
    /// A persistent block: a directory named by a ULID.
    Block(Ulid),
    /// A directory whose files are copied as they are: `wal`, `wbl`, `chunks_head`,
    /// `chunk_snapshot.*`.
    SegmentDir,
    /// A top-level file that is data (`thanos.shipper.json`).
    DataFile,
    /// Created by the running server and recreated at start (`lock`, `queries.active`):
    /// never copied, but on the target it must be writable by Prometheus.
    Runtime,
    /// Not copied, with the reason.
    Excluded(&'static str),
    /// promigrate's own staging, quarantine or temporary entries.
    Ours,
    /// Anything else; never copied, never touched on the target.
    Unknown,
}

/// Classifies a top-level entry of a data directory by name and type.
pub fn classify_root(name: &str, is_dir: bool) -> RootEntry {
    if name == STAGING_DIR
        || name == QUARANTINE_DIR
        || name == LOCK_FILE
        || name.ends_with(TMP_SUFFIX)
    {
        return RootEntry::Ours;
    }
    if let Some(reason) = transient_reason(name) {
        return RootEntry::Excluded(reason);
    }
    match (name, is_dir) {
        ("lock" | "queries.active", false) => RootEntry::Runtime,
        ("snapshots", true) => {
            RootEntry::Excluded("admin-API snapshots (hard links) are not copied")
        }
        ("wal" | "wbl" | "chunks_head", true) => RootEntry::SegmentDir,
        (n, true) if n.starts_with("chunk_snapshot.") => RootEntry::SegmentDir,
        ("thanos.shipper.json", false) => RootEntry::DataFile,
        (n, true) if n.len() == 26 => match Ulid::from_string(n) {
            Ok(u) => RootEntry::Block(u),
            Err(_) => RootEntry::Unknown,
        },
        _ => RootEntry::Unknown,
    }
}

/// Why an entry inside a data directory is transient (deleted by Prometheus at start),
/// or `None` if it is not.
pub fn transient_reason(name: &str) -> Option<&'static str> {
    if name.ends_with(".tmp-for-creation") {
        Some("block being created (.tmp-for-creation)")
    } else if name.ends_with(".tmp-for-deletion") {
        Some("block being deleted (.tmp-for-deletion)")
    } else if name.ends_with(".tmp") {
        Some("temporary file or checkpoint (.tmp)")
    } else if name.ends_with(".repair") {
        Some("temporary repair file (.repair)")
    } else if name.starts_with("index_tmp_") {
        Some("temporary index (index_tmp_*)")
    } else {
        None
    }
}

/// Parses a zero-padded segment file name (`00000012`, `000003`) into its number.
pub fn segment_number(name: &str) -> Option<u64> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Like Go's strconv.Atoi on 64-bit: a number past i64::MAX is not a segment.
    name.parse::<i64>().ok().map(|n| n as u64)
}

/// Segment directories that must appear whole or not at all: WAL checkpoints and chunk
/// snapshots (Prometheus loads the newest one it finds).
pub fn staged_as_a_whole(dir: &str) -> bool {
    let checkpoint = dir
        .strip_prefix("wal/")
        .or_else(|| dir.strip_prefix("wbl/"))
        .is_some_and(|n| n.starts_with("checkpoint.") && !n.contains('/'));
    checkpoint || (dir.starts_with("chunk_snapshot.") && !dir.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_prometheus() {
        let u = "01HZX3J8Q4N2V5W6X7Y8Z9A0BC";
        assert_eq!(
            classify_root(u, true),
            RootEntry::Block(Ulid::from_string(u).unwrap())
        );
        assert!(matches!(
            classify_root(&format!("{u}.tmp-for-creation"), true),
            RootEntry::Excluded(_)
        ));
        assert!(matches!(
            classify_root(&format!("{u}.tmp-for-deletion"), true),
            RootEntry::Excluded(_)
        ));
        assert!(matches!(
            classify_root(&format!("{u}.tmp"), true),
            RootEntry::Excluded(_)
        ));
        assert_eq!(classify_root("lock", false), RootEntry::Runtime);
        assert_eq!(classify_root("queries.active", false), RootEntry::Runtime);
        assert!(matches!(
            classify_root("snapshots", true),
            RootEntry::Excluded(_)
        ));
        assert_eq!(classify_root("wal", true), RootEntry::SegmentDir);
        assert_eq!(classify_root("chunks_head", true), RootEntry::SegmentDir);
        assert_eq!(
            classify_root("chunk_snapshot.000001.0000000042", true),
            RootEntry::SegmentDir
        );
        assert_eq!(classify_root("lost+found", true), RootEntry::Unknown);
        assert_eq!(
            classify_root(u, false),
            RootEntry::Unknown,
            "a file named like a ULID is no block"
        );
        assert_eq!(classify_root(STAGING_DIR, true), RootEntry::Ours);
        assert_eq!(classify_root("x.promigrate-tmp", false), RootEntry::Ours);
    }

    #[test]
    fn segment_names() {
        assert_eq!(segment_number("00000012"), Some(12));
        assert_eq!(segment_number("000001"), Some(1));
        assert_eq!(segment_number("checkpoint.000001"), None);
        assert_eq!(segment_number(""), None);
    }
}
