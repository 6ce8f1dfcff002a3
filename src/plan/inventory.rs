//! Inventory of a TSDB data directory (source or target): blocks with their meta.json and
//! files, the WAL/WBL/head segment files, runtime files, and everything left out with a reason.
//! Reads only: it opens nothing for writing and follows no symlink below the root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use ulid::Ulid;

use crate::fsutil::MTime;
use crate::relpath::RelPath;
use crate::source::{Kind, Source, Stat, Tree};
use crate::tsdb::{self, BlockMeta, RootEntry};

/// A regular file, by its path relative to the TSDB root (`/`-separated).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileInfo {
    /// Path relative to the TSDB root.
    pub rel: RelPath,
    /// Size in bytes.
    pub size: u64,
    /// Modification time.
    pub mtime: MTime,
    /// `st_mode`.
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
}

impl FileInfo {
    fn new(rel: impl Into<RelPath>, m: &Stat) -> Self {
        FileInfo {
            rel: rel.into(),
            size: m.size,
            mtime: m.mtime,
            mode: m.mode,
            uid: m.uid,
            gid: m.gid,
        }
    }

    /// A file entry for unit tests: `rel`, `size`, mtime `sec` (whole seconds), 0644 root.
    #[cfg(test)]
    pub fn for_test(rel: &str, size: u64, sec: i64) -> Self {
        FileInfo {
            rel: rel.into(),
            size,
            mtime: crate::fsutil::MTime { sec, nsec: 0 },
            mode: 0o644,
            uid: 0,
            gid: 0,
        }
    }

    /// The quick check (like rsync's): same size and modification time.
    pub fn same_as(&self, other: &FileInfo) -> bool {
        self.size == other.size && self.mtime.same(other.mtime)
    }
}

/// A persistent block directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Block {
    /// Directory name (a ULID).
    pub dir: String,
    /// The ULID the directory name spells.
    pub ulid: Ulid,
    /// Parsed meta.json, or why it could not be read.
    pub meta: Result<BlockMeta, String>,
    /// meta.json as a JSON value, for field-by-field comparison.
    pub meta_json: Option<Value>,
    /// Files by path relative to the TSDB root (`<ULID>/chunks/000001`).
    pub files: BTreeMap<RelPath, FileInfo>,
    /// Sub-directories relative to the TSDB root (`<ULID>/chunks`).
    pub dirs: Vec<RelPath>,
}

impl Block {
    /// Total bytes of the block's files.
    pub fn size(&self) -> u64 {
        self.files.values().map(|f| f.size).sum()
    }
}

/// An entry that is not copied, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Skipped {
    /// Path relative to the TSDB root.
    pub rel: RelPath,
    /// Why it is left out.
    pub reason: String,
}

/// Everything found under one TSDB root.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Inventory {
    /// The directory scanned.
    pub root: PathBuf,
    /// Whether the root exists at all (a target may not yet).
    pub exists: bool,
    /// Blocks by directory name.
    pub blocks: BTreeMap<String, Block>,
    /// Non-block data files (`wal/00000003`, `chunks_head/000001`, `thanos.shipper.json`).
    pub files: BTreeMap<RelPath, FileInfo>,
    /// Non-block data directories (`wal`, `wal/checkpoint.00000002`, `chunks_head`).
    pub dirs: Vec<RelPath>,
    /// `lock`, `queries.active`.
    pub runtime: Vec<FileInfo>,
    /// Entries left out by TSDB rules (transient, snapshots, symlinks, unreadable names).
    pub excluded: Vec<Skipped>,
    /// Top-level entries that are not TSDB data (`lost+found`, stray files).
    pub unknown: Vec<String>,
    /// promigrate's own temporary files and staging directories from an interrupted run.
    pub leftovers: Vec<RelPath>,
    /// Whether `.promigrate-quarantine/` exists.
    pub has_quarantine: bool,
    /// Owner and mode of the root and of every block, segment directory, data and runtime
    /// file (the entries promigrate owns), from the same scan.
    pub attrs: Vec<Attr>,
}

