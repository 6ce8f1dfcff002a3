//! Shared helpers of the integration tests: real TSDB fixtures (promtool + a real
//! prometheus: Debian's 2.42 via scripts/gen-tsdb.sh, 3.x built by scripts/prometheus3.sh via
//! scripts/gen-tsdb3.sh), plan files, the promigrate binary, and real Prometheus servers (2.42
//! or 3.x: [`PromFlavor`]) started on 127.0.0.1 and stopped by their PID; a real Kubernetes
//! control plane ([`cluster`]), the real Prometheus Operator against it ([`operator`]), and a
//! real node (kubelet, containerd) beside a control plane ([`node`]).
#![allow(dead_code)]

pub mod cluster;
pub mod fake_prometheus;
pub mod node;
pub mod operator;
pub mod sshd;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const RUN_AS_USER: u32 = 1000;
pub const FS_GROUP: u32 = 2000;

/// Runs scripts/gen-tsdb.sh (idempotent, flock'ed, so test binaries may race) and returns
/// `target/fixtures/<name>`.
fn build_fixture(name: &str, args: &[&std::ffi::OsStr]) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(root.join("target/fixtures")).unwrap();
    let status = Command::new("bash")
        .arg(root.join("scripts/gen-tsdb.sh"))
        .args(args)
        .status()
        .expect("run scripts/gen-tsdb.sh (needs Debian's prometheus package: see .ci/run)");
    assert!(status.success(), "scripts/gen-tsdb.sh {args:?} failed");
    root.join("target/fixtures").join(name)
}

fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/fixtures")
        .join(name)
}

/// The shared real TSDB: promtool blocks compacted by a real prometheus, with tombstones, WAL
/// and head chunks. Tests never write into it: they copy it with [`copy_tree`] first.
pub fn fixture() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| build_fixture("tsdb", &[fixture_path("tsdb").as_os_str()]))
}

/// Promtool-made level-1 blocks only (no server ran on them): a real prometheus started on
/// them compacts them.
pub fn raw_fixture() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        build_fixture(
            "tsdb-raw",
            &[fixture_path("tsdb-raw").as_os_str(), "--no-server".as_ref()],
        )
    })
}

/// At least 1 GiB of real blocks (promtool blocks replicated under fresh ULIDs).
pub fn gib_fixture() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = fixture_path("blocks-1gib");
        build_fixture(
            "blocks-1gib",
            &[
                fixture().as_os_str(),
                "--replicate-to".as_ref(),
                dir.as_os_str(),
                "--gib".as_ref(),
                "1".as_ref(),
            ],
        )
    })
}

/// The bin dir of Prometheus 3.x (`prometheus`, `promtool`), built once from the Go module
/// proxy by scripts/prometheus3.sh (cached by version in ~/.cache/promigrate; minutes when cold,
/// then instant; test binaries may race: it is flock'ed).
pub fn prom3_bin() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        path_from_script(
            "prometheus3.sh",
            "build",
            " (needs go: see docs/development.md)",
            "a bin dir",
            |d| d.join("prometheus").is_file() && d.join("promtool").is_file(),
        )
    })
}

/// Runs `bash scripts/<script> <arg>` (its progress on stderr) and returns the path its last
/// stdout line names, which `ok` must accept (`what` it should be, for the message).
pub fn path_from_script(
    script: &str,
    arg: &str,
    needs: &str,
    what: &str,
    ok: impl Fn(&Path) -> bool,
) -> PathBuf {
    let out = Command::new("bash")
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("scripts")
                .join(script),
        )
        .arg(arg)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run scripts/{script} {arg}{needs}: {e}"));
    assert!(out.status.success(), "scripts/{script} {arg} failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    assert!(
        ok(&path),
        "scripts/{script} {arg} printed {stdout:?}, not {what}"
    );
    path
}

/// tests/prom3feed, the program that feeds Prometheus 3 for scripts/gen-tsdb3.sh, built once
/// (`gen-tsdb3.sh --feeder`: cached by a hash of its sources).
pub fn prom3_feeder() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        path_from_script(
            "gen-tsdb3.sh",
            "--feeder",
            " (needs go)",
            "the feeder",
            |b| b.is_file(),
        )
    })
}

/// A real Prometheus 3.x TSDB (scripts/gen-tsdb3.sh, about a minute): promtool 3.x blocks,
/// blocks compacted from the head and from out-of-order data (some with chunks of 1 MiB or
/// more: a native histogram of 36000 buckets), tombstones, a zstd WAL with a checkpoint,
/// wbl/, chunks_head/ with out-of-order chunks, and chunk_snapshot.*. Tests never write into
/// it: they copy it first.
pub fn prom3_fixture() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let bin = prom3_bin();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        std::fs::create_dir_all(root.join("target/fixtures")).unwrap();
        let dir = fixture_path("tsdb3");
        let status = Command::new("bash")
            .arg(root.join("scripts/gen-tsdb3.sh"))
            .arg(&dir)
            .env("PROMETHEUS3_BIN_DIR", bin)
            .status()
            .expect("run scripts/gen-tsdb3.sh");
        assert!(
            status.success(),
            "scripts/gen-tsdb3.sh {} failed",
            dir.display()
        );
        dir
    })
}

