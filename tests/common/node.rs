//! A real, throwaway Kubernetes node for the tests: `scripts/test-node.sh` runs the control
//! plane of `scripts/test-cluster.sh`, Debian's containerd and runc, and a kubelet (node
//! `127.0.0.1`), with locally built images (a busybox standing in for Prometheus, a shell-less
//! image) and a CNI plugin that keeps the pod network inside the pod, and a kube-scheduler for
//! the pods that name no node (most test pods set `spec.nodeName`). [`TestNode::up`] starts one (about 8 s once built); dropping it deletes the
//! pods (confirmed by the kubelet) and takes everything down, also on failure.
//!
//! Two nodes cannot share a host (one cgroup root, paths the kubelet hard-codes), so a
//! [`TestNode`] holds a host-wide file lock from `up` to drop: tests of every test binary and
//! every checkout take turns.

use super::cluster::{connect, create, poll};
use super::{FS_GROUP, RUN_AS_USER};
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::{Api, Client};
use serde_json::json;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The lock a [`TestNode`] holds while it lives (the script's own host lock only makes a
/// second `up` fail; this one makes it wait).
const TESTS_LOCK: &str = "/run/lock/promigrate-node-tests.lock";
/// The script's host lock: the state dir of the node that is up.
const HOST_LOCK: &str = "/run/lock/promigrate-node.lock";
/// How a [`TestNode`]'s temp dir is named, so that a node whose test process died is known.
const ROOT_PREFIX: &str = "promigrate-testnode-";

/// The static promigrate that a receiver pod runs (`make static`, built once: cargo's cache),
/// or the one PROMIGRATE_RECEIVER_BINARY names. Build it before [`TestNode::up`]: the node
/// holds the host-wide lock while it lives.
pub fn static_promigrate() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("PROMIGRATE_RECEIVER_BINARY") {
            return PathBuf::from(p);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new("make")
            .args(["-s", "static"])
            .current_dir(root)
            .stderr(Stdio::inherit())
            .output()
            .expect("make static");
        assert!(out.status.success(), "make static failed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let p = root.join(stdout.lines().last().unwrap_or_default().trim());
        assert!(p.is_file(), "make static made no {}", p.display());
        p
    })
}

/// A running node; taken down on drop.
pub struct TestNode {
    /// `state/`: the script's state dir; `volumes/`: directories for local PVs.
    root: Option<tempfile::TempDir>,
    /// What `up` wrote to its env file (`KUBECONFIG`, `PROMIGRATE_NODE_*`).
    pub env: HashMap<String, String>,
    pub kubeconfig: PathBuf,
    pub rt: tokio::runtime::Runtime,
    pub client: Client,
    _lock: nix::fcntl::Flock<File>,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test-node.sh")
}

fn tests_lock() -> nix::fcntl::Flock<File> {
    use nix::fcntl::{Flock, FlockArg};
    let file = File::options()
        .create(true)
        .append(true)
        .open(TESTS_LOCK)
        .unwrap_or_else(|e| panic!("open {TESTS_LOCK} (the tests need root): {e}"));
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((file, _)) => {
            eprintln!("waiting for another test's node to go down ({TESTS_LOCK})");
            Flock::lock(file, FlockArg::LockExclusive)
                .unwrap_or_else(|(_, e)| panic!("flock {TESTS_LOCK}: {e}"))
        }
    }
}

/// Takes down a node that a test process left up when it was killed before its drop ran:
/// whoever holds [`TESTS_LOCK`] knows that no test uses it any more.
fn down_orphan() {
    let owner = std::fs::read_to_string(HOST_LOCK).unwrap_or_default();
    let state = Path::new(owner.trim());
    let Some(root) = state.parent() else { return };
    let ours = state.file_name() == Some("state".as_ref())
        && root
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(ROOT_PREFIX));
    if !ours || !state.is_dir() {
        return;
    }
    eprintln!(
        "taking down {}, the node of a test process that died",
        state.display()
    );
    if !down(state) {
        return;
    }
    // Its volumes too, unless something is mounted below them.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mounted_below = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .any(|m| Path::new(m).starts_with(root));
    if !mounted_below {
        let _ = std::fs::remove_dir_all(root);
    }
}

