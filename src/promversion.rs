//! Which Prometheus version wrote the source data, and which version a target image runs.
//! Data written by Prometheus 3 can only be read by 2.55 or newer, so a cutover needs both.
//!
//! [`PromVersion`] parses what Prometheus and its images say of themselves: `prometheus
//! --version`, `/api/v1/status/buildinfo`, an image reference's tag, a plan field.
//! [`detect_source_version`] finds the source's, first answer wins, and says how it knew:
//! 1. `source.prometheusVersion` in the plan;
//! 2. the running server's own binary: the process that has the data directory's WAL open
//!    (locally through [`crate::live`]'s /proc scan, over SSH through the same scan run on the
//!    host) is asked `/proc/<pid>/exe --version`, as that process's own user (the ids of its
//!    `/proc/<pid>/status`); this is the binary that writes the data, even if a newer one has
//!    replaced it on disk since it started;
//! 3. `source.prometheusUrl`'s `/api/v1/status/buildinfo` (after the binary: the URL may name
//!    another server than the one on the data directory);
//! 4. `prometheus --version` from PATH on the source host (the package installed there,
//!    which need not be the one that wrote the data); empty and relative PATH entries are
//!    skipped;
//! 5. otherwise unknown, with why each way failed.
//!
//! As root (locally, or as the SSH user), a binary another user could have replaced is never
//! run as root: a server running as root has its binary run only if that file belongs to root
//! and is writable by neither its group nor others, and so is every directory above it (a
//! sticky directory such as /tmp may be writable by others); the same holds for the
//! `prometheus` found on PATH (and its PATH entry). Otherwise that way fails, saying why, and
//! the next is tried. A `--version` run gets an environment of a fixed PATH
//! (`/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`) and nothing else.
//!
//! Every command is bounded ([`VERSION_TIMEOUT`]) and only reads: `--version` prints and
//! exits, and the remote scripts write nothing on the source host.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Serialize;

/// How long one `--version` run or buildinfo request may take.
pub const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

/// A Prometheus release: major.minor.patch, and a pre-release (`3.0.0-rc.1`) if any. Build
/// metadata (Debian's `+ds`) is dropped: it does not change what the server reads. Ordered
/// by semantic-version precedence (`3.0.0-rc.1` < `3.0.0`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct PromVersion(semver::Version);

/// Why a text is not a Prometheus version; the message says what was read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct VersionError(pub String);

impl PromVersion {
    /// The release `major.minor.patch`.
    pub fn new(major: u64, minor: u64, patch: u64) -> PromVersion {
        PromVersion(semver::Version::new(major, minor, patch))
    }

    /// The major version.
    pub fn major(&self) -> u64 {
        self.0.major
    }

    /// The minor version.
    pub fn minor(&self) -> u64 {
        self.0.minor
    }

    /// The patch version.
    pub fn patch(&self) -> u64 {
        self.0.patch
    }

    /// A semantic version with an optional `v` (`3.5.0`, `v3.5.0`, `2.42.0+ds`, `3.0.0-rc.1`).
    fn parse_release(s: &str) -> Option<PromVersion> {
        let mut v = semver::Version::parse(s.strip_prefix('v').unwrap_or(s)).ok()?;
        v.build = semver::BuildMetadata::EMPTY;
        Some(PromVersion(v))
    }

    /// The output of `prometheus --version`, e.g. `prometheus, version 2.42.0+ds (branch:
    /// debian/sid, revision: ...)`. Another program's output (`promtool, version ...`) is an
    /// error: the binary asked was not Prometheus.
    pub fn from_version_output(text: &str) -> Result<PromVersion, VersionError> {
        let line = text
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix("prometheus, version "))
            .ok_or_else(|| {
                VersionError(format!(
                    "its output does not start `prometheus, version`: {}",
                    first_line(text)
                ))
            })?;
        let word = line.split_whitespace().next().unwrap_or_default();
        Self::parse_release(word).ok_or_else(|| {
            VersionError(format!(
                "it says `prometheus, version {word}`, not a version"
            ))
        })
    }

    /// The body of `/api/v1/status/buildinfo`: `{"status":"success","data":{"version":
    /// "2.42.0+ds",...}}`.
    pub fn from_buildinfo(json: &str) -> Result<PromVersion, VersionError> {
        let v: serde_json::Value = serde_json::from_str(json).map_err(|e| {
            VersionError(format!(
                "the answer is not JSON ({e}): {}",
                first_line(json)
            ))
        })?;
        if v["status"] != "success" {
            return Err(VersionError(format!(
                "the answer's status is {} ({})",
                v["status"],
                v["error"].as_str().unwrap_or("no error given")
            )));
        }
        let version = v["data"]["version"].as_str().ok_or_else(|| {
            VersionError("the answer has no data.version: is it a Prometheus?".into())
        })?;
        Self::parse_release(version)
            .ok_or_else(|| VersionError(format!("data.version `{version}` is not a version")))
    }

    /// The version in a container image reference's tag: `quay.io/prometheus/prometheus:v3.5.0`,
    /// `prom/prometheus:v2.55.1`, `...:v3.5.0-distroless` (a variant after the version is
    /// ignored, a `-rc.N` kept), `registry:5000/x/prometheus:v2.53.0@sha256:...`. No tag,
    /// a digest alone, or a tag that is no version (`latest`, `main`) is an error saying so.
    pub fn from_image(reference: &str) -> Result<PromVersion, VersionError> {
        // A digest names content, not a version; the tag beside it (if any) still does.
        let (name, digest) = match reference.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (reference, None),
        };
        // The tag is after the last `:` of the last path component: a `:` before a `/` is
        // the registry's port.
        let last = name.rsplit('/').next().unwrap_or(name);
        let tag = match (last.split_once(':'), digest) {
            (Some((_, tag)), _) => tag,
            (None, Some(_)) => {
                return Err(VersionError(format!(
                    "image {reference} is pinned by digest only: the digest does not say which version it is"
                )));
            }
            (None, None) => {
                return Err(VersionError(format!(
                    "image {reference} has no tag (so `latest`): it does not say which version it is"
                )));
            }
        };
        version_in_tag(tag).ok_or_else(|| {
            VersionError(format!(
                "the tag `{tag}` of image {reference} is not a version (like v3.5.0)"
            ))
        })
    }
}

/// `v3.5.0`, `3.5.0`, `v3.0.0-rc.1`, `v3.5.0-distroless`, `2.53.0-debian-12-r3`: the
/// release, with a `-rc.N`/`-beta.N`/`-alpha.N` pre-release; any other `-` suffix is a
/// variant of the same release.
fn version_in_tag(tag: &str) -> Option<PromVersion> {
    let t = tag.strip_prefix('v').unwrap_or(tag);
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (numbers, rest) = t.split_at(end);
    let parts: Vec<u64> = numbers
        .split('.')
        .map(|p| p.parse().ok().filter(|_| !p.is_empty()))
        .collect::<Option<_>>()?;
    let [major, minor, patch] = parts[..] else {
        return None;
    };
    let mut v = semver::Version::new(major, minor, patch);
    if !rest.is_empty() {
        let first = rest
            .strip_prefix('-')?
            .split('-')
            .next()
            .unwrap_or_default();
        let is_pre = first.split_once('.').is_some_and(|(kind, n)| {
            matches!(kind, "rc" | "beta" | "alpha")
                && !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
        });
        if is_pre {
            v.pre = semver::Prerelease::new(first).ok()?;
        }
    }
    Some(PromVersion(v))
}