/// The chunks of one segment (block chunk file or head chunk file): (offset of the chunk,
/// offset of its data, data length, encoding byte). Stops at the first entry that does not
/// parse (e.g. the end of a head chunk file being written).
pub fn segment_chunks(bytes: &[u8], head: bool) -> Vec<(usize, usize, usize, u8)> {
    fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
        let (mut v, mut shift) = (0u64, 0);
        for (i, &x) in b.iter().enumerate().take(10) {
            v |= u64::from(x & 0x7f) << shift;
            if x < 0x80 {
                return Some((v, i + 1));
            }
            shift += 7;
        }
        None
    }
    let mut out = Vec::new();
    let mut off = 8;
    while off + 30 < bytes.len() {
        let start = off;
        let enc = if head {
            if bytes[off..off + 24].iter().all(|&b| b == 0) {
                break;
            }
            off += 24;
            let e = bytes[off];
            off += 1;
            e
        } else {
            0
        };
        let Some((len, n)) = uvarint(&bytes[off..]) else {
            break;
        };
        if len == 0 {
            break;
        }
        off += n;
        let enc = if head {
            enc
        } else {
            off += 1;
            bytes[off - 1]
        };
        out.push((start, off, len as usize, enc));
        off += len as usize + 4;
    }
    out
}

/// The length of the largest chunk in a block's chunk segments; 0 when a running server
/// deleted the block meanwhile.
pub fn largest_block_chunk(block: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(block.join("chunks")) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read(e.path()).ok())
        .flat_map(|bytes| segment_chunks(&bytes, false))
        .map(|c| c.2)
        .max()
        .unwrap_or(0)
}

/// Some block directory of a TSDB (the first by name).
pub fn some_block(root: &Path) -> PathBuf {
    let mut blocks: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("meta.json").exists())
        .collect();
    blocks.sort();
    blocks.into_iter().next().expect("the TSDB has a block")
}

/// The share of the bytes of the files below `dir` that are in the page cache (fincore).
pub fn cached_share(dir: &Path) -> f64 {
    let files: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect();
    let out = Command::new("fincore")
        .args(["--bytes", "--noheadings", "--raw", "-o", "RES,SIZE"])
        .args(&files)
        .output()
        .expect("fincore (util-linux)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (mut res, mut size) = (0u64, 0u64);
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let v: Vec<u64> = l
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.len() == 2 {
            res += v[0];
            size += v[1];
        }
    }
    res as f64 / size.max(1) as f64
}

/// Every regular file below `dir`: (path relative to `dir`, its walk entry).
pub fn files_below(dir: &Path) -> impl Iterator<Item = (String, walkdir::DirEntry)> + '_ {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(move |e| {
            let rel = e
                .path()
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (rel, e)
        })
}

/// Every file below `dir` (relative path → xxh3-128 of its content).
pub fn content_hashes(dir: &Path) -> std::collections::BTreeMap<String, u128> {
    files_below(dir)
        .map(|(rel, e)| {
            let data = std::fs::read(e.path()).unwrap();
            (rel, xxhash_rust::xxh3::xxh3_128(&data))
        })
        .collect()
}

/// Starts `apply --yes` rate-limited so that copying `bytes` takes about `seconds`, with its
/// output discarded: long enough for a test to interrupt it mid-copy.
pub fn spawn_slow_apply(ws: &Workspace, bytes: u64, seconds: u64) -> Child {
    let rate = format!("{}K", (bytes / 1024 / seconds).max(8));
    ws.cmd(&["apply", "--yes", "--bwlimit", &rate])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Flips the byte at `offset` of a file and puts its mtime back, so that only a content
/// comparison (not size + mtime) can see the change.
pub fn flip_byte_keeping_mtime(path: &Path, offset: usize) {
    let before = std::fs::metadata(path).unwrap();
    let mut data = std::fs::read(path).unwrap();
    data[offset] ^= 0xff;
    std::fs::write(path, &data).unwrap();
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(before.modified().unwrap())
        .unwrap();
}

/// Dates a file `1960-01-01T00:00:00.5Z` (`touch -d`): before 1970, so its mtime is negative
/// seconds (-315619200) with nanoseconds (500000000).
pub fn date_before_1970(path: &Path) {
    let st = Command::new("touch")
        .args(["-d", "1960-01-01T00:00:00.5Z"])
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success(), "touch -d 1960-01-01 {}", path.display());
}

/// A file's mtime: (seconds, nanoseconds).
pub fn mtime_of(path: &Path) -> (i64, i64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    (m.mtime(), m.mtime_nsec())
}