/// `scripts/test-node.sh down STATE`; false if it failed (it then leaves STATE in place).
fn down(state: &Path) -> bool {
    Command::new("bash")
        .arg(script())
        .arg("down")
        .arg(state)
        .status()
        .is_ok_and(|s| s.success())
}

/// Takes the node in `root` down, then removes `root`; when `down` fails, `root` stays
/// (something may still be mounted below it: never rm -rf into that).
fn discard(root: tempfile::TempDir) {
    if !down(&root.path().join("state")) {
        eprintln!(
            "scripts/test-node.sh down failed; leaving {} in place",
            root.keep().display()
        );
    }
}

impl TestNode {
    pub fn up() -> TestNode {
        TestNode::up_with(&[])
    }

    /// A node whose scripts get `env` too (e.g. `PROMIGRATE_KUBE_APISERVER_FEATURE_GATES`).
    pub fn up_with(env: &[(&str, &str)]) -> TestNode {
        let lock = tests_lock();
        down_orphan();
        let tempdir = || {
            tempfile::Builder::new()
                .prefix(ROOT_PREFIX)
                .tempdir()
                .unwrap()
        };
        let start = |root: &tempfile::TempDir| {
            Command::new("bash")
                .arg(script())
                .arg("up")
                .arg(root.path().join("state"))
                .envs(env.iter().copied())
                .stderr(Stdio::inherit())
                .output()
                .unwrap()
        };
        let mut root = tempdir();
        let mut out = start(&root);
        if !out.status.success() {
            // Starting the node is not what the tests test: a failed start (its logs are
            // above) gets one more.
            discard(root);
            eprintln!("test-node up failed; starting it once more");
            root = tempdir();
            out = start(&root);
            if !out.status.success() {
                discard(root);
                panic!("scripts/test-node.sh up failed twice (see its output above)");
            }
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let env_file = PathBuf::from(stdout.lines().last().unwrap().trim());
        let env: HashMap<String, String> = std::fs::read_to_string(&env_file)
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let kubeconfig = PathBuf::from(&env["KUBECONFIG"]);
        let (rt, client) = connect(&kubeconfig);
        std::fs::create_dir(root.path().join("volumes")).unwrap();
        TestNode {
            root: Some(root),
            env,
            kubeconfig,
            rt,
            client,
            _lock: lock,
        }
    }

    fn root(&self) -> &Path {
        self.root.as_ref().unwrap().path()
    }

    /// The script's state dir: logs (`kubelet.log`, `containerd.log`, `cp/*.log`), configs.
    pub fn state_dir(&self) -> PathBuf {
        self.root().join("state")
    }

    /// The node's name (`127.0.0.1`), for `spec.nodeName` and a local PV's node affinity.
    pub fn name(&self) -> &str {
        &self.env["PROMIGRATE_NODE_NAME"]
    }

    /// busybox standing in for the Prometheus image: `sh`, `cat`, `tar`.
    pub fn standin_image(&self) -> &str {
        &self.env["PROMIGRATE_NODE_STANDIN_IMAGE"]
    }

    /// A real Prometheus 3 (scripts/prometheus3.sh) on the stand-in's busybox, laid out like the
    /// official image: entrypoint `/bin/prometheus`, user nobody, workdir `/prometheus`,
    /// `/etc/prometheus/prometheus.yml`; busybox gives it `sh`, `cat` and `wget`.
    pub fn prometheus_image(&self) -> &str {
        &self.env["PROMIGRATE_NODE_PROMETHEUS_IMAGE"]
    }

    /// The static pause binary alone: no shell, no `tar`.
    pub fn shellless_image(&self) -> &str {
        &self.env["PROMIGRATE_NODE_SHELLLESS_IMAGE"]
    }

    /// A new empty root-owned directory (mode 755) on the host, for a local PV; removed after
    /// the node is down.
    pub fn volume_dir(&self, name: &str) -> PathBuf {
        let dir = self.root().join("volumes").join(name);
        std::fs::create_dir(&dir).unwrap();
        dir
    }

    /// `kubectl` with this node's kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new(&self.env["PROMIGRATE_NODE_KUBECTL"]);
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        c
    }

