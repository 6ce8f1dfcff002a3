//! Paths relative to a TSDB directory, as inventories, plans and reports name files:
//! `/`-separated components without a leading `/` (`01ABC…/chunks/000001`, `wal/00000003`).
//! Whether a path lies below a directory is a question about whole components (`wal2/x` is
//! not below `wal`); these functions answer it without building `"{dir}/"` strings.

/// The rest of `rel` below the directory `dir` (`below("wal/00000001", "wal")` is
/// `Some("00000001")`), or `None` when `rel` is not below it (`dir` itself is not).
pub fn below<'a>(rel: &'a str, dir: &str) -> Option<&'a str> {
    rel.strip_prefix(dir)?.strip_prefix('/')
}

/// Whether `rel` lies below the directory `dir`.
pub fn is_below(rel: &str, dir: &str) -> bool {
    below(rel, dir).is_some()
}

/// Whether `rel` lies below any of `dirs`.
pub fn is_below_any<S: AsRef<str>>(rel: &str, dirs: &[S]) -> bool {
    dirs.iter().any(|d| is_below(rel, d.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_is_a_question_of_whole_components() {
        assert_eq!(below("wal/00000001", "wal"), Some("00000001"));
        assert_eq!(below("01ABC/chunks/000001", "01ABC"), Some("chunks/000001"));
        assert_eq!(below("01ABC/chunks/000001", "01ABC/chunks"), Some("000001"));
        // A sibling sharing the prefix, the directory itself, another directory.
        assert_eq!(below("wal2/00000001", "wal"), None);
        assert_eq!(below("wal", "wal"), None);
        assert_eq!(below("chunks_head/000001", "wal"), None);
        assert!(is_below(
            "chunk_snapshot.000003.0000000/00000000",
            "chunk_snapshot.000003.0000000"
        ));
        assert!(!is_below(
            "chunk_snapshot.000003.00000001/x",
            "chunk_snapshot.000003.0000000"
        ));
        assert!(is_below_any("b/x", &["a", "b"]));
        assert!(!is_below_any("c/x", &["a", "b"]));
        assert!(!is_below_any::<&str>("a/x", &[]));
    }
}