impl Inventory {
    /// Every data file: the blocks' (in block order), then the head's and WAL's.
    pub fn data_files(&self) -> impl Iterator<Item = &FileInfo> {
        self.blocks
            .values()
            .flat_map(|b| b.files.values())
            .chain(self.files.values())
    }
}

/// Owner and mode of one entry, as seen by the scan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attr {
    /// Path relative to the TSDB root (`""` for the root).
    pub rel: RelPath,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// `st_mode`, file type bits included.
    pub mode: u32,
}

impl Attr {
    fn new(rel: impl Into<RelPath>, m: &Stat) -> Self {
        Attr {
            rel: rel.into(),
            uid: m.uid,
            gid: m.gid,
            mode: m.mode,
        }
    }
}

/// A failure to read a directory, naming the path.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {cause}{}", advice(.cause))]
pub struct ScanError {
    /// The path that failed.
    pub path: PathBuf,
    /// The cause (in the message, so not a `#[source]`).
    pub cause: std::io::Error,
}

/// What to do about a failed read, unless the cause says it itself: an SSH refusal (host
/// key, authentication) has nothing to do with the path or its permissions.
fn advice(cause: &std::io::Error) -> &'static str {
    if cause
        .get_ref()
        .is_some_and(|e| e.is::<crate::ssh::SshError>())
    {
        ""
    } else {
        "; check that it exists and that this user may read it"
    }
}

fn err(path: &Path, cause: std::io::Error) -> ScanError {
    ScanError {
        path: path.to_path_buf(),
        cause,
    }
}

/// Whether a scan reads each block's meta.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Depth {
    /// Names, sizes, times and modes, plus every meta.json (for plan and verify).
    WithMeta,
    /// Names, sizes, times and modes only (for walking the tree, e.g. ownership).
    Layout,
}

/// Scans a TSDB root, reading every block's meta.json. A missing root gives an empty
/// inventory with `exists == false`.
pub fn scan(root: &Path) -> Result<Inventory, ScanError> {
    scan_with(root, Depth::WithMeta)
}

/// Scans a local TSDB root at the given depth.
pub fn scan_with(root: &Path, depth: Depth) -> Result<Inventory, ScanError> {
    scan_source(&Source::Local(root.to_path_buf()), depth, SCAN_THREADS)
}

/// Blocks scanned at once by default (each a few listings and a meta.json read: round trips
/// over SSH).
pub const SCAN_THREADS: usize = 4;