/// Drops the page cache (root only).
pub fn drop_page_cache() {
    let st = Command::new("sh")
        .args(["-c", "sync && echo 3 > /proc/sys/vm/drop_caches"])
        .status()
        .unwrap();
    assert!(
        st.success(),
        "cannot drop the page cache (tests run as root: see .ci/run)"
    );
}

/// `cp -a src dst`.
pub fn copy_tree(src: &Path, dst: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .status()
        .unwrap();
    assert!(st.success(), "cp -a {} {}", src.display(), dst.display());
}

/// A test workspace: a private copy of the fixture as the source, an empty target mount,
/// and a plan file. Its directories are traversable by the runtime uid (Prometheus runs as
/// RUN_AS_USER on the target).
pub struct Workspace {
    pub dir: tempfile::TempDir,
    pub source: PathBuf,
    pub mount: PathBuf,
    pub plan: PathBuf,
    pub state: PathBuf,
}

impl Workspace {
    pub fn new() -> Self {
        Self::with_extra("")
    }

    /// A workspace whose plan gets `transfer_extra` lines appended under `transfer:`.
    pub fn with_extra(transfer_extra: &str) -> Self {
        Self::from_fixture(fixture(), transfer_extra)
    }

    /// A workspace whose source is a private copy of `data`.
    pub fn from_fixture(data: &Path, transfer_extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let source = dir.path().join("source");
        copy_tree(data, &source);
        let mount = dir.path().join("pv");
        std::fs::create_dir(&mount).unwrap();
        let plan = dir.path().join("plan.yaml");
        let state = dir.path().join("records");
        let ws = Workspace {
            dir,
            source,
            mount,
            plan,
            state,
        };
        ws.write_plan(transfer_extra);
        ws
    }

    pub fn write_plan(&self, transfer_extra: &str) {
        std::fs::write(
            &self.plan,
            plan_yaml(&self.source, &self.mount, transfer_extra),
        )
        .unwrap();
    }

    /// The TSDB root on the target (`mount/prometheus-db`).
    pub fn target(&self) -> PathBuf {
        self.mount.join("prometheus-db")
    }

    /// `promigrate <args…> -f plan` with `--state-dir` where it applies.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = promigrate();
        c.args(args).arg("-f").arg(&self.plan);
        if matches!(
            args.first(),
            Some(&"apply") | Some(&"verify") | Some(&"plan")
        ) {
            c.arg("--state-dir").arg(&self.state);
        }
        c
    }

    /// Runs a command and returns (exit code, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        run(self.cmd(args))
    }

    /// Runs a command with `--output json` and parses stdout.
    pub fn run_json(&self, args: &[&str]) -> (i32, serde_json::Value) {
        let mut a = args.to_vec();
        a.extend(["--output", "json"]);
        let (code, out, err) = self.run(&a);
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {out}\nstderr: {err}"));
        (code, v)
    }
}

pub fn plan_yaml(source: &Path, mount: &Path, transfer_extra: &str) -> String {
    format!(
        "apiVersion: promigrate/v1
kind: Migration
metadata:
  name: test-migration
source:
  path: {}
target:
  path: {}
  subPath: prometheus-db
  securityContext:
    runAsUser: {RUN_AS_USER}
    fsGroup: {FS_GROUP}
transfer:
  parallelism: 4
{transfer_extra}",
        source.display(),
        mount.display()
    )
}

/// The one target's part of a command's JSON report: plan, apply and verify report every
/// target under `targets`, also when there is only one.
pub fn only(v: &serde_json::Value) -> &serde_json::Value {
    match v["targets"].as_array().map(Vec::as_slice) {
        Some([one]) => one,
        _ => panic!("one entry in targets expected: {v}"),
    }
}

/// The strings of a JSON array (panics on anything else).
pub fn json_strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("not a string: {s}"))
                .to_string()
        })
        .collect()
}

/// Waits for `child` to end, at most `limit`: past that it is killed and the test fails
/// with `what` (what it did instead).
pub fn ended_within(
    child: &mut Child,
    limit: Duration,
    what: impl Fn() -> String,
) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{}", what());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `signal` to the process `pid` (one this test started).
pub fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
}

/// A 16 GiB sparse WAL segment (`wal/00000099`) on both sides of an applied workspace:
/// hashing it whole takes this debug build minutes, so a command is still hashing it when
/// a test interrupts it.
pub fn big_sparse_segment(ws: &Workspace) {
    for root in [ws.source.clone(), ws.target()] {
        let f = std::fs::File::create(root.join("wal/00000099")).unwrap();
        f.set_len(16 << 30).unwrap();
    }
}

pub fn promigrate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_promigrate"))
}

