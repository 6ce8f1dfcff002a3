//! Paths relative to a TSDB directory, as inventories, plans and reports name files:
//! `/`-separated components without a leading `/` (`01ABC…/chunks/000001`, `wal/00000003`).
//! Whether a path lies below a directory is a question about whole components (`wal2/x` is
//! not below `wal`); these functions answer it without building `"{dir}/"` strings.

/// A path relative to a TSDB directory (see the module docs): what inventories and plans
/// name files by. Reads as a `str` (`Deref`), is looked up in maps by `&str` (`Borrow`),
/// and serializes as the string.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct RelPath(String);

impl RelPath {
    /// The path as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The rest of this path below the directory `dir` (see [`below`]).
    pub fn below(&self, dir: &str) -> Option<&str> {
        below(&self.0, dir)
    }

    /// Whether this path lies below the directory `dir` (see [`below`]).
    pub fn is_below(&self, dir: &str) -> bool {
        is_below(&self.0, dir)
    }

    /// The first component: the block directory, `wal`, `chunks_head`, ...
    pub fn top(&self) -> &str {
        self.0.split('/').next().unwrap_or_default()
    }
}

impl std::ops::Deref for RelPath {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for RelPath {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for RelPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<std::path::Path> for RelPath {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

impl AsRef<std::ffi::OsStr> for RelPath {
    fn as_ref(&self) -> &std::ffi::OsStr {
        std::ffi::OsStr::new(&self.0)
    }
}

impl std::fmt::Display for RelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for RelPath {
    fn from(s: String) -> Self {
        RelPath(s)
    }
}

impl From<&str> for RelPath {
    fn from(s: &str) -> Self {
        RelPath(s.to_string())
    }
}

impl From<&String> for RelPath {
    fn from(s: &String) -> Self {
        RelPath(s.clone())
    }
}

impl From<RelPath> for String {
    fn from(r: RelPath) -> Self {
        r.0
    }
}

impl PartialEq<str> for RelPath {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for RelPath {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for RelPath {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

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
    fn a_relpath_reads_serializes_and_is_looked_up_as_its_string() {
        let r = RelPath::from("01ABC/chunks/000001");
        assert_eq!(r.top(), "01ABC");
        assert_eq!(RelPath::from("wal").top(), "wal");
        assert_eq!(r.below("01ABC"), Some("chunks/000001"));
        assert!(r.is_below("01ABC/chunks") && !r.is_below("01AB"));
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            "\"01ABC/chunks/000001\""
        );
        let mut m = std::collections::BTreeMap::new();
        m.insert(r.clone(), 1);
        assert_eq!(m.get("01ABC/chunks/000001"), Some(&1));
        assert_eq!(r, "01ABC/chunks/000001");
        assert_eq!(r.to_string(), String::from(r.clone()));
    }

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