fn first_line(text: &str) -> String {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty());
    match line {
        Some(l) => format!("`{}`", l.chars().take(120).collect::<String>()),
        None => "(nothing)".to_string(),
    }
}

/// The plan field's form: `3.5.0` or `v3.5.0` (build metadata such as `+ds` is allowed and
/// dropped).
impl std::str::FromStr for PromVersion {
    type Err = VersionError;
    fn from_str(s: &str) -> Result<PromVersion, VersionError> {
        PromVersion::parse_release(s.trim()).ok_or_else(|| {
            VersionError(format!(
                "`{s}` is not a Prometheus version: write MAJOR.MINOR.PATCH, e.g. 3.5.0 (the version `prometheus --version` prints)"
            ))
        })
    }
}

impl TryFrom<String> for PromVersion {
    type Error = VersionError;
    fn try_from(s: String) -> Result<PromVersion, VersionError> {
        s.parse()
    }
}

impl std::fmt::Display for PromVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for PromVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `source.prometheusUrl`: the base URL (`http://` or `https://`) of the running source
/// Prometheus, with its route prefix if it has one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(try_from = "String")]
pub struct PromUrl(pub String);

impl TryFrom<String> for PromUrl {
    type Error = VersionError;
    fn try_from(s: String) -> Result<PromUrl, VersionError> {
        let ok = s
            .parse::<ureq::http::Uri>()
            .ok()
            .filter(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some())
            .filter(|u| u.query().is_none());
        match ok {
            Some(_) => Ok(PromUrl(s.trim_end_matches('/').to_string())),
            None => Err(VersionError(format!(
                "`{s}` is not the http:// or https:// base URL of a Prometheus: write e.g. http://vm1:9090"
            ))),
        }
    }
}

/// What the plan says of the source server (`source.prometheusVersion`, `source.prometheusUrl`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceServer {
    /// The version the plan gives; detection is skipped when set.
    pub version: Option<PromVersion>,
    /// Where the running server answers HTTP.
    pub url: Option<PromUrl>,
}

/// How the source's version was learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// `source.prometheusVersion`.
    Plan,
    /// The running server's own binary (`/proc/<pid>/exe --version`).
    RunningBinary,
    /// The running server's `/api/v1/status/buildinfo` (`source.prometheusUrl`).
    Buildinfo,
    /// `prometheus --version` from PATH on the source host.
    Path,
    /// Not learned.
    Unknown,
}

/// The source server's version, how it was learned, and why the ways tried before failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SourceVersion {
    /// The version; `None` when no way answered.
    pub version: Option<PromVersion>,
    /// Which way answered.
    pub via: Via,
    /// How it was learned, for people (`the running server's binary (/proc/4242/exe)`).
    pub how: String,
    /// Why each way tried before failed, in order.
    pub tried: Vec<String>,
}

impl SourceVersion {
    /// Whether it was learned from what wrote the data (the plan, the running server's
    /// binary or its buildinfo), not guessed from PATH or unknown.
    pub fn is_strong(&self) -> bool {
        self.version.is_some()
            && matches!(self.via, Via::Plan | Via::RunningBinary | Via::Buildinfo)
    }

    /// The strong answer an earlier apply recorded in run-record directory `dir` (newest
    /// first), when this one is weak: the final phase and the verify after it run with the
    /// source stopped, so its binary and buildinfo no longer answer.
    pub fn or_recorded(self, dir: &std::path::Path) -> SourceVersion {
        if self.is_strong() {
            return self;
        }
        let Ok(rd) = std::fs::read_dir(dir) else {
            return self;
        };
        let mut files: Vec<std::path::PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with("-apply.json"))
            .collect();
        files.sort();
        for f in files.iter().rev() {
            let Ok(text) = std::fs::read_to_string(f) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            let report = &v["report"];
            // `targets[].plan`; records of promigrate before the one report shape had a
            // single target's `plan` at the top.
            let plans = std::iter::once(&report["plan"]).chain(
                report["targets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| &t["plan"]),
            );
            for p in plans {
                if let Ok(mut sv) =
                    serde_json::from_value::<SourceVersion>(p["source_version"].clone())
                    && sv.is_strong()
                {
                    sv.how = format!("{}, recorded by the earlier apply {}", sv.how, f.display());
                    sv.tried = self.tried.clone();
                    return sv;
                }
            }
        }
        self
    }

    /// One line for the plan's text report.
    pub fn line(&self) -> String {
        match &self.version {
            Some(v) => format!("Prometheus {v} (from {})", self.how),
            None => format!(
                "unknown ({}); set source.prometheusVersion",
                self.tried.join("; ")
            ),
        }
    }
}

/// Finds the version of the Prometheus that writes the source data, in the order of the
/// module doc. Reads only; each command and request is bounded by [`VERSION_TIMEOUT`].
pub fn detect_source_version(src: &crate::source::Source, server: &SourceServer) -> SourceVersion {
    let found = |version, via, how: String, tried| SourceVersion {
        version: Some(version),
        via,
        how,
        tried,
    };
    if let Some(v) = &server.version {
        return found(
            v.clone(),
            Via::Plan,
            "source.prometheusVersion in the plan".into(),
            Vec::new(),
        );
    }
    let mut tried = Vec::new();
    let root = src.root();
    let remote = match src {
        crate::source::Source::Ssh { pool, .. } => Some(pool.as_ref()),
        crate::source::Source::Local(_) => None,
    };
    let running = match remote {
        None => local_running(root),
        Some(pool) => remote_running(pool, root),
    };
    match running {
        Ok((v, how)) => return found(v, Via::RunningBinary, how, tried),
        Err(why) => tried.push(why),
    }
    match &server.url {
        Some(url) => match buildinfo(url) {
            Ok(v) => {
                let how = format!("the running server's {}/api/v1/status/buildinfo", url.0);
                return found(v, Via::Buildinfo, how, tried);
            }
            Err(why) => tried.push(why),
        },
        None => tried.push("source.prometheusUrl is not set".into()),
    }
    let on_path = match remote {
        None => local_path(),
        Some(pool) => remote_path(pool),
    };
    match on_path {
        Ok((v, how)) => found(v, Via::Path, how, tried),
        Err(why) => {
            tried.push(why);
            SourceVersion {
                version: None,
                via: Via::Unknown,
                how: "not found: set source.prometheusVersion".into(),
                tried,
            }
        }
    }
}