pub fn run(mut c: Command) -> (i32, String, String) {
    let out = c.stdin(Stdio::null()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every file below `dir` (relative path → (inode, mtime ns, size)).
pub fn snapshot(dir: &Path) -> std::collections::BTreeMap<String, (u64, i128, u64)> {
    use std::os::unix::fs::MetadataExt;
    files_below(dir)
        .map(|(rel, e)| {
            let m = e.metadata().unwrap();
            (
                rel,
                (
                    m.ino(),
                    m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
                    m.len(),
                ),
            )
        })
        .collect()
}

/// Paths below `dir` that are promigrate temp or staging entries.
pub fn leftovers(dir: &Path) -> Vec<String> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .map(|e| e.path().to_string_lossy().into_owned())
        .filter(|p| p.ends_with(".promigrate-tmp") || p.contains(".promigrate-staging"))
        .collect()
}

/// The newest run record of `command` (`apply`/`verify`) in the workspace's state dir.
pub fn latest_record(ws: &Workspace, command: &str) -> serde_json::Value {
    let dir = ws.state.join("test-migration");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("no run records in {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(&format!("-{command}.json")))
        .collect();
    names.sort();
    let last = names
        .last()
        .unwrap_or_else(|| panic!("no {command} record in {}", dir.display()));
    serde_json::from_str(&std::fs::read_to_string(dir.join(last)).unwrap()).unwrap()
}

/// Asserts that no promigrate temp file (`*.promigrate-tmp`) is left below `dir`.
pub fn assert_no_temp_files(dir: &Path, when: &str) {
    let tmp: Vec<String> = leftovers(dir)
        .into_iter()
        .filter(|p| p.ends_with(".promigrate-tmp"))
        .collect();
    assert!(tmp.is_empty(), "temp files left {when}: {tmp:?}");
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The feature flags scripts/gen-tsdb3.sh runs Prometheus 3.x with.
pub const PROM3_FEATURES: &str = "exemplar-storage,memory-snapshot-on-shutdown,metadata-wal-records,created-timestamp-zero-ingestion,st-storage,fast-startup";

/// Which Prometheus a [`PromServer`] runs and what it adds to its flags and config; the
/// default is Debian's 2.42 (`prometheus` on PATH) as the tests always ran it.
#[derive(Clone, Debug, Default)]
pub struct PromFlavor {
    /// The `prometheus` binary; `None` runs `prometheus` from PATH.
    pub binary: Option<PathBuf>,
    /// Extra command-line flags.
    pub flags: Vec<String>,
    /// YAML appended to the generated prometheus.yml (top-level sections, e.g. `storage:`).
    pub config: String,
    /// Recording rules (a rule file's YAML), written to rules.yml beside prometheus.yml and
    /// loaded; empty: none.
    pub rules: String,
}

impl PromFlavor {
    /// Prometheus 3.x (built by [`prom3_bin`]) with the features, WAL compression and
    /// out-of-order window scripts/gen-tsdb3.sh writes its data with, so that it reads the
    /// chunk snapshot and the WBL like the server that wrote them.
    pub fn prom3() -> PromFlavor {
        PromFlavor {
            binary: Some(prom3_bin().join("prometheus")),
            flags: vec![
                format!("--enable-feature={PROM3_FEATURES}"),
                "--storage.tsdb.wal-compression-type=zstd".to_string(),
            ],
            config: "storage:\n  tsdb:\n    out_of_order_time_window: 30m\n".to_string(),
            rules: String::new(),
        }
    }

    /// Prometheus 3.x running as scripts/gen-tsdb3.sh runs it: [`PromFlavor::prom3`] with
    /// the remote-write receiver, 10 MB WAL segments, 20s/60s blocks (the hidden test flags:
    /// the head is compacted every 20 s and those blocks into 60 s ones) and the recording
    /// rule that makes float histograms; for a live source fed by a [`Feeder`]
    /// ([`PromServer::start_scraping_flavor`] with [`Feeder::prom3_job`]).
    pub fn prom3_live() -> PromFlavor {
        let mut f = PromFlavor::prom3();
        f.flags.extend(
            [
                "--web.enable-remote-write-receiver",
                "--storage.tsdb.wal-segment-size=10MB",
                "--storage.tsdb.min-block-duration=20s",
                "--storage.tsdb.max-block-duration=60s",
            ]
            .map(String::from),
        );
        f.rules = "groups:\n  - name: feed\n    interval: 1s\n    rules:\n      # A rate of a native histogram is a float histogram.\n      - record: feed:request_duration_seconds:rate15s\n        expr: rate(feed_request_duration_seconds[15s])\n".to_string();
        f
    }
}

/// Sends SIGTERM to a child and waits for it; SIGKILL after `timeout`.
fn stop_child(child: &mut Child, timeout: Duration) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    if child.try_wait().ok().flatten().is_none() {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// tests/prom3feed ([`prom3_feeder`]) feeding a Prometheus 3: it serves /metrics (native
/// histograms, one of 36000 buckets, exemplars, created timestamps) on 127.0.0.1 for the
/// server to scrape, and remote-writes in-order and out-of-order samples to it every second.
/// Stopped (SIGTERM) by its PID on drop.
pub struct Feeder {
    child: Child,
    /// The address it serves /metrics on.
    pub listen: String,
    pub log: PathBuf,
}

impl Feeder {
    /// Starts the feeder serving /metrics on `listen` (e.g. `127.0.0.1:<free_port()>`, which
    /// the server scrapes with [`Feeder::prom3_job`]) and remote-writing to the server at
    /// `prom_url`; its log goes to `work`.
    pub fn start(work: &Path, listen: &str, prom_url: &str) -> Feeder {
        std::fs::create_dir_all(work).unwrap();
        let listen = listen.to_string();
        let log = work.join("prom3feed.log");
        let logf = std::fs::File::create(&log).unwrap();
        let child = Command::new(prom3_feeder())
            .arg("-listen")
            .arg(&listen)
            .arg("-remote-write")
            .arg(format!("{prom_url}/api/v1/write"))
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .stdin(Stdio::null())
            .spawn()
            .expect("start tests/prom3feed");
        Feeder { child, listen, log }
    }

    /// The scrape job (an item of `scrape_configs:`) for a feeder listening on `listen`:
    /// every second, native histograms on (so the PrometheusProto format).
    pub fn prom3_job(listen: &str) -> String {
        format!(
            "  - job_name: feed\n    scrape_timeout: 1s\n    scrape_native_histograms: true\n    static_configs:\n      - targets: ['{listen}']\n"
        )
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the feeder with SIGTERM and waits (SIGKILL after 10 s).
    pub fn stop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(10));
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A real `prometheus` server on 127.0.0.1, stopped (SIGTERM, then SIGKILL) by its PID on drop.
pub struct PromServer {
    child: Child,
    pub url: String,
    pub log: PathBuf,
}

impl PromServer {
    /// Starts prometheus on `data` with no scrape targets and waits until it is ready;
    /// `as_user` runs it via setpriv. Panics with its log if it exits first.
    pub fn start(data: &Path, work: &Path, as_user: Option<(u32, u32)>) -> PromServer {
        Self::spawn(data, work, as_user)
            .ready()
            .unwrap_or_else(|log| panic!("prometheus exited:\n{log}"))
    }

    /// A live source: prometheus scraping itself every second, writing WAL and head chunks.
    pub fn start_scraping(data: &Path, work: &Path) -> PromServer {
        Self::start_scraping_flavor(&PromFlavor::default(), data, work, "")
    }

    /// Like [`PromServer::start_scraping`], running the given [`PromFlavor`] and scraping the
    /// `jobs` too (items of `scrape_configs:`, e.g. [`Feeder::prom3_job`]).
    pub fn start_scraping_flavor(
        flavor: &PromFlavor,
        data: &Path,
        work: &Path,
        jobs: &str,
    ) -> PromServer {
        Self::spawn_with(flavor, data, work, None, Some(jobs), "3650d")
            .ready()
            .unwrap_or_else(|log| panic!("prometheus exited:\n{log}"))
    }

    /// Like [`PromServer::start`], but a server that exits before it is ready is an `Err`
    /// with its log (for data that should make it fail).
    pub fn try_start(data: &Path, work: &Path) -> Result<PromServer, String> {
        Self::spawn(data, work, None).ready()
    }

    /// Like [`PromServer::start`], with `--storage.tsdb.retention.time` set to `retention`
    /// (a Prometheus duration such as `36h` or `5400000ms`): it deletes older blocks at start.
    pub fn start_with_retention(data: &Path, work: &Path, retention: &str) -> PromServer {
        Self::spawn_with(&PromFlavor::default(), data, work, None, None, retention)
            .ready()
            .unwrap_or_else(|log| panic!("prometheus exited:\n{log}"))
    }

    /// Like [`PromServer::start`], running the given [`PromFlavor`] (e.g. Prometheus 3.x).
    pub fn start_flavor(
        flavor: &PromFlavor,
        data: &Path,
        work: &Path,
        as_user: Option<(u32, u32)>,
    ) -> PromServer {
        Self::try_start_flavor(flavor, data, work, as_user)
            .unwrap_or_else(|log| panic!("prometheus exited:\n{log}"))
    }

    /// Like [`PromServer::start_flavor`]; a server that exits before it is ready is an `Err`
    /// with its log.
    pub fn try_start_flavor(
        flavor: &PromFlavor,
        data: &Path,
        work: &Path,
        as_user: Option<(u32, u32)>,
    ) -> Result<PromServer, String> {
        Self::spawn_with(flavor, data, work, as_user, None, "3650d").ready()
    }

    fn spawn(data: &Path, work: &Path, as_user: Option<(u32, u32)>) -> PromServer {
        Self::spawn_with(&PromFlavor::default(), data, work, as_user, None, "3650d")
    }

    /// `scrape`: `None` scrapes nothing; `Some(jobs)` scrapes itself every second and `jobs`
    /// (items of `scrape_configs:`).
    fn spawn_with(
        flavor: &PromFlavor,
        data: &Path,
        work: &Path,
        as_user: Option<(u32, u32)>,
        scrape: Option<&str>,
        retention: &str,
    ) -> PromServer {
        std::fs::create_dir_all(work).unwrap();
        std::fs::set_permissions(work, std::fs::Permissions::from_mode(0o755)).unwrap();
        let port = free_port();
        let config = work.join("prometheus.yml");
        let mut text = match scrape {
            Some(jobs) => format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: self\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n{jobs}"
            ),
            None => "global:\n  scrape_interval: 1h\n".to_string(),
        };
        if !flavor.rules.is_empty() {
            let rules = work.join("rules.yml");
            std::fs::write(&rules, &flavor.rules).unwrap();
            std::fs::set_permissions(&rules, std::fs::Permissions::from_mode(0o644)).unwrap();
            text += "rule_files: [rules.yml]\n";
        }
        std::fs::write(&config, text + &flavor.config).unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
        let log = work.join(format!("prometheus-{port}.log"));
        let logf = std::fs::File::create(&log).unwrap();
        let binary = match (&flavor.binary, as_user) {
            // Another user may not reach a binary under /root: give it a link (or copy) in
            // the work dir, which it can traverse.
            (Some(b), Some(_)) => {
                let local = work.join("prometheus");
                if !local.exists() && std::fs::hard_link(b, &local).is_err() {
                    std::fs::copy(b, &local).unwrap();
                }
                local
            }
            (Some(b), None) => b.clone(),
            (None, _) => PathBuf::from("prometheus"),
        };
        let mut cmd = match as_user {
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg(&binary);
                c
            }
            None => Command::new(&binary),
        };
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!("--storage.tsdb.retention.time={retention}"))
            .args(&flavor.flags)
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .stdin(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "start {} (Debian package `prometheus`, or scripts/prometheus3.sh): {e}",
                binary.display()
            )
        });
        PromServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    /// Waits up to 90 s for `/-/ready`; `Err(log)` if the server exits first.
    fn ready(mut self) -> Result<PromServer, String> {
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Err(self.log_text());
            }
            if ureq::get(&format!("{}/-/ready", self.url)).call().is_ok() {
                return Ok(self);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "prometheus neither ready nor exited after 90 s:\n{}",
            self.log_text()
        );
    }

    /// A query that may fail: `Ok(data)` or `Err(error message)`.
    pub fn try_query(&self, q: &str, at: i64) -> Result<serde_json::Value, String> {
        let resp = ureq::get(&format!("{}/api/v1/query", self.url))
            .query("query", q)
            .query("time", at.to_string())
            .config()
            .http_status_as_error(false)
            .build()
            .call()
            .map_err(|e| e.to_string())?;
        let mut resp = resp;
        let v: serde_json::Value = resp.body_mut().read_json().map_err(|e| e.to_string())?;
        if v["status"] == "success" {
            Ok(v["data"].clone())
        } else {
            Err(v["error"].as_str().unwrap_or_default().to_string())
        }
    }

    /// `GET /api/v1/<path>?<params>`, returning the `data` member.
    /// Every metric name this server knows, asserted equal to `other`'s.
    pub fn same_metric_names(&self, other: &PromServer) -> Vec<String> {
        let names = self.api("label/__name__/values", &[]);
        assert_eq!(names, other.api("label/__name__/values", &[]));
        names
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_string())
            .collect()
    }

    pub fn api(&self, path: &str, params: &[(&str, String)]) -> serde_json::Value {
        let mut req = ureq::get(&format!("{}/api/v1/{path}", self.url));
        for (k, v) in params {
            req = req.query(k, v);
        }
        let mut resp = req
            .call()
            .unwrap_or_else(|e| panic!("query {path} {params:?}: {e}"));
        let v: serde_json::Value = resp.body_mut().read_json().unwrap();
        assert_eq!(v["status"], "success", "{v}");
        v["data"].clone()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the server with SIGTERM and waits (SIGKILL after 30 s).
    pub fn stop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(30));
    }
}