    /// `kubectl exec [-i] -n NS POD -- ARGS`, with `stdin` written to it when given.
    pub fn exec(&self, ns: &str, pod: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut c = self.kubectl();
        c.arg("exec").args(["-n", ns, pod]);
        if stdin.is_some() {
            c.arg("-i");
        }
        c.arg("--").args(args);
        c.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let writer = stdin.map(|data| {
            let mut pipe = child.stdin.take().unwrap();
            let data = data.to_vec();
            std::thread::spawn(move || {
                let _ = pipe.write_all(&data);
            })
        });
        let out = child.wait_with_output().unwrap();
        if let Some(w) = writer {
            w.join().unwrap();
        }
        out
    }

    pub fn create<K>(&self, api: Api<K>, v: serde_json::Value) -> K
    where
        K: kube::Resource
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        create(&self.rt, api, v)
    }

    /// Namespace `ns`, where Pod Security admission enforces the `restricted` profile.
    pub fn restricted_namespace(&self, ns: &str) {
        self.create(
            Api::<Namespace>::all(self.client.clone()),
            json!({"metadata": {"name": ns, "labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest"}}}),
        );
    }

    /// A `local:` PV on `dir` (node affinity to this node), pre-bound to claim `ns/claim`
    /// (`spec.claimRef`: binds at once, where a claim naming its volume waits for the binder's
    /// next resync), and that claim; returns once it is Bound.
    pub fn local_volume(&self, pv: &str, dir: &Path, ns: &str, claim: &str) {
        self.local_volume_sized(pv, dir, ns, claim, "1Gi")
    }

    /// [`TestNode::local_volume`] with PV capacity and claim request `size` (a quantity).
    pub fn local_volume_sized(&self, pv: &str, dir: &Path, ns: &str, claim: &str, size: &str) {
        self.local_volume_as(pv, dir, ns, claim, size, "ReadWriteOnce")
    }

    /// [`TestNode::local_volume_sized`] with access mode `mode` (PV and claim).
    pub fn local_volume_as(
        &self,
        pv: &str,
        dir: &Path,
        ns: &str,
        claim: &str,
        size: &str,
        mode: &str,
    ) {
        let source = json!({
            "local": {"path": dir.display().to_string()},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [self.name()]}]}]}}});
        self.bound_volume(pv, ns, claim, size, mode, source);
    }

    /// A `hostPath:` PV on `dir`, with no node affinity (as a network volume, it names no
    /// node: a pod on it goes where the scheduler puts it), bound to claim `ns/claim` as
    /// [`TestNode::local_volume`] does. The kubelet does not apply fsGroup to it: `dir`'s
    /// owner and mode are what the pods get.
    pub fn host_path_volume(&self, pv: &str, dir: &Path, ns: &str, claim: &str) {
        let source = json!({"hostPath": {"path": dir.display().to_string(), "type": "Directory"}});
        self.bound_volume(pv, ns, claim, "1Gi", "ReadWriteOnce", source);
    }

    /// PV `pv` with `source` (its volume source and node affinity, merged into its spec),
    /// pre-bound to claim `ns/claim`, and that claim; returns once it is Bound.
    fn bound_volume(
        &self,
        pv: &str,
        ns: &str,
        claim: &str,
        size: &str,
        mode: &str,
        source: serde_json::Value,
    ) {
        let mut spec = json!({
            "capacity": {"storage": size}, "accessModes": [mode],
            "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "local-manual",
            "claimRef": {"namespace": ns, "name": claim}});
        for (k, v) in source.as_object().unwrap() {
            spec[k] = v.clone();
        }
        self.create(
            Api::<PersistentVolume>::all(self.client.clone()),
            json!({"metadata": {"name": pv}, "spec": spec}),
        );
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
        self.create(
            claims.clone(),
            json!({"metadata": {"name": claim}, "spec": {
                "accessModes": [mode], "storageClassName": "local-manual",
                "resources": {"requests": {"storage": size}}}}),
        );
        poll(
            &format!("claim {ns}/{claim} bound to {pv}"),
            Duration::from_secs(60),
            || {
                self.rt
                    .block_on(claims.get(claim))
                    .unwrap()
                    .status
                    .and_then(|s| s.phase)
                    .as_deref()
                    == Some("Bound")
            },
        );
    }

    /// A pod on this node as the `restricted` profile wants it, like a Prometheus pod:
    /// runAsNonRoot, runAsUser 1000, fsGroup 2000, seccomp RuntimeDefault; its container
    /// (`image`, `command` unless empty) without privilege escalation or capabilities; with
    /// `mount` (claim, subPath) at /prometheus.
    pub fn restricted_pod(
        &self,
        name: &str,
        image: &str,
        command: &[&str],
        mount: Option<(&str, &str)>,
    ) -> serde_json::Value {
        let mut container = json!({
            "name": "main", "image": image, "imagePullPolicy": "Never",
            "securityContext": {"allowPrivilegeEscalation": false,
                                "capabilities": {"drop": ["ALL"]}}});
        if !command.is_empty() {
            container["command"] = json!(command);
        }
        let mut spec = json!({
            "nodeName": self.name(), "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsNonRoot": true, "runAsUser": RUN_AS_USER,
                                "fsGroup": FS_GROUP,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [container]});
        if let Some((claim, sub_path)) = mount {
            spec["containers"][0]["volumeMounts"] =
                json!([{"name": "data", "mountPath": "/prometheus", "subPath": sub_path}]);
            spec["volumes"] =
                json!([{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]);
        }
        json!({"metadata": {"name": name}, "spec": spec})
    }

    /// Creates pod `v` in `ns` and waits until it is Ready; a container the kubelet cannot
    /// start (image, config, crash) ends the wait at once, with the pod's status and the end
    /// of the kubelet's log.
    pub fn run_pod(&self, ns: &str, v: serde_json::Value) -> Pod {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let name = self.create(pods.clone(), v).metadata.name.unwrap();
        let ready = |p: &Pod| {
            let conditions = p.status.as_ref().and_then(|s| s.conditions.as_ref());
            conditions.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        };
        let stuck = |p: &Pod| {
            let st = p.status.as_ref()?;
            if st.phase.as_deref() == Some("Failed") {
                return Some("phase Failed".to_string());
            }
            st.container_statuses.iter().flatten().find_map(|c| {
                let w = c.state.as_ref()?.waiting.as_ref()?;
                let reason = w.reason.clone().unwrap_or_default();
                (!matches!(reason.as_str(), "ContainerCreating" | "PodInitializing"))
                    .then(|| format!("{reason}: {}", w.message.clone().unwrap_or_default()))
            })
        };
        let start = std::time::Instant::now();
        loop {
            let p = self.rt.block_on(pods.get(&name)).unwrap();
            if ready(&p) {
                return p;
            }
            let problem = stuck(&p).or_else(|| {
                (start.elapsed() > Duration::from_secs(90)).then(|| "not Ready after 90 s".into())
            });
            if let Some(problem) = problem {
                self.print_kubelet_log();
                panic!("pod {ns}/{name}: {problem}\n{:#?}", p.status);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn print_kubelet_log(&self) {
        let log = std::fs::read_to_string(self.state_dir().join("kubelet.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        eprintln!("--- last lines of the kubelet's log ---");
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        discard(self.root.take().unwrap());
    }
}