/// Scans a TSDB root, local or remote, at the given depth, `threads` blocks at a time.
/// Every entry's attributes come with its directory listing (one stat per entry locally,
/// none extra over SFTP).
pub fn scan_source(src: &dyn Tree, depth: Depth, threads: usize) -> Result<Inventory, ScanError> {
    let root = src.root();
    let mut inv = Inventory {
        root: root.to_path_buf(),
        ..Default::default()
    };
    let entries = match src.list("") {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(inv),
        Err(e) => return Err(err(root, e)),
    };
    inv.exists = true;
    let root_stat = src.stat("").map_err(|e| err(root, e))?;
    inv.attrs.push(Attr::new(String::new(), &root_stat));
    // Blocks are scanned first, in parallel, each into its own part; the parts are merged in
    // name order below, so the inventory is the same as a scan one block at a time.
    let blocks: Vec<(&str, &Stat, Ulid)> = entries
        .iter()
        .filter_map(|e| {
            let name = e.name.as_deref().ok()?;
            match tsdb::classify_root(name, e.stat.kind() == Kind::Dir) {
                RootEntry::Block(ulid) if e.stat.kind() != Kind::Symlink => {
                    Some((name, &e.stat, ulid))
                }
                _ => None,
            }
        })
        .collect();
    let mut scanned: BTreeMap<String, (Option<Block>, Inventory)> = BTreeMap::new();
    for (&(name, _, _), r) in
        blocks
            .iter()
            .zip(crate::par::map(&blocks, threads, |&(name, stat, ulid)| {
                let mut part = Inventory::default();
                scan_block(src, name, stat, ulid, depth, &mut part).map(|b| (b, part))
            }))
    {
        scanned.insert(name.to_string(), r?);
    }
    for entry in entries {
        let name = match entry.name {
            Ok(n) => n,
            Err(lossy) => {
                inv.unknown.push(lossy);
                continue;
            }
        };
        let kind = entry.stat.kind();
        if kind == Kind::Symlink {
            inv.excluded.push(Skipped {
                rel: name.into(),
                reason: "symlink (not followed)".into(),
            });
            continue;
        }
        match tsdb::classify_root(&name, kind == Kind::Dir) {
            RootEntry::Block(_) => {
                // A live server deletes compacted blocks: one that vanished while it was
                // scanned is simply not there (the next scan agrees).
                if let Some((block, part)) = scanned.remove(&name) {
                    inv.attrs.extend(part.attrs);
                    inv.excluded.extend(part.excluded);
                    inv.leftovers.extend(part.leftovers);
                    if let Some(block) = block {
                        inv.blocks.insert(name, block);
                    }
                }
            }
            RootEntry::SegmentDir => {
                if let Some((files, dirs)) = walk_into(src, &name, &entry.stat, &mut inv)? {
                    inv.files.extend(files);
                    inv.dirs.push(name.into());
                    inv.dirs.extend(dirs);
                }
            }
            RootEntry::DataFile | RootEntry::Runtime => {
                inv.attrs.push(Attr::new(name.clone(), &entry.stat));
                let info = FileInfo::new(name.clone(), &entry.stat);
                if tsdb::classify_root(&name, false) == RootEntry::Runtime {
                    inv.runtime.push(info);
                } else {
                    inv.files.insert(name.into(), info);
                }
            }
            RootEntry::Excluded(reason) => inv.excluded.push(Skipped {
                rel: name.into(),
                reason: reason.into(),
            }),
            RootEntry::Ours if name == tsdb::QUARANTINE_DIR => inv.has_quarantine = true,
            RootEntry::Ours if name == tsdb::LOCK_FILE => {}
            RootEntry::Ours => inv.leftovers.push(name.into()),
            RootEntry::Unknown => inv.unknown.push(name),
        }
    }
    Ok(inv)
}

fn scan_block(
    src: &dyn Tree,
    name: &str,
    stat: &Stat,
    ulid: Ulid,
    depth: Depth,
    inv: &mut Inventory,
) -> Result<Option<Block>, ScanError> {
    let Some((files, dirs)) = walk_into(src, name, stat, inv)? else {
        return Ok(None);
    };
    let read = match depth {
        Depth::WithMeta => src.read(&format!("{name}/meta.json")),
        Depth::Layout => Err(std::io::Error::other("not read (layout-only scan)")),
    };
    let (meta, meta_json) = match read {
        Ok(bytes) => match BlockMeta::parse(&bytes) {
            Ok((m, v)) => (Ok(m), Some(v)),
            Err(e) => (Err(format!("{name}/meta.json: {e}")), None),
        },
        Err(e) => (Err(format!("{name}/meta.json: cannot read: {e}")), None),
    };
    Ok(Some(Block {
        dir: name.to_string(),
        ulid,
        meta,
        meta_json,
        files,
        dirs,
    }))
}

type Walked = (BTreeMap<RelPath, FileInfo>, Vec<RelPath>);

/// Walks `root/top` recursively without following links, depth first in name order.
/// Returns its files and its sub-directories (not `top` itself), or `None` if `top` vanished
/// before it was listed; records the owner and mode of `top` and of everything kept, and
/// adds left-out entries and promigrate leftovers to `inv`.
fn walk_into(
    src: &dyn Tree,
    top: &str,
    top_stat: &Stat,
    inv: &mut Inventory,
) -> Result<Option<Walked>, ScanError> {
    let listing = match src.list(top) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(&src.root().join(top), e)),
    };
    inv.attrs.push(Attr::new(top.to_string(), top_stat));
    let mut files = BTreeMap::new();
    let mut dirs = Vec::new();
    visit(src, top, listing, inv, &mut files, &mut dirs)?;
    Ok(Some((files, dirs)))
}