impl Drop for PromServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The time span of the TSDB at `dir` as `promigrate inspect` reports it: (min, max) in
/// seconds.
pub fn time_span(dir: &Path) -> (i64, i64) {
    let mut c = promigrate();
    c.args(["inspect", "--output", "json"]).arg(dir);
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "inspect {}: {err}", dir.display());
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    (
        v["min_time"].as_i64().unwrap() / 1000,
        v["max_time"].as_i64().unwrap() / 1000,
    )
}

/// The `data` of the instant query `q` at `at` (seconds).
pub fn instant(s: &PromServer, q: &str, at: i64) -> serde_json::Value {
    s.api(
        "query",
        &[("query", q.to_string()), ("time", at.to_string())],
    )
}

/// Asserts that each instant query at `at` answers something on `reference` and exactly the
/// same on `migrated`.
pub fn assert_same_answers(
    reference: &PromServer,
    migrated: &PromServer,
    queries: &[String],
    at: i64,
) {
    for q in queries {
        let (a, b) = (instant(reference, q, at), instant(migrated, q, at));
        assert!(
            !a["result"].as_array().unwrap().is_empty(),
            "query returned nothing on the reference: {q}"
        );
        assert_eq!(a, b, "query differs: {q}");
    }
}

/// Asserts that the range query `q` over `[start, end]` by `step` seconds answers points on
/// `reference` and the same points on `migrated`.
pub fn assert_same_range(
    reference: &PromServer,
    migrated: &PromServer,
    q: &str,
    (start, end): (i64, i64),
    step: i64,
) {
    let params = [
        ("query", q.to_string()),
        ("start", start.to_string()),
        ("end", end.to_string()),
        ("step", step.to_string()),
    ];
    let (a, b) = (
        reference.api("query_range", &params),
        migrated.api("query_range", &params),
    );
    assert!(
        !a["result"].as_array().unwrap().is_empty()
            && !a["result"][0]["values"]
                .as_array()
                .is_some_and(|v| v.is_empty()),
        "query returned nothing on the reference: {q}"
    );
    assert_eq!(a, b, "query_range differs: {q}");
}

