//! Ownership and modes on the target, so Prometheus running as `runAsUser`, or as any member
//! of `fsGroup`, can write everything it needs (blocks, WAL, `lock`, `queries.active`).
//!
//! Invariants: ownership is changed with `fchownat(AT_SYMLINK_NOFOLLOW)` (or `fchown` on an
//! open descriptor), so a symlink is never followed; callers reach paths by walking real
//! directories without following links, so nothing outside the target is touched. Nothing is
//! changed when it already holds, which keeps a rerun free of writes.

use std::path::Path;

/// The owner every target entry must have: `runAsUser:fsGroup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Owner {
    /// `securityContext.runAsUser`.
    pub uid: u32,
    /// `securityContext.fsGroup`.
    pub gid: u32,
}

/// Bits every directory must have: owner and group rwx, and setgid so new files inherit fsGroup.
pub const DIR_BITS: u32 = 0o2770;
/// Bits every file must have: owner and group read-write.
pub const FILE_BITS: u32 = 0o660;

/// The mode an entry should have: its current permission bits plus the required ones.
pub fn wanted_mode(current: u32, is_dir: bool) -> u32 {
    (current & 0o7777) | if is_dir { DIR_BITS } else { FILE_BITS }
}

/// The mode a new target file gets from its source mode.
pub fn file_mode_from(source_mode: u32) -> u32 {
    wanted_mode(source_mode & 0o777, false)
}

/// Describes what is wrong with an entry's ownership or mode (from its raw `st_uid`,
/// `st_gid` and `st_mode`, file type bits included), or `None` if it is right.
pub fn problem_of(uid: u32, gid: u32, st_mode: u32, owner: Owner) -> Option<String> {
    let mut issues = Vec::new();
    if uid != owner.uid || gid != owner.gid {
        issues.push(format!(
            "owner {uid}:{gid}, want {}:{}",
            owner.uid, owner.gid
        ));
    }
    let kind = st_mode & libc::S_IFMT;
    if kind != libc::S_IFLNK {
        let mode = st_mode & 0o7777;
        let want = wanted_mode(mode, kind == libc::S_IFDIR);
        if mode != want {
            issues.push(format!("mode {mode:04o}, want {want:04o}"));
        }
    }
    (!issues.is_empty()).then(|| issues.join(", "))
}

/// Gives the entry at `path` (below `base`, the target volume's mount) `owner` and the
/// group-writable mode. Never through a link: `path` is resolved from `base` without
/// following any (see [`crate::fsutil::beneath`]), and a link is an error. Returns whether
/// anything changed.
pub fn fix(base: &Path, path: &Path, owner: Owner) -> std::io::Result<bool> {
    use crate::fsutil::beneath;
    let (fd, st) = beneath::stat(base, path)?;
    let mut changed = false;
    if st.st_uid != owner.uid || st.st_gid != owner.gid {
        beneath::chown(&fd, owner.uid, owner.gid)?;
        changed = true;
    }
    let mode = st.st_mode & 0o7777;
    let want = wanted_mode(mode, st.st_mode & libc::S_IFMT == libc::S_IFDIR);
    // chown clears setgid on directories for non-root callers: set the mode again.
    if mode != want || changed {
        beneath::chmod(&fd, want)?;
        changed |= mode != want;
    }
    Ok(changed)
}

/// A message for a failed ownership change that says what to do.
pub fn explain(path: &Path, err: &std::io::Error, owner: Owner) -> String {
    if err.kind() == std::io::ErrorKind::PermissionDenied {
        format!(
            "cannot set owner {}:{} on {}: {err}; run promigrate as root (or with CAP_CHOWN) so the pod's user can write the data",
            owner.uid,
            owner.gid,
            path.display()
        )
    } else {
        format!("cannot set owner/mode on {}: {err}", path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn modes() {
        assert_eq!(wanted_mode(0o755, true), 0o2775);
        assert_eq!(wanted_mode(0o644, false), 0o664);
        assert_eq!(wanted_mode(0o2775, true), 0o2775);
        assert_eq!(file_mode_from(0o100644), 0o664);
    }

    #[test]
    fn problem_reports_owner_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let meta = std::fs::symlink_metadata(&f).unwrap();
        let want = Owner {
            uid: meta.uid(),
            gid: meta.gid(),
        };
        assert_eq!(
            problem_of(meta.uid(), meta.gid(), meta.mode(), want).unwrap(),
            "mode 0644, want 0664"
        );
        assert!(fix(dir.path(), &f, want).unwrap());
        let meta = std::fs::symlink_metadata(&f).unwrap();
        assert!(problem_of(meta.uid(), meta.gid(), meta.mode(), want).is_none());
        assert!(
            !fix(dir.path(), &f, want).unwrap(),
            "a second fix changes nothing"
        );
        // A link is refused, and what it points to keeps its mode.
        let l = dir.path().join("l");
        std::os::unix::fs::symlink(&f, &l).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(fix(dir.path(), &l, want).is_err());
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o777, 0o644);
    }
}