fn visit(
    src: &dyn Tree,
    dir: &str,
    listing: Vec<crate::source::Ent>,
    inv: &mut Inventory,
    files: &mut BTreeMap<RelPath, FileInfo>,
    dirs: &mut Vec<RelPath>,
) -> Result<(), ScanError> {
    for entry in listing {
        let name = match entry.name {
            Ok(n) => n,
            Err(lossy) => {
                inv.excluded.push(Skipped {
                    rel: format!("{dir}/{lossy}").into(),
                    reason: "name is not UTF-8".into(),
                });
                continue;
            }
        };
        let rel = RelPath::from(format!("{dir}/{name}"));
        if name.ends_with(tsdb::TMP_SUFFIX) {
            inv.leftovers.push(rel);
            continue;
        }
        if let Some(reason) = tsdb::transient_reason(&name) {
            inv.excluded.push(Skipped {
                rel: rel.clone(),
                reason: reason.into(),
            });
            continue;
        }
        match entry.stat.kind() {
            Kind::Symlink => inv.excluded.push(Skipped {
                rel: rel.clone(),
                reason: "symlink (not followed)".into(),
            }),
            Kind::Other => inv.excluded.push(Skipped {
                rel: rel.clone(),
                reason: "not a regular file or directory".into(),
            }),
            Kind::File => {
                inv.attrs.push(Attr::new(rel.clone(), &entry.stat));
                files.insert(rel.clone(), FileInfo::new(rel, &entry.stat));
            }
            Kind::Dir => {
                let sub = match src.list(&rel) {
                    Ok(l) => l,
                    // Deleted between listing and reading (a live server's compaction or
                    // WAL truncation): not there.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(err(&src.root().join(&rel), e)),
                };
                inv.attrs.push(Attr::new(rel.clone(), &entry.stat));
                dirs.push(rel.clone());
                visit(src, &rel, sub, inv, files, dirs)?;
            }
        }
    }
    Ok(())
}

/// The numbered files directly in `dir` (`wal`, `chunks_head`, `<ULID>/chunks`):
/// (number, path relative to the TSDB root, size), sorted by number.
pub fn segments<'a>(
    files: impl Iterator<Item = &'a FileInfo>,
    dir: &str,
) -> Vec<(u64, RelPath, u64)> {
    let mut out: Vec<(u64, RelPath, u64)> = files
        .filter_map(|f| {
            // segment_number takes digits only, so files deeper down never match.
            let name = f.rel.below(dir)?;
            tsdb::segment_number(name).map(|n| (n, f.rel.clone(), f.size))
        })
        .collect();
    out.sort();
    out
}

/// Whether a scan found a Prometheus TSDB: a block, or `wal/` or `chunks_head/`.
pub fn is_tsdb(inv: &Inventory) -> bool {
    !inv.blocks.is_empty() || inv.dirs.iter().any(|d| d == "wal" || d == "chunks_head")
}