/// The local server's binary: the process /proc shows writing below `root`, asked
/// `/proc/<pid>/exe --version` as its own user.
fn local_running(root: &Path) -> Result<(PromVersion, String), String> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::process::CommandExt;
    let w = crate::live::writer(root).ok_or_else(|| {
        format!(
            "no process on this host has files of {} open for writing (the server is stopped, runs elsewhere, or this user cannot see it)",
            root.display()
        )
    })?;
    let exe = PathBuf::from(format!("/proc/{}/exe", w.pid));
    let named = |p: &Path| {
        p.file_name()
            .is_some_and(|n| is_prometheus_name(&n.to_string_lossy()))
    };
    if !is_prometheus_name(&w.comm) && !std::fs::read_link(&exe).is_ok_and(|p| named(&p)) {
        return Err(format!(
            "process {} ({}) writes {} but is not a prometheus binary: it was not run",
            w.pid,
            w.comm,
            root.display()
        ));
    }
    let what = format!(
        "{} --version (process {}, {})",
        exe.display(),
        w.pid,
        w.comm
    );
    // The file the process runs, held open (O_PATH): what is checked is what runs, through
    // /proc/self/fd/<fd> in the child, even if the process ends meanwhile and its PID is
    // reused, and even as a user that may not open /proc/<pid>/exe itself (the process of a
    // non-dumpable server, whose /proc files are root's).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(&exe)
        .map_err(|e| format!("{what}: cannot open it: {e}"))?;
    let mut cmd = Command::new(format!("/proc/self/fd/{}", file.as_raw_fd()));
    cmd.arg0("prometheus").arg("--version");
    if nix::unistd::geteuid().is_root() {
        // The process's own user: as root, running a binary that user may have replaced would
        // hand it root. Its ids are those of /proc/<pid>/status, not the owner of a /proc
        // file (root's for a non-dumpable process).
        let status_file = format!("/proc/{}/status", w.pid);
        let (uid, gid) = std::fs::read_to_string(&status_file)
            .map_err(|e| e.to_string())
            .and_then(|s| ProcIds::parse(&s))
            .map_err(|e| format!("{what}: cannot tell its user from {status_file}: {e}"))?
            .run_as();
        if uid != 0 {
            cmd.uid(uid).gid(gid);
        } else if let Some(why) = exe_not_roots_alone(w.pid, &exe, &file) {
            return Err(format!(
                "{what}: {NOT_AS_ROOT} (the process runs as root): {why}"
            ));
        }
    }
    let out = run_bounded(cmd, VERSION_TIMEOUT).map_err(|e| format!("{what}: {e}"))?;
    drop(file);
    let v = PromVersion::from_version_output(&out).map_err(|e| format!("{what}: {e}"))?;
    let how = format!("the running server's binary ({} --version)", exe.display());
    Ok((v, how))
}

/// The start of the reason a binary was not run: as root, it could run another user's code.
const NOT_AS_ROOT: &str = "not run as root, as another user could have put their own code in it";

/// A process's user and group ids (real, effective, saved, filesystem), from the `Uid:` and
/// `Gid:` lines of its `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcIds {
    uid: [u32; 4],
    gid: [u32; 4],
}

impl ProcIds {
    fn parse(status: &str) -> Result<ProcIds, String> {
        let ids = |key: &str| -> Result<[u32; 4], String> {
            let line = status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .ok_or_else(|| format!("it has no {key} line"))?;
            let bad = || format!("`{key}{}` is not four ids", line.trim_end());
            let ids: Vec<u32> = line
                .split_whitespace()
                .map(|w| w.parse().map_err(|_| bad()))
                .collect::<Result<_, _>>()?;
            ids.try_into().map_err(|_| bad())
        };
        Ok(ProcIds {
            uid: ids("Uid:")?,
            gid: ids("Gid:")?,
        })
    }

    /// The user and group to run its binary as: the effective ones, unless root's while the
    /// real ones are not (then the real ones: never root when either is another user).
    fn run_as(&self) -> (u32, u32) {
        let pick = |[real, effective, ..]: [u32; 4]| {
            if effective != 0 { effective } else { real }
        };
        (pick(self.uid), pick(self.gid))
    }
}

/// Why `meta` (of `shown`) is not root's alone, if it is not: it must belong to root and be
/// writable by neither its group nor others. A sticky directory (`/tmp`) may be writable by
/// others: they cannot replace root's entries in it.
fn not_roots_alone(meta: &std::fs::Metadata, shown: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    if meta.uid() != 0 {
        return Some(format!("{} belongs to uid {}", shown.display(), meta.uid()));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 && !(meta.is_dir() && mode & 0o1000 != 0) {
        return Some(format!(
            "{} is writable by its group or others (mode {mode:o})",
            shown.display()
        ));
    }
    None
}

/// [`not_roots_alone`] of `path` (absolute, without symlinks) and of every directory above
/// it, read below `prefix` (`/`, or a process's `/proc/<pid>/root`).
fn not_roots_alone_up(prefix: &Path, path: &Path) -> Option<String> {
    for p in path.ancestors() {
        let seen = prefix.join(p.strip_prefix("/").unwrap_or(p));
        let why = match std::fs::metadata(&seen) {
            Ok(m) => not_roots_alone(&m, p),
            Err(e) => Some(format!("cannot check {}: {e}", p.display())),
        };
        if why.is_some() {
            return why;
        }
    }
    None
}

/// Why the binary of process `pid` (`exe`, held open as `file`) may not run as root, if it
/// may not: the file must be root's alone ([`not_roots_alone`]), and so must every directory
/// above it where it is found on disk (below the process's root, or this one's). A binary no
/// longer there (deleted since, or in a mount not visible here) is judged by the file alone:
/// the open file is what runs, and no one can swap it.
fn exe_not_roots_alone(pid: u32, exe: &Path, file: &std::fs::File) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => return Some(format!("cannot check {}: {e}", exe.display())),
    };
    let path = std::fs::read_link(exe).ok().filter(|p| p.is_absolute());
    if let Some(why) = not_roots_alone(&meta, path.as_deref().unwrap_or(exe)) {
        return Some(why);
    }
    let path = path?;
    let its_root = PathBuf::from(format!("/proc/{pid}/root"));
    for prefix in [its_root.as_path(), Path::new("/")] {
        let seen = prefix.join(path.strip_prefix("/").unwrap_or(&path));
        let same =
            std::fs::metadata(&seen).is_ok_and(|m| (m.dev(), m.ino()) == (meta.dev(), meta.ino()));
        if same {
            return not_roots_alone_up(prefix, path.parent()?);
        }
    }
    None
}

