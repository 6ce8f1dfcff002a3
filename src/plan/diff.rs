//! Comparing a source entry with its target counterpart: identical, to copy, differs,
//! extraneous. The quick check is size plus modification time, like rsync; `verify` is what
//! compares content.

use serde::Serialize;

use super::inventory::{Block, FileInfo};
use crate::relpath::RelPath;

/// How a source entry stands on the target. The sigils follow rclone `check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Present on the target and the same (`=`).
    Identical,
    /// Missing on the target: to copy (`-`).
    Copy,
    /// Present on the target but different: to update (`*`).
    Differs,
    /// On the target only (`+`).
    Extraneous,
}

impl State {
    /// rclone-style sigil.
    pub fn sigil(self) -> char {
        match self {
            State::Identical => '=',
            State::Copy => '-',
            State::Differs => '*',
            State::Extraneous => '+',
        }
    }
}

/// One file's state.
pub fn file(src: &FileInfo, tgt: Option<&FileInfo>) -> State {
    match tgt {
        None => State::Copy,
        Some(t) if src.same_as(t) => State::Identical,
        Some(_) => State::Differs,
    }
}

/// A block's state, the files to (re)copy, and files only the target's block has.
#[derive(Debug, Clone)]
pub struct BlockDiff {
    /// Overall state.
    pub state: State,
    /// Paths (relative to the TSDB root) to copy.
    pub to_copy: Vec<RelPath>,
    /// Paths inside the target's block dir that the source block lacks.
    pub extra_files: Vec<RelPath>,
}

/// Compares a source block with the target's block of the same name, if any.
pub fn block(src: &Block, tgt: Option<&Block>) -> BlockDiff {
    let Some(t) = tgt else {
        return BlockDiff {
            state: State::Copy,
            to_copy: src.files.keys().cloned().collect(),
            extra_files: vec![],
        };
    };
    let to_copy: Vec<RelPath> = src
        .files
        .values()
        .filter(|f| file(f, t.files.get(&f.rel)) != State::Identical)
        .map(|f| f.rel.clone())
        .collect();
    let extra_files: Vec<RelPath> = t
        .files
        .keys()
        .filter(|k| !src.files.contains_key(*k))
        .cloned()
        .collect();
    let state = if to_copy.is_empty() && extra_files.is_empty() {
        State::Identical
    } else {
        State::Differs
    };
    BlockDiff {
        state,
        to_copy,
        extra_files,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn fi(rel: &str, size: u64, sec: i64) -> FileInfo {
        FileInfo::for_test(rel, size, sec)
    }

    fn blk(files: &[FileInfo]) -> Block {
        Block {
            dir: "B".into(),
            ulid: ulid::Ulid::nil(),
            meta: Err("unused".into()),
            meta_json: None,
            files: files
                .iter()
                .map(|f| (f.rel.clone(), f.clone()))
                .collect::<BTreeMap<_, _>>(),
            dirs: vec![],
        }
    }

    #[test]
    fn file_states() {
        let a = fi("wal/00000001", 10, 5);
        assert_eq!(file(&a, None), State::Copy);
        assert_eq!(file(&a, Some(&fi("wal/00000001", 10, 5))), State::Identical);
        assert_eq!(file(&a, Some(&fi("wal/00000001", 11, 5))), State::Differs);
        assert_eq!(file(&a, Some(&fi("wal/00000001", 10, 6))), State::Differs);
    }

    #[test]
    fn block_states() {
        let src = blk(&[fi("B/index", 5, 1), fi("B/meta.json", 2, 1)]);
        assert_eq!(block(&src, None).state, State::Copy);
        assert_eq!(block(&src, None).to_copy.len(), 2);
        assert_eq!(block(&src, Some(&src.clone())).state, State::Identical);
        let tgt = blk(&[
            fi("B/index", 5, 1),
            fi("B/meta.json", 3, 1),
            fi("B/junk", 1, 1),
        ]);
        let d = block(&src, Some(&tgt));
        assert_eq!(d.state, State::Differs);
        assert_eq!(d.to_copy, vec![RelPath::from("B/meta.json")]);
        assert_eq!(d.extra_files, vec![RelPath::from("B/junk")]);
    }
}