/// Asserts that a range deleted through the admin API (tombstones) is in effect on `server`,
/// so that comparisons cover it: `q` (a sample count by instance) at `at` is lower for the
/// `deleted` instance than for `kept`.
pub fn assert_deleted_range_in_effect(
    server: &PromServer,
    q: &str,
    at: i64,
    deleted: &str,
    kept: &str,
) {
    let res = instant(server, q, at);
    let count = |inst: &str| -> u64 {
        res["result"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["metric"]["instance"] == inst)
            .unwrap_or_else(|| panic!("no instance {inst} in {res}"))["value"][1]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(
        count(deleted) < count(kept),
        "the deleted range should have fewer samples: {res}"
    );
}

/// Asserts that Prometheus, run on the migrated `target` as runAsUser:fsGroup, created its
/// runtime files there (`queries.active`) and logged no permission error.
pub fn assert_runs_on_target(migrated: &PromServer, target: &Path) {
    assert!(
        target.join("queries.active").exists(),
        "{}",
        migrated.log_text()
    );
    assert!(
        !migrated.log_text().contains("permission denied"),
        "{}",
        migrated.log_text()
    );
}

/// Asserts that a Prometheus 3 on a migrated 3.x TSDB (`migrated`, run as runAsUser:fsGroup
/// on `target`) answers like one on a copy of the source (`reference`), both started with
/// [`PromFlavor::prom3`], for data written as scripts/gen-tsdb3.sh writes it (its fixture, or
/// a live source fed by [`Feeder`]), over `span` (seconds, [`time_span`]): both loaded the
/// chunk snapshot; every series and every metric's samples (blocks, out-of-order blocks,
/// head, WBL); the tombstoned range; native histograms and floats point by point; exemplars
/// (which only the chunk snapshot and the WAL hold).
pub fn assert_prom3_answers_alike(
    reference: &PromServer,
    migrated: &PromServer,
    target: &Path,
    (min_s, max_s): (i64, i64),
) {
    for s in [reference, migrated] {
        let log = s.log_text();
        assert!(log.contains("chunk snapshot loaded"), "{log}");
        assert!(!log.contains("level=ERROR"), "{log}");
    }
    // The head ends less than a few minutes after the last block.
    let at = max_s + 600;
    let window = format!("{}s", at - min_s + 60);

    // Every series (last_over_time keeps the name), then every sample of every metric:
    // blocks, out-of-order blocks, head, WBL.
    let names = reference.same_metric_names(migrated);
    for want in [
        "feed_huge_histogram",
        "feed_ooo_histogram",
        "feed_rw_ratio",
        "backfill_value",
    ] {
        assert!(names.iter().any(|n| n == want), "no {want}: {names:?}");
    }
    let all_series = format!("count(last_over_time({{__name__=~\".+\"}}[{window}]))");
    let by_instance = format!("sum by (instance) (count_over_time(backfill_value[{window}]))");
    let mut queries = vec![all_series.clone()];
    queries.extend(
        names
            .iter()
            .map(|n| format!("sum(count_over_time({n}[{window}]))")),
    );
    queries.extend([
        by_instance.clone(),
        format!("count_over_time(backfill_value[{window}])"),
        format!("max_over_time(feed_rw_events_total[{window}])"),
        format!("sum(sum_over_time(feed_ooo_value[{window}]))"),
        format!("histogram_count(sum_over_time(feed_huge_histogram[{window}]))"),
        format!("histogram_sum(sum_over_time(feed_ooo_float_histogram[{window}]))"),
    ]);
    assert_same_answers(reference, migrated, &queries, at);
    let series = instant(reference, &all_series, at)["result"][0]["value"][1]
        .as_str()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    assert!(series > 100, "only {series} series");
    // gen-tsdb3.sh deleted node-0's samples in the middle of a promtool block.
    assert_deleted_range_in_effect(migrated, &by_instance, at, "node-0", "node-1");

    // Native histograms point by point over the span Prometheus 3 wrote (blocks and head).
    for q in [
        "histogram_count(rate(feed_huge_histogram[5m]))",
        "histogram_quantile(0.9, rate(feed_request_duration_seconds[30s]))",
        "histogram_sum(feed_rw_ratio)",
        "histogram_count(feed:request_duration_seconds:rate15s)",
    ] {
        assert_same_range(reference, migrated, q, (max_s - 900, at), 5);
    }
    // Floats point by point over the whole span: promtool's blocks (the deleted range
    // included), then the server's blocks and head.
    for q in [
        "sum by (instance) (max_over_time(backfill_value[5m]))",
        "sum(rate(feed_rw_events_total[5m]))",
    ] {
        assert_same_range(reference, migrated, q, (min_s, at), 300);
    }

    // Exemplars: held by the chunk snapshot (and the WAL) only.
    let params = [
        ("query", "{job=\"feed\"}".to_string()),
        ("start", min_s.to_string()),
        ("end", at.to_string()),
    ];
    let (a, b) = (
        reference.api("query_exemplars", &params),
        migrated.api("query_exemplars", &params),
    );
    assert!(!a.as_array().unwrap().is_empty(), "no exemplars: {a}");
    assert_eq!(a, b, "exemplars differ");

    assert_runs_on_target(migrated, target);
}

/// A small tmpfs mounted on `at` for disk-full tests; unmounted on drop. Needs root.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(at: &Path, size: &str) -> Tmpfs {
        Self::mount_with(at, &format!("size={size}"))
    }

    /// A tmpfs with the given mount options (`size=…`, `nr_inodes=…`), mode 0755.
    pub fn mount_with(at: &Path, options: &str) -> Tmpfs {
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("{options},mode=0755"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mount tmpfs -o {options} on {} (tests run as root: see .ci/run)",
            at.display()
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A directory bind-mounted onto itself and remounted read-only; unmounted on drop (also
/// when the remount fails). Needs root.
pub struct ReadOnlyBind(PathBuf);

impl ReadOnlyBind {
    pub fn mount(at: &Path) -> ReadOnlyBind {
        let st = Command::new("mount")
            .arg("--bind")
            .arg(at)
            .arg(at)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mount --bind {} (tests run as root)",
            at.display()
        );
        let guard = ReadOnlyBind(at.to_path_buf());
        let st = Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "remount {} read-only", at.display());
        guard
    }
}

impl Drop for ReadOnlyBind {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Runs promigrate as `uid:gid` with no supplementary groups (setpriv drops every
/// capability), with the workspace's plan, and a state dir of its own for apply and verify
/// (the user must be able to create it: chown the workspace dir to them).
pub fn as_user(ws: &Workspace, (uid, gid): (u32, u32), args: &[&str]) -> (i32, String, String) {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg(env!("CARGO_BIN_EXE_promigrate"))
        .args(args);
    c.arg("-f").arg(&ws.plan);
    if args[0] != "plan" {
        c.arg("--state-dir").arg(ws.dir.path().join("user-records"));
    }
    run(c)
}

/// A TSDB of real blocks (written by `promtool tsdb create-blocks-from openmetrics`) holding
/// one series with a sample a day for `days` days up to yesterday: one block a day, so a
/// retention shorter than `days` would delete some of them.
pub fn days_of_blocks(dir: &Path, days: i64) {
    std::fs::create_dir_all(dir).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut om = String::from("# TYPE migrated_days gauge\n");
    for d in (1..=days).rev() {
        om.push_str(&format!("migrated_days {d} {}\n", now - d * 86_400));
    }
    om.push_str("# EOF\n");
    let input = dir.with_extension("om");
    std::fs::write(&input, om).unwrap();
    let out = Command::new("promtool")
        .args(["tsdb", "create-blocks-from", "openmetrics", "-q"])
        .arg(&input)
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::create_dir_all(dir.join("wal")).unwrap();
    std::fs::remove_file(&input).unwrap();
}

/// `chown -R uid:gid dir`.
pub fn chown_tree(dir: &Path, (uid, gid): (u32, u32)) {
    let st = Command::new("chown")
        .args(["-R", &format!("{uid}:{gid}")])
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success(), "chown -R {uid}:{gid} {}", dir.display());
}

/// Another process holding `flock(2)` on `path` (a directory or a file), as a running
/// promigrate or Prometheus does: one process (a shell that takes the lock on an fd, says
/// so, then becomes `sleep`), so ending it by PID releases the lock and leaves no orphan
/// behind (`flock PATH sleep` forks, and killing `flock` would leave the `sleep` holding
/// the lock).
pub struct LockHolder(Child);

impl LockHolder {
    pub fn take(path: &Path, shared: bool) -> LockHolder {
        let mode = if shared { "-s" } else { "-x" };
        let mut child = Command::new("sh")
            .args([
                "-c",
                r#"exec 9<"$1" && flock "$2" 9 && echo held && exec sleep 600"#,
                "sh",
            ])
            .arg(path)
            .arg(mode)
            .stdout(Stdio::piped())
            .spawn()
            .expect("run sh");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "held", "could not lock {}", path.display());
        LockHolder(child)
    }
}

impl Drop for LockHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
