//! Ownership and modes on the target, so Prometheus running as `runAsUser`, or as any member
//! of `fsGroup`, can write everything it needs (blocks, WAL, `lock`, `queries.active`).
//!
//! Invariants: ownership is changed with `fchownat(AT_SYMLINK_NOFOLLOW)` (or `fchown` on an
//! open descriptor), so a symlink is never followed; callers reach paths by walking real
//! directories without following links, so nothing outside the target is touched. Nothing is
//! changed when it already holds, which keeps a rerun free of writes.

use std::path::Path;

/// The owner every target entry must have: `runAsUser:fsGroup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    let (fd, st) = crate::fsutil::beneath::stat(base, path)?;
    fix_open(&fd, &st, owner)
}

/// [`fix`] for an entry already opened (`O_PATH`) and stat'ed by
/// [`crate::fsutil::beneath::stat`].
pub fn fix_open(
    fd: &std::os::fd::OwnedFd,
    st: &nix::sys::stat::FileStat,
    owner: Owner,
) -> std::io::Result<bool> {
    use crate::fsutil::beneath;
    let mut changed = false;
    if st.st_uid != owner.uid || st.st_gid != owner.gid {
        beneath::chown(fd, owner.uid, owner.gid)?;
        changed = true;
    }
    let mode = st.st_mode & 0o7777;
    let want = wanted_mode(mode, st.st_mode & libc::S_IFMT == libc::S_IFDIR);
    // chown clears setgid on directories for non-root callers: set the mode again.
    if mode != want || changed {
        beneath::chmod(fd, want)?;
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

/// Who this process is, as far as setting owners and modes goes: its effective uid and gid,
/// supplementary groups, and effective capabilities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// Effective uid.
    pub uid: u32,
    /// Effective gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Holds CAP_CHOWN: may give any owner and group.
    pub cap_chown: bool,
    /// Holds CAP_FOWNER: may set the mode of entries it does not own.
    pub cap_fowner: bool,
}

/// Bit of CAP_CHOWN in the capability sets.
const CAP_CHOWN: u64 = 1 << 0;
/// Bit of CAP_FOWNER in the capability sets.
const CAP_FOWNER: u64 = 1 << 3;

impl Process {
    /// This process. Its capabilities come from `CapEff` in `/proc/self/status`; without
    /// it, root is taken to hold them all and anyone else none.
    pub fn current() -> Process {
        let uid = nix::unistd::geteuid().as_raw();
        let caps = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| effective_caps(&s))
            .unwrap_or(if uid == 0 { u64::MAX } else { 0 });
        Process {
            uid,
            gid: nix::unistd::getegid().as_raw(),
            groups: nix::unistd::getgroups()
                .map(|g| g.into_iter().map(nix::unistd::Gid::as_raw).collect())
                .unwrap_or_default(),
            cap_chown: caps & CAP_CHOWN != 0,
            cap_fowner: caps & CAP_FOWNER != 0,
        }
    }

    /// Whether it is in group `gid` (effective or supplementary).
    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }

    /// Whether it can give an entry it creates `owner`, and then the group-writable mode
    /// ([`fix`] chowns, then chmods): as that very uid in that group, or with CAP_CHOWN
    /// (and CAP_FOWNER for the mode, once the entry belongs to another uid).
    pub fn can_give(&self, owner: Owner) -> bool {
        if self.uid == owner.uid {
            self.in_group(owner.gid) || self.cap_chown
        } else {
            self.cap_chown && self.cap_fowner
        }
    }

    /// Whether it can give `owner` (and the mode) to an existing entry owned by `uid`:
    /// taking another user's entry needs CAP_CHOWN.
    pub fn can_fix(&self, uid: u32, owner: Owner) -> bool {
        self.can_give(owner) && (uid == self.uid || self.cap_chown)
    }

    /// What it lacks to give `owner`, for messages: "CAP_CHOWN", "CAP_FOWNER" or both (as
    /// the owner's uid itself it needs only CAP_CHOWN, for a group it is not in).
    pub fn missing_caps(&self, owner: Owner) -> &'static str {
        match (self.cap_chown, self.cap_fowner || self.uid == owner.uid) {
            (false, false) => "CAP_CHOWN and CAP_FOWNER",
            (false, true) => "CAP_CHOWN",
            _ => "CAP_FOWNER",
        }
    }
}

/// The effective capability set from the text of `/proc/<pid>/status` (`CapEff:`, hex).
fn effective_caps(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
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

    #[test]
    fn who_may_give_an_owner() {
        assert_eq!(
            effective_caps("Name:\tx\nCapInh:\t0\nCapEff:\t000001fffeffffff\n"),
            Some(0x1fffeffffff)
        );
        assert_eq!(effective_caps("Name:\tx\n"), None);
        let want = Owner {
            uid: 1000,
            gid: 2000,
        };
        let user = |uid, gid, groups: &[u32]| Process {
            uid,
            gid,
            groups: groups.to_vec(),
            cap_chown: false,
            cap_fowner: false,
        };
        assert!(user(1000, 2000, &[]).can_give(want));
        assert!(
            user(1000, 1000, &[2000]).can_give(want),
            "a supplementary group"
        );
        assert!(!user(1000, 1000, &[]).can_give(want));
        assert!(!user(65534, 2000, &[]).can_give(want));
        assert!(user(1000, 2000, &[]).can_fix(1000, want));
        assert!(
            !user(1000, 2000, &[]).can_fix(0, want),
            "another user's entry"
        );
        let root = Process {
            cap_chown: true,
            cap_fowner: true,
            ..user(0, 0, &[])
        };
        assert!(root.can_give(want) && root.can_fix(0, want));
        let no_fowner = Process {
            cap_fowner: false,
            ..root.clone()
        };
        assert!(
            !no_fowner.can_give(want),
            "chown works, the chmod after it does not"
        );
        assert_eq!(no_fowner.missing_caps(want), "CAP_FOWNER");
        assert_eq!(user(1000, 1000, &[]).missing_caps(want), "CAP_CHOWN");
        assert_eq!(
            user(65534, 2000, &[]).missing_caps(want),
            "CAP_CHOWN and CAP_FOWNER"
        );
    }
}