/// `prometheus --version` from this process's PATH. Empty and relative entries (the current
/// directory, whoever chose it) are skipped; as root, the binary found runs (by its path with
/// symlinks resolved) only if it and every directory above it, and above its PATH entry, are
/// root's alone ([`not_roots_alone`]).
fn local_path() -> Result<(PromVersion, String), String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut skipped = false;
    let mut found = None;
    for dir in std::env::split_paths(&path) {
        if !dir.is_absolute() {
            skipped = true;
            continue;
        }
        let p = dir.join("prometheus");
        if nix::unistd::access(p.as_path(), nix::unistd::AccessFlags::X_OK).is_ok() && p.is_file() {
            found = Some(p);
            break;
        }
    }
    let Some(bin) = found else {
        let note = if skipped {
            " (its empty and relative entries, which name the current directory, are skipped)"
        } else {
            ""
        };
        return Err(format!("no `prometheus` on PATH on this host{note}"));
    };
    let what = format!("{} --version", bin.display());
    let mut run = bin.clone();
    if nix::unistd::geteuid().is_root() {
        let resolved = bin
            .parent()
            .map(|d| (d.canonicalize(), bin.canonicalize()))
            .and_then(|(d, f)| Some((d.ok()?, f.ok()?)))
            .ok_or_else(|| format!("{what}: cannot resolve its path"))?;
        let why = not_roots_alone_up(Path::new("/"), &resolved.1)
            .or_else(|| not_roots_alone_up(Path::new("/"), &resolved.0));
        if let Some(why) = why {
            return Err(format!("{what}: {NOT_AS_ROOT}: {why}"));
        }
        run = resolved.1;
    }
    let mut cmd = Command::new(&run);
    cmd.arg("--version");
    let out = run_bounded(cmd, VERSION_TIMEOUT).map_err(|e| format!("{what}: {e}"))?;
    let v = PromVersion::from_version_output(&out).map_err(|e| format!("{what}: {e}"))?;
    Ok((
        v,
        format!(
            "{} on this host's PATH; not necessarily the binary that wrote the data",
            bin.display()
        ),
    ))
}

/// Whether a command or file name is a Prometheus server's (`prometheus`, `prometheus-3.5`).
fn is_prometheus_name(name: &str) -> bool {
    name.to_ascii_lowercase().contains("prometheus")
}

/// The whole environment of a `--version` run (locally and on an SSH host): this PATH and
/// nothing of promigrate's own environment.
const CLEAN_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs `cmd` (in `/`, no input, an environment of [`CLEAN_PATH`] alone) and returns its
/// stdout and stderr together; a non-zero exit, or still running after `limit` (then it is
/// killed), is an error.
fn run_bounded(mut cmd: Command, limit: Duration) -> Result<String, String> {
    use wait_timeout::ChildExt;
    let mut child = cmd
        .current_dir("/")
        .env_clear()
        .env("PATH", CLEAN_PATH)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run it: {e}"))?;
    // Read both pipes while it runs (a full pipe would stall it); a reader left behind by a
    // killed child ends with the pipe.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(r) = r {
                let _ = r.take(1 << 20).read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let status = match child.wait_timeout(limit) {
        Ok(Some(st)) => st,
        Ok(None) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("still running after {} s: killed", limit.as_secs()));
        }
        Err(e) => return Err(format!("cannot wait for it: {e}")),
    };
    let mut text = out.join().unwrap_or_default();
    text.extend(err.join().unwrap_or_default());
    let text = String::from_utf8_lossy(&text).into_owned();
    if !status.success() {
        return Err(format!("it failed ({status}): {}", first_line(&text)));
    }
    Ok(text)
}

/// `GET <url>/api/v1/status/buildinfo`, bounded by [`VERSION_TIMEOUT`].
fn buildinfo(url: &PromUrl) -> Result<PromVersion, String> {
    let at = format!("{}/api/v1/status/buildinfo", url.0);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(VERSION_TIMEOUT))
        .http_status_as_error(true)
        .build()
        .into();
    let body = agent
        .get(&at)
        .call()
        .and_then(|mut r| r.body_mut().with_config().limit(1 << 20).read_to_string())
        .map_err(|e| format!("GET {at}: {e}"))?;
    PromVersion::from_buildinfo(&body).map_err(|e| format!("GET {at}: {e}"))
}

/// Marks the lines the remote scripts print about themselves, apart from `--version`'s.
const MARK: &str = "promigrate-version:";

/// Shell functions of the remote scripts: the rule of [`not_roots_alone`] on the host.
/// `safe FILE SHOWN` is false, with `why` set, unless FILE (followed) belongs to root and is
/// writable by neither its group nor others (a sticky directory may be); `safe_up PREFIX
/// PATH` checks PATH and every directory above it, read below PREFIX.
const REMOTE_SAFE: &str = r#"safe() {
  s=$(stat -L -c '%u %a' "$1" 2>/dev/null) || { why="cannot check $2"; return 1; }
  case ${s%% *} in 0) ;; *) why="$2 belongs to uid ${s%% *}"; return 1;; esac
  m=${s#* }
  [ $((0$m & 022)) -eq 0 ] && return 0
  [ -d "$1" ] && [ $((0$m & 01000)) -ne 0 ] && return 0
  why="$2 is writable by its group or others (mode $m)"; return 1
}
safe_up() {
  q=${2:-/}
  while :; do
    safe "$1$q" "$q" || return 1
    [ "$q" = / ] && return 0
    q=${q%/*}; q=${q:-/}
  done
}"#;

/// The remote scan for the server writing the data directory (`ROOT`, quoted): the process
/// that has the newest WAL segment open for writing (by identity, so a containerised
/// server's own paths do not matter; readers such as sftp-server or tar are not the server),
/// named prometheus, is asked `/proc/<pid>/exe --version` with an environment of
/// [`CLEAN_PATH`] alone, bounded by coreutils `timeout` where there is one. The script's own
/// tools are looked up in [`CLEAN_PATH`] first. When the SSH user is root (or `id -u` does
/// not say): the binary is held open (fd 3) and run through it, as the process's own
/// user (the ids of its /proc/<pid>/status; setpriv), and as root only if it is root's alone
/// (as [`exe_not_roots_alone`]). Writes nothing. Prints [`MARK`] lines: `nowal`; or `pid <pid>
/// <comm>`, the output, `status <exit status>`; or `why <reason>` then `refused <pid>
/// <comm>`; or `other <pid> <comm>` for each writer not named prometheus, then `none <ssh
/// uid>`.
const REMOTE_RUNNING: &str = r#"cd / || exit 97
PATH=CLEAN:$PATH; export PATH
SAFE
me=$(id -u)
root=ROOT
seg=$(ls -1 "$root/wal" 2>/dev/null | grep -E '^[0-9]+$' | sort | tail -n 1)
[ -n "$seg" ] || { echo "MARK nowal"; exit 0; }
pids=
for f in $(find -L /proc/[0-9]*/fd -maxdepth 1 -samefile "$root/wal/$seg" -print 2>/dev/null); do
  pid=${f#/proc/}; pid=${pid%%/*}
  flags=$(sed -n 's/^flags:[[:space:]]*//p' "/proc/$pid/fdinfo/${f##*/}" 2>/dev/null)
  [ -n "$flags" ] && [ $((0$flags & 3)) -ne 0 ] || continue
  case " $pids " in *" $pid "*) ;; *) pids="$pids $pid";; esac
