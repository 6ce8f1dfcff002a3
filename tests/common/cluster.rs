//! A real, throwaway Kubernetes control plane for the tests: etcd, kube-apiserver and
//! kube-controller-manager (PV binder, PV/PVC protection, StatefulSet and garbage collector
//! controllers) started by `scripts/test-cluster.sh` on 127.0.0.1. No kubelet and no
//! scheduler: pods stay Pending, which is all a scale-down/up needs. [`TestCluster::up`]
//! starts one (about 4 s once the binaries are built), dropping it stops it, also on failure.
//! The Prometheus Operator runs against it: `super::operator`.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The namespace [`TestCluster::up`] creates, where the tests put their objects.
pub const NS: &str = "monitoring";

/// The bin dir of the test control plane (`kube-apiserver`, `kube-controller-manager`,
/// `kubectl`), built once by `scripts/test-cluster.sh build` (cached by version in
/// ~/.cache/promigrate; instant once built).
pub fn kube_bin() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        super::path_from_script("test-cluster.sh", "build", "", "a bin dir", |d| {
            d.join("kubectl").is_file()
        })
    })
}

/// A tokio runtime and a client of the cluster `kubeconfig` names.
pub fn connect(kubeconfig: &Path) -> (tokio::runtime::Runtime, Client) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        Client::try_from(config).unwrap()
    });
    (rt, client)
}

/// Creates the object `v` (JSON) through `api`; panics on any error.
pub fn create<K>(rt: &tokio::runtime::Runtime, api: Api<K>, v: serde_json::Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(v).unwrap();
    rt.block_on(api.create(&PostParams::default(), &obj))
        .unwrap()
}

/// Polls every 250 ms until `done`; panics after `timeout`.
pub fn poll(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A running control plane; stopped on drop.
pub struct TestCluster {
    state: tempfile::TempDir,
    /// The kubeconfig `up` wrote (a token for a `system:masters` user).
    pub kubeconfig: PathBuf,
    pub rt: tokio::runtime::Runtime,
    pub client: Client,
}

impl TestCluster {
    pub fn up() -> TestCluster {
        let start = |state: &tempfile::TempDir| {
            Command::new("bash")
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test-cluster.sh"))
                .arg("up")
                .arg(state.path().join("cluster"))
                .stderr(Stdio::inherit())
                .output()
                .unwrap()
        };
        let mut state = tempfile::tempdir().unwrap();
        let mut out = start(&state);
        if !out.status.success() {
            // Starting the control plane is not what these tests test: a kube-apiserver
            // that exited before it was ready (seen once in CI) gets its log shown and
            // one more start.
            for log in ["etcd.log", "kube-apiserver.log"] {
                let text = std::fs::read_to_string(state.path().join("cluster").join(log))
                    .unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                eprintln!("--- last lines of {log} ---");
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
            eprintln!("test-cluster up failed; starting it once more");
            state = tempfile::tempdir().unwrap();
            out = start(&state);
        }
        assert!(
            out.status.success(),
            "scripts/test-cluster.sh up failed twice (see its logs above)"
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let kubeconfig = PathBuf::from(stdout.lines().last().unwrap().trim());
        let (rt, client) = connect(&kubeconfig);
        let c = TestCluster {
            state,
            kubeconfig,
            rt,
            client,
        };
        c.create(
            Api::<Namespace>::all(c.client.clone()),
            json!({"metadata": {"name": NS}}),
        );
        c
    }

    /// The cluster's state dir (`scripts/test-cluster.sh up STATE_DIR`): kubeconfig, PKI,
    /// the components' logs, and whatever the tests start beside them (the operator's log).
    /// `down` removes it.
    pub fn state_dir(&self) -> PathBuf {
        self.state.path().join("cluster")
    }

    /// `kubectl` with this cluster's kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new(kube_bin().join("kubectl"));
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        c
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

    pub fn pv(&self, name: &str) -> PersistentVolume {
        let api: Api<PersistentVolume> = Api::all(self.client.clone());
        self.rt.block_on(api.get(name)).unwrap()
    }

    pub fn pvc(&self, name: &str) -> Option<PersistentVolumeClaim> {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), NS);
        self.rt.block_on(api.get_opt(name)).unwrap()
    }

    pub fn sts(&self, name: &str) -> StatefulSet {
        let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), NS);
        self.rt.block_on(api.get(name)).unwrap()
    }

    pub fn delete_sts(&self, name: &str) {
        let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), NS);
        self.rt
            .block_on(api.delete(name, &DeleteParams::foreground()))
            .unwrap();
        self.wait(&format!("statefulset {name} gone"), || {
            self.rt.block_on(api.get_opt(name)).unwrap().is_none()
        });
    }

    pub fn delete_pvc(&self, name: &str) {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), NS);
        self.rt
            .block_on(api.delete(name, &DeleteParams::default()))
            .unwrap();
        self.wait(&format!("claim {name} gone"), || self.pvc(name).is_none());
    }

    /// Polls until `done` or 60 s.
    pub fn wait(&self, what: &str, done: impl FnMut() -> bool) {
        poll(what, Duration::from_secs(60), done);
    }

    pub fn pv_phase(&self, name: &str) -> String {
        self.pv(name)
            .status
            .and_then(|s| s.phase)
            .unwrap_or_default()
    }

    pub fn wait_bound(&self, pvc: &str, pv: &str) {
        self.wait(&format!("{pvc} bound to {pv}"), || {
            self.pvc(pvc).is_some_and(|c| {
                c.status.and_then(|s| s.phase).as_deref() == Some("Bound")
                    && c.spec.and_then(|s| s.volume_name).as_deref() == Some(pv)
            })
        });
    }

    /// A hostPath PV of 10Gi in storage class `manual`.
    pub fn make_pv(&self, name: &str, policy: &str, path: &Path) {
        self.create(
            Api::<PersistentVolume>::all(self.client.clone()),
            json!({"metadata": {"name": name}, "spec": {
                "capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": policy, "storageClassName": "manual",
                "hostPath": {"path": path.display().to_string()}}}),
        );
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test-cluster.sh"))
            .arg("down")
            .arg(self.state.path().join("cluster"))
            .status();
    }
}