/// Where the TSDB is, for a directory `dir` that is not one: its parent when `dir` is a
/// TSDB's `wal/`, `chunks_head/` or `wbl/`; else the first directory below it (three
/// levels at most, links not followed) that holds `wal/` or a block.
pub fn tsdb_near(dir: &Path) -> Option<PathBuf> {
    // A `wal/` counts only with a Prometheus segment (`00000003`) or checkpoint in it:
    // other programs have wal/ directories too (etcd, Loki, a locale named so).
    let prometheus_wal = |wal: &Path| {
        std::fs::read_dir(wal).is_ok_and(|rd| {
            rd.flatten().any(|e| {
                e.file_name().to_str().is_some_and(|n| {
                    (n.len() == 8 && n.bytes().all(|b| b.is_ascii_digit()))
                        || n.starts_with("checkpoint.")
                })
            })
        })
    };
    let holds_tsdb = |d: &Path| {
        prometheus_wal(&d.join("wal"))
            || std::fs::read_dir(d).is_ok_and(|rd| {
                rd.flatten().any(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.parse::<ulid::Ulid>().is_ok())
                        && e.path().join("meta.json").is_file()
                })
            })
    };
    let name = dir.file_name().and_then(|n| n.to_str());
    if matches!(name, Some("wal" | "chunks_head" | "wbl"))
        && let Some(parent) = dir.parent()
        && holds_tsdb(parent)
    {
        return Some(parent.to_path_buf());
    }
    // Breadth first, in name order, on this filesystem only: the nearest one.
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).ok()?.dev();
    let mut level = vec![dir.to_path_buf()];
    let mut looked = 0usize;
    for _ in 0..3 {
        let mut next = Vec::new();
        for d in &level {
            let mut subs: Vec<PathBuf> = walkdir::WalkDir::new(d)
                .min_depth(1)
                .max_depth(1)
                .follow_links(false)
                .same_file_system(true)
                .sort_by_file_name()
                .into_iter()
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_dir())
                .filter(|e| e.metadata().is_ok_and(|m| m.dev() == dev))
                .take(10_000usize.saturating_sub(looked))
                .map(|e| e.into_path())
                .collect();
            looked += subs.len();
            if let Some(found) = subs.iter().find(|s| holds_tsdb(s)) {
                return Some(found.clone());
            }
            next.append(&mut subs);
            if looked >= 10_000 {
                return None;
            }
        }
        level = next;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_layout_and_leaves_out_runtime_and_transient() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let u = "01HZX3J8Q4N2V5W6X7Y8Z9A0BC";
        std::fs::create_dir_all(r.join(u).join("chunks")).unwrap();
        std::fs::write(r.join(u).join("chunks/000001"), b"abc").unwrap();
        std::fs::write(
            r.join(u).join("meta.json"),
            format!(r#"{{"ulid":"{u}","minTime":0,"maxTime":10,"version":1}}"#),
        )
        .unwrap();
        std::fs::create_dir_all(r.join("wal/checkpoint.00000001")).unwrap();
        std::fs::create_dir_all(r.join("wal/checkpoint.00000002.tmp")).unwrap();
        std::fs::write(r.join("wal/00000002"), b"w").unwrap();
        std::fs::write(r.join("wal/00000003.promigrate-tmp"), b"w").unwrap();
        std::fs::write(r.join("lock"), b"").unwrap();
        std::fs::write(r.join("queries.active"), b"").unwrap();
        std::fs::create_dir_all(r.join(format!("{u}.tmp-for-creation"))).unwrap();
        std::fs::create_dir_all(r.join("lost+found")).unwrap();
        let inv = scan(r).unwrap();
        assert_eq!(inv.blocks.len(), 1);
        let b = &inv.blocks[u];
        assert_eq!(b.meta.as_ref().unwrap().max_time, 10);
        assert_eq!(
            b.files.keys().collect::<Vec<_>>(),
            vec![&format!("{u}/chunks/000001"), &format!("{u}/meta.json")]
        );
        assert_eq!(inv.files.keys().collect::<Vec<_>>(), vec!["wal/00000002"]);
        assert!(inv.dirs.contains(&"wal/checkpoint.00000001".into()));
        assert_eq!(inv.runtime.len(), 2);
        assert_eq!(
            inv.leftovers,
            vec!["wal/00000003.promigrate-tmp".to_string()]
        );
        assert_eq!(inv.unknown, vec!["lost+found".to_string()]);
        assert_eq!(inv.excluded.len(), 2, "{:?}", inv.excluded);
        // Owner and mode are recorded once for the root and every owned entry, and for
        // nothing else (lost+found, the transient dir, the leftover).
        let rels: Vec<&str> = inv.attrs.iter().map(|a| a.rel.as_str()).collect();
        for want in [
            "",
            u,
            "wal",
            "wal/checkpoint.00000001",
            "wal/00000002",
            "lock",
        ] {
            assert!(rels.contains(&want), "{want} missing from {rels:?}");
        }
        assert!(
            !rels
                .iter()
                .any(|r| r.contains("lost+found") || r.contains(".tmp")),
            "{rels:?}"
        );
        let layout = scan_with(r, Depth::Layout).unwrap();
        assert!(
            layout.blocks[u].meta.is_err(),
            "a layout scan reads no meta.json"
        );
    }

    #[test]
    fn missing_root_is_empty() {
        let inv = scan(Path::new("/nonexistent/promigrate")).unwrap();
        assert!(!inv.exists && inv.blocks.is_empty());
    }
}