done
[ -n "$pids" ] || { echo "MARK none $me"; exit 0; }
t=; command -v timeout >/dev/null 2>&1 && t="timeout SECS"
refuse() { echo "MARK why $why"; echo "MARK refused $pid $comm"; exit 0; }
exe_safe() {
  p=$(readlink /proc/$pid/exe 2>/dev/null) || p=/proc/$pid/exe
  safe /proc/self/fd/3 "$p" || return 1
  case $p in /*) ;; *) return 0;; esac
  id=$(stat -L -c '%d %i' /proc/self/fd/3)
  for r in /proc/$pid/root ''; do
    [ "$(stat -L -c '%d %i' "$r$p" 2>/dev/null)" = "$id" ] || continue
    safe_up "$r" "${p%/*}"; return
  done
  return 0
}
for pid in $pids; do
  comm=$(cat /proc/$pid/comm 2>/dev/null) || continue
  case $comm in *prometheus*) ;; *) echo "MARK other $pid $comm"; continue;; esac
  x=/proc/$pid/exe; as=
  if [ "$me" = 0 ] || [ -z "$me" ]; then
    [ -e /proc/$pid/exe ] || continue
    exec 3</proc/$pid/exe
    x=/proc/self/fd/3
    set -- $(sed -n 's/^[UG]id:[[:space:]]*//p' /proc/$pid/status 2>/dev/null)
    [ $# -eq 8 ] || { why="cannot tell its user from /proc/$pid/status"; refuse; }
    uid=$2; [ "$uid" != 0 ] || uid=$1
    gid=$6; [ "$gid" != 0 ] || gid=$5
    if [ "$uid" != 0 ]; then
      as="setpriv --reuid=$uid --regid=$gid --clear-groups"
    else
      exe_safe || refuse
    fi
  fi
  echo "MARK pid $pid $comm"
  $t env -i PATH=CLEAN $as $x --version </dev/null 2>&1
  echo "MARK status $?"
  exit 0
done
echo "MARK none $me""#;

/// `prometheus --version` from the SSH user's PATH on the host, skipping empty and relative
/// entries, with an environment of [`CLEAN_PATH`] alone (the script's own tools are looked up
/// there first); when the SSH user is root (or `id -u` does not say), only if
/// the binary (symlinks resolved, and run by that path) and its PATH entry are root's alone.
/// Prints [`MARK`] lines: `nopath` (`nopath skipped` when entries were skipped); or `path
/// <binary>`, the output, `status <exit status>`; or `why <reason>` then `refused <binary>`.
const REMOTE_PATH: &str = r#"cd / || exit 97
upath=$PATH; PATH=CLEAN:$PATH; export PATH
SAFE
me=$(id -u)
p=; skipped=
IFS=:; set -f
for d in $upath; do
  case $d in /*) ;; *) skipped=" skipped"; continue;; esac
  [ -f "$d/prometheus" ] && [ -x "$d/prometheus" ] && { p=$d/prometheus; break; }
done
unset IFS; set +f
[ -n "$p" ] || { echo "MARK nopath$skipped"; exit 0; }
run=$p
if [ "$me" = 0 ] || [ -z "$me" ]; then
  d=$(cd "${p%/*}/" && pwd -P) && run=$(readlink -f "$p") || { echo "MARK why cannot resolve $p"; echo "MARK refused $p"; exit 0; }
  { safe_up '' "$run" && safe_up '' "$d"; } || { echo "MARK why $why"; echo "MARK refused $p"; exit 0; }
fi
t=; command -v timeout >/dev/null 2>&1 && t="timeout SECS"
echo "MARK path $p"
$t env -i PATH=CLEAN "$run" --version </dev/null 2>&1
echo "MARK status $?""#;

/// Runs a script on the source host once (no reconnection: this is best effort), with a
/// session timeout past the script's own `timeout`. `root`, shell-quoted, replaces `ROOT`
/// (last: the path is the user's text). Returns its stdout.
fn remote_script(pool: &crate::ssh::Pool, script: &str, root: &str) -> Result<String, String> {
    let host = pool.spec().describe();
    let script = script
        .replace("SAFE", REMOTE_SAFE)
        .replace("CLEAN", CLEAN_PATH)
        .replace("MARK", MARK)
        .replace("SECS", &VERSION_TIMEOUT.as_secs().to_string())
        .replace("ROOT", root);
    let conn = pool
        .take(false)
        .map_err(|e| format!("cannot reach {host}: {e}"))?;
    let limit = VERSION_TIMEOUT + Duration::from_secs(20);
    conn.sess.set_timeout(limit.as_millis() as u32);
    let result = crate::ssh::exec(&conn.sess, &script);
    conn.sess.set_timeout(60_000);
    match result {
        Ok((_, out)) => {
            pool.give(conn);
            Ok(out)
        }
        Err(e) => Err(format!("the command on {host} failed: {e}")),
    }
}

/// The marked lines of a remote script's output, and the `--version` output between
/// `pid`/`path` and `status`.
struct Marked {
    marks: Vec<String>,
    output: String,
    status: Option<i32>,
}

impl Marked {
    /// The reason a script gave (`why <reason>`) for refusing to run a binary.
    fn why(&self) -> &str {
        self.marks
            .iter()
            .find_map(|k| k.strip_prefix("why "))
            .unwrap_or("no reason given")
    }
}

fn marked(out: &str) -> Marked {
    let mut m = Marked {
        marks: Vec::new(),
        output: String::new(),
        status: None,
    };
    for line in out.lines() {
        match line.strip_prefix(MARK).map(str::trim) {
            Some(mark) => match mark.strip_prefix("status ") {
                Some(n) => m.status = n.trim().parse().ok(),
                None => m.marks.push(mark.to_string()),
            },
            None => {
                m.output.push_str(line);
                m.output.push('\n');
            }
        }
    }
    m
}

/// The answer of a remote `--version` run: its version, or why not.
fn remote_answer(m: &Marked, what: &str) -> Result<PromVersion, String> {
    match m.status {
        Some(0) => PromVersion::from_version_output(&m.output).map_err(|e| format!("{what}: {e}")),
        Some(124) => Err(format!(
            "{what}: still running after {} s: killed",
            VERSION_TIMEOUT.as_secs()
        )),
        Some(n) => Err(format!(
            "{what}: it failed (exit status {n}): {}",
            first_line(&m.output)
        )),
        None => Err(format!(
            "{what}: the script ended early: {}",
            first_line(&m.output)
        )),
    }
}

/// The remote server's binary, found by [`REMOTE_RUNNING`].
fn remote_running(pool: &crate::ssh::Pool, root: &Path) -> Result<(PromVersion, String), String> {
    let host = &pool.spec().host;
    let quoted = crate::ssh::shell_quote(root);
    let m = marked(&remote_script(pool, REMOTE_RUNNING, &quoted)?);
    let mut others = Vec::new();
    let mut unseen = None;
    for mark in &m.marks {
        let words: Vec<&str> = mark.splitn(3, ' ').collect();
        match words[..] {
            ["nowal"] => {
                return Err(format!(
                    "{} on {host} has no WAL segment: no server writes it",
                    root.display()
                ));
            }
            ["none", uid] => unseen = Some(uid == "0"),
            ["other", pid, ref comm @ ..] => {
                others.push(format!("process {pid} ({})", comm.join(" ")));
            }
            ["refused", pid, ref comm @ ..] => {
                let what = format!(
                    "/proc/{pid}/exe --version on {host} (process {pid}, {})",
                    comm.join(" ")
                );
                return Err(format!(
                    "{what}: {NOT_AS_ROOT} (the process runs as root): {}",
                    m.why()
                ));
            }
            ["pid", pid, ref comm @ ..] => {
                let comm = comm.join(" ");
                let exe = format!("/proc/{pid}/exe");
                let what = format!("{exe} --version on {host} (process {pid}, {comm})");
                let v = remote_answer(&m, &what)?;
                let how = format!("the running server's binary on {host} ({exe} --version)");
                return Ok((v, how));
            }
            _ => {}
        }
    }
    let root = root.display();
    match unseen {
        _ if !others.is_empty() => Err(format!(
            "{} on {host} {} {root} but no prometheus binary: not run",
            others.join(", "),
            crate::units::verb_for(others.len() as u64, "writes", "write")
        )),
        Some(as_root) => {
            let hint = if as_root {
                "the server is stopped, or runs on another host"
            } else {
                "the server is stopped, or runs as another user than the SSH user, whose processes only root can see"
            };
            Err(format!(
                "no process on {host} has the WAL of {root} open for writing ({hint})"
            ))
        }
        None => Err(format!(
            "the search for the server writing {root} on {host} answered nothing usable: {}",
            first_line(&m.output)
        )),
    }
}

/// `prometheus --version` from PATH on the remote host ([`REMOTE_PATH`]).
fn remote_path(pool: &crate::ssh::Pool) -> Result<(PromVersion, String), String> {
    let host = &pool.spec().host;
    let m = marked(&remote_script(pool, REMOTE_PATH, "")?);
    if let Some(bin) = m.marks.iter().find_map(|k| k.strip_prefix("refused ")) {
        return Err(format!(
            "{bin} --version on {host}: {NOT_AS_ROOT}: {}",
            m.why()
        ));
    }
    let bin = m.marks.iter().find_map(|k| k.strip_prefix("path "));
    match bin {
        Some(bin) => {
            let what = format!("{bin} --version on {host}");
            let v = remote_answer(&m, &what)?;
            Ok((
                v,
                format!(
                    "{bin} on the SSH user's PATH on {host}; not necessarily the binary that wrote the data"
                ),
            ))
        }
        None if m.marks.iter().any(|k| k == "nopath") => {
            Err(format!("no `prometheus` on the SSH user's PATH on {host}"))
        }
        None if m.marks.iter().any(|k| k == "nopath skipped") => Err(format!(
            "no `prometheus` on the SSH user's PATH on {host} (its empty and relative entries, which name the current directory, are skipped)"
        )),
        None => Err(format!(
            "the PATH lookup on {host} answered nothing usable: {}",
            first_line(&m.output)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_weak_answer_yields_to_an_earlier_applys_strong_one() {
        let d = tempfile::tempdir().unwrap();
        let weak = SourceVersion {
            version: Some(PromVersion::new(2, 42, 0)),
            via: Via::Path,
            how: "prometheus on PATH".into(),
            tried: vec!["no running server".into()],
        };
        // No record: unchanged.
        assert_eq!(weak.clone().or_recorded(d.path()), weak);
        let record = |name: &str, via: &str, version: &str| {
            std::fs::write(
                d.path().join(name),
                serde_json::json!({"command": "apply", "report": {"plan": {"source_version":
                    {"version": version, "via": via, "how": "its binary", "tried": []}}}})
                .to_string(),
            )
            .unwrap();
        };
        record("20261201T000000.000Z-apply.json", "running_binary", "3.5.0");
        record("20261202T000000.000Z-apply.json", "path", "2.42.0");
        let got = weak.clone().or_recorded(d.path());
        assert_eq!(got.version, Some(PromVersion::new(3, 5, 0)));
        assert_eq!(got.via, Via::RunningBinary);
        // Today's records: the plan under `targets[]`; the newest strong answer wins.
        std::fs::write(
            d.path().join("20261203T000000.000Z-apply.json"),
            serde_json::json!({"command": "apply", "report": {"targets": [{"plan": {"source_version":
                {"version": "3.6.1", "via": "running_binary", "how": "its binary", "tried": []}}}]}})
            .to_string(),
        )
        .unwrap();
        let got = weak.clone().or_recorded(d.path());
        assert_eq!(got.version, Some(PromVersion::new(3, 6, 1)));
        assert!(
            got.how.contains("recorded by the earlier apply"),
            "{}",
            got.how
        );
        // A strong answer now is kept.
        let strong = SourceVersion {
            via: Via::Plan,
            ..weak
        };
        assert_eq!(strong.clone().or_recorded(d.path()), strong);
    }

    fn v(s: &str) -> PromVersion {
        s.parse().unwrap()
    }

    #[test]
    fn version_output_of_debian_and_upstream() {
        let debian = "prometheus, version 2.42.0+ds (branch: debian/sid, revision: 2.42.0+ds-5+deb12u1)\n  build user:       team+pkg-go@tracker.debian.org\n  go version:       go1.19.8\n";
        let got = PromVersion::from_version_output(debian).unwrap();
        assert_eq!(got, PromVersion::new(2, 42, 0));
        assert_eq!(got.to_string(), "2.42.0");
        let upstream = "prometheus, version 3.5.0 (branch: HEAD, revision: 8be3a9560fbdd18a94dedec4b747c35178177202)\n  build user: root@4b7a0d5a5e89\n";
        assert_eq!(
            PromVersion::from_version_output(upstream).unwrap(),
            PromVersion::new(3, 5, 0)
        );
        let rc = "prometheus, version 3.0.0-rc.1 (branch: HEAD, revision: x)";
        assert_eq!(
            PromVersion::from_version_output(rc).unwrap().to_string(),
            "3.0.0-rc.1"
        );
        let e =
            PromVersion::from_version_output("promtool, version 3.5.0 (branch: HEAD)").unwrap_err();
        assert!(e.0.contains("`promtool, version 3.5.0"), "{e}");
        let e = PromVersion::from_version_output("prometheus, version  (branch: , revision: )")
            .unwrap_err();
        assert!(e.0.contains("not a version"), "{e}");
        assert!(PromVersion::from_version_output("").is_err());
    }

    #[test]
    fn buildinfo_json() {
        let ok = r#"{"status":"success","data":{"version":"2.42.0+ds","revision":"2.42.0+ds-5","branch":"debian/sid","buildUser":"x","buildDate":"20230101","goVersion":"go1.19.8"}}"#;
        assert_eq!(
            PromVersion::from_buildinfo(ok).unwrap(),
            PromVersion::new(2, 42, 0)
        );
        let three = r#"{"status":"success","data":{"version":"3.16.0"}}"#;
        assert_eq!(
            PromVersion::from_buildinfo(three).unwrap(),
            PromVersion::new(3, 16, 0)
        );
        for (bad, says) in [
            (r#"{"status":"error","error":"nope"}"#, "nope"),
            (r#"{"status":"success","data":{}}"#, "no data.version"),
            (
                r#"{"status":"success","data":{"version":"main"}}"#,
                "`main`",
            ),
            ("<html>404</html>", "not JSON"),
        ] {
            let e = PromVersion::from_buildinfo(bad).unwrap_err();
            assert!(e.0.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn image_tags() {
        for (image, want) in [
            ("quay.io/prometheus/prometheus:v3.5.0", "3.5.0"),
            ("prom/prometheus:v2.55.1", "2.55.1"),
            ("quay.io/prometheus/prometheus:v3.5.0-distroless", "3.5.0"),
            ("prom/prometheus:v3.0.0-rc.1", "3.0.0-rc.1"),
            ("prom/prometheus:v3.0.0-rc.1-distroless", "3.0.0-rc.1"),
            ("bitnami/prometheus:2.53.0-debian-12-r3", "2.53.0"),
            (
                "registry:5000/x/prometheus:v2.53.0@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "2.53.0",
            ),
            ("localhost:5000/prometheus:v3.16.0", "3.16.0"),
        ] {
            let got = PromVersion::from_image(image).unwrap_or_else(|e| panic!("{image}: {e}"));
            assert_eq!(got.to_string(), want, "{image}");
        }
        for (image, says) in [
            (
                "prom/prometheus@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "digest only",
            ),
            ("prom/prometheus", "no tag"),
            // The port is the registry's, not a tag.
            ("registry:5000/x/prometheus", "no tag"),
            (
                "registry:5000/x/prometheus@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "digest only",
            ),
            ("prom/prometheus:latest", "`latest`"),
            ("prom/prometheus:main", "`main`"),
            ("prom/prometheus:v3.5", "`v3.5`"),
            ("prom/prometheus:v3.5.0.1", "`v3.5.0.1`"),
            ("prom/prometheus:v3.5.0_x", "`v3.5.0_x`"),
        ] {
            let e = PromVersion::from_image(image).unwrap_err();
            assert!(e.0.contains(says), "{image}: {e}");
        }
    }

    #[test]
    fn plan_field_values_and_order() {
        assert_eq!(v("3.5.0"), PromVersion::new(3, 5, 0));
        assert_eq!(v("v3.5.0"), PromVersion::new(3, 5, 0));
        assert_eq!(v("2.42.0+ds").to_string(), "2.42.0");
        for bad in ["3.5", "v3", "three", "", "3.5.0.1", "v 3.5.0"] {
            let e = bad.parse::<PromVersion>().unwrap_err();
            assert!(e.0.contains("MAJOR.MINOR.PATCH"), "{bad}: {e}");
        }
        assert!(v("2.42.0") < v("2.55.0"));
        assert!(v("2.55.0") < v("3.0.0-rc.1"));
        assert!(v("3.0.0-rc.1") < v("3.0.0"));
        assert!(v("3.0.0") < v("3.16.0"));
        assert!(v("2.9.0") < v("2.10.0"), "numeric, not textual");
        assert_eq!(serde_json::to_string(&v("v3.5.0")).unwrap(), "\"3.5.0\"");
        let (major, minor, patch) = {
            let x = v("3.16.2");
            (x.major(), x.minor(), x.patch())
        };
        assert_eq!((major, minor, patch), (3, 16, 2));
    }

    #[test]
    fn urls() {
        for (good, base) in [
            ("http://vm1:9090", "http://vm1:9090"),
            (
                "https://prom.example/prefix/",
                "https://prom.example/prefix",
            ),
        ] {
            assert_eq!(PromUrl::try_from(good.to_string()).unwrap().0, base);
        }
        for bad in [
            "vm1:9090",
            "ftp://vm1",
            "http://",
            "http://vm1:9090/?x=1",
            "",
        ] {
            assert!(PromUrl::try_from(bad.to_string()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_hung_command_is_killed_and_a_failing_one_says_why() {
        let mut sleep = Command::new("sleep");
        sleep.arg("60");
        let e = run_bounded(sleep, Duration::from_millis(300)).unwrap_err();
        assert!(e.contains("killed"), "{e}");
        let mut fail = Command::new("sh");
        fail.args(["-c", "echo boom >&2; exit 3"]);
        let e = run_bounded(fail, VERSION_TIMEOUT).unwrap_err();
        assert!(e.contains("boom") && e.contains("3"), "{e}");
        let e = run_bounded(Command::new("/nonexistent/prometheus"), VERSION_TIMEOUT).unwrap_err();
        assert!(e.contains("cannot run"), "{e}");
    }

    #[test]
    fn a_process_user_is_read_from_its_status() {
        let status = "Name:\tprometheus\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\nNgid:\t0\nPid:\t4242\nPPid:\t1\nTracerPid:\t0\nUid:\t1000\t1000\t1000\t1000\nGid:\t2000\t2000\t2000\t2000\nFDSize:\t64\nGroups:\t2000 \n";
        let ids = ProcIds::parse(status).unwrap();
        assert_eq!(ids.uid, [1000; 4]);
        assert_eq!(ids.gid, [2000; 4]);
        assert_eq!(ids.run_as(), (1000, 2000));
        // Effective root with a real user (or the other way round): never run as root.
        let mixed = "Uid:\t1000\t0\t0\t0\nGid:\t0\t3000\t0\t0\n";
        assert_eq!(ProcIds::parse(mixed).unwrap().run_as(), (1000, 3000));
        let root = "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n";
        assert_eq!(ProcIds::parse(root).unwrap().run_as(), (0, 0));
        for (bad, says) in [
            ("Gid:\t0\t0\t0\t0\n", "no Uid: line"),
            ("Uid:\t0\t0\t0\t0\n", "no Gid: line"),
            ("Uid:\t0\t0\t0\nGid:\t0\t0\t0\t0\n", "is not four ids"),
            ("Uid:\t0\tx\t0\t0\nGid:\t0\t0\t0\t0\n", "is not four ids"),
        ] {
            let e = ProcIds::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        // This process's own.
        let me = ProcIds::parse(&std::fs::read_to_string("/proc/self/status").unwrap()).unwrap();
        assert_eq!(me.uid[0], nix::unistd::getuid().as_raw());
        assert_eq!(me.uid[1], nix::unistd::geteuid().as_raw());
        assert_eq!(me.gid[1], nix::unistd::getegid().as_raw());
    }

    #[test]
    fn a_version_run_gets_the_fixed_path_and_nothing_else() {
        let out = run_bounded(Command::new("env"), VERSION_TIMEOUT).unwrap();
        assert_eq!(out, format!("PATH={CLEAN_PATH}\n"));
    }

    /// The root rule, here and in the remote scripts' shell functions (run by this host's
    /// `sh`): the same verdict, in the same words.
    #[test]
    fn the_root_rule_here_and_in_the_remote_shell() {
        use std::os::unix::fs::PermissionsExt;
        if !nix::unistd::geteuid().is_root() {
            return; // it needs files of another owner
        }
        let d = tempfile::tempdir().unwrap();
        let base = d.path().canonicalize().unwrap();
        let chmod = |p: &Path, mode: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        chmod(&base, 0o755);
        let file = |dir: &str, mode: u32, owner: u32| {
            let dir = base.join(dir);
            std::fs::create_dir_all(&dir).unwrap();
            let f = dir.join("prometheus");
            std::fs::write(&f, "").unwrap();
            chmod(&f, mode);
            std::os::unix::fs::chown(&f, Some(owner), Some(0)).unwrap();
            f
        };
        let ok = file("ok", 0o755, 0);
        let group_writable = file("gw", 0o775, 0);
        let users = file("users", 0o755, 1000);
        let in_open = file("open", 0o755, 0);
        chmod(in_open.parent().unwrap(), 0o777);
        let in_sticky = file("sticky", 0o755, 0);
        chmod(in_sticky.parent().unwrap(), 0o1777);
        let in_users_dir = file("usersdir", 0o755, 0);
        std::os::unix::fs::chown(in_users_dir.parent().unwrap(), Some(1000), None).unwrap();
        let shown = |p: &Path| p.display().to_string();
        for (f, want) in [
            (&ok, None),
            (&in_sticky, None),
            (
                &group_writable,
                Some(format!(
                    "{} is writable by its group or others (mode 775)",
                    shown(&group_writable)
                )),
            ),
            (
                &users,
                Some(format!("{} belongs to uid 1000", shown(&users))),
            ),
            (
                &in_open,
                Some(format!(
                    "{} is writable by its group or others (mode 777)",
                    shown(in_open.parent().unwrap())
                )),
            ),
            (
                &in_users_dir,
                Some(format!(
                    "{} belongs to uid 1000",
                    shown(in_users_dir.parent().unwrap())
                )),
            ),
        ] {
            assert_eq!(
                not_roots_alone_up(Path::new("/"), f),
                want,
                "{}",
                f.display()
            );
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "{REMOTE_SAFE}\nif safe_up '' \"$1\"; then echo ok; else echo \"$why\"; fi"
                ))
                .arg("sh")
                .arg(f)
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
            assert_eq!(said, want.unwrap_or("ok".into()), "{}", f.display());
        }
    }

    /// [`REMOTE_PATH`] run by this host's `sh` (as over SSH, but without the session): empty
    /// and relative entries are skipped, another user's `prometheus` is refused as root, and
    /// root's runs with PATH alone.
    #[test]
    fn the_remote_path_script_skips_relative_entries_and_holds_to_the_root_rule() {
        use std::os::unix::fs::PermissionsExt;
        if !nix::unistd::geteuid().is_root() {
            return; // it needs files of another owner
        }
        let d = tempfile::tempdir().unwrap();
        let base = d.path().canonicalize().unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        let fake = |dir: &str, owner: u32| {
            let dir = base.join(dir);
            std::fs::create_dir(&dir).unwrap();
            let f = dir.join("prometheus");
            let script =
                "#!/bin/sh\necho \"prometheus, version 1.2.3 (env: $(env | tr '\\n' ' '))\"\n";
            std::fs::write(&f, script).unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::os::unix::fs::chown(&dir, Some(owner), None).unwrap();
            std::os::unix::fs::chown(&f, Some(owner), None).unwrap();
            dir
        };
        let relative = fake("rel", 0);
        let users = fake("users", 1000);
        let roots = fake("roots", 0);
        let script = REMOTE_PATH
            .replace("SAFE", REMOTE_SAFE)
            .replace("CLEAN", CLEAN_PATH)
            .replace("MARK", MARK)
            .replace("SECS", "10");
        let run = |path: String| {
            let out = Command::new("/bin/sh")
                .args(["-c", &script])
                .env("PATH", path)
                .env("SECRET", "x")
                .current_dir(&base)
                .output()
                .unwrap();
            marked(&String::from_utf8_lossy(&out.stdout))
        };
        let m = run(":rel:./rel".into());
        assert_eq!(m.marks, ["nopath skipped"], "{}", m.output);
        let m = run(format!("rel:{}:{}", users.display(), roots.display()));
        let bin = users.join("prometheus");
        assert_eq!(m.marks.len(), 2, "{:?} {}", m.marks, m.output);
        assert_eq!(m.marks[1], format!("refused {}", bin.display()));
        assert_eq!(m.why(), format!("{} belongs to uid 1000", bin.display()));
        let m = run(format!("rel:{}:{}", roots.display(), users.display()));
        assert_eq!(m.marks, [format!("path {}/prometheus", roots.display())]);
        assert_eq!(remote_answer(&m, "x").unwrap(), PromVersion::new(1, 2, 3));
        assert!(
            m.output.contains(&format!("PATH={CLEAN_PATH} ")) && !m.output.contains("SECRET"),
            "{}",
            m.output
        );
        drop(relative);
    }

    #[test]
    fn the_remote_scripts_are_shell() {
        for script in [REMOTE_RUNNING, REMOTE_PATH] {
            let text = script
                .replace("SAFE", REMOTE_SAFE)
                .replace("CLEAN", CLEAN_PATH)
                .replace("MARK", MARK)
                .replace("SECS", "10")
                .replace("ROOT", "'/data'");
            let st = Command::new("sh")
                .args(["-n", "-c", &text])
                .status()
                .unwrap();
            assert!(st.success(), "{text}");
        }
    }

    #[test]
    fn remote_answers() {
        let m = marked(&format!(
            "{MARK} pid 42 prometheus\nprometheus, version 3.16.0 (branch: HEAD, revision: v0.316.0)\n  build user: x\n{MARK} status 0\n"
        ));
        assert_eq!(m.marks, ["pid 42 prometheus"]);
        assert_eq!(remote_answer(&m, "x").unwrap(), PromVersion::new(3, 16, 0));
        let m = marked(&format!(
            "{MARK} path /usr/bin/prometheus\n{MARK} status 124\n"
        ));
        assert!(remote_answer(&m, "x").unwrap_err().contains("killed"));
        let m = marked(&format!("{MARK} pid 42 prometheus\nbash: cannot execute\n"));
        assert!(remote_answer(&m, "x").unwrap_err().contains("ended early"));
        let m = marked(&format!(
            "{MARK} why /opt/p/prometheus belongs to uid 1000\n{MARK} refused 42 prometheus\n"
        ));
        assert_eq!(m.why(), "/opt/p/prometheus belongs to uid 1000");
        assert_eq!(m.marks[1], "refused 42 prometheus");
    }
}
