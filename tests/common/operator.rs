//! The real Prometheus Operator (`cmd/operator` of github.com/prometheus-operator/prometheus-operator,
//! built with its CRDs by `scripts/prometheus-operator.sh`) run out of cluster against a
//! [`TestCluster`], and helpers for its `Prometheus` resources.
//!
//! It runs as a process on this host with the cluster's kubeconfig (`KUBECONFIG`: the operator
//! has no kubeconfig flag, and without it or `--apiserver` it wants the in-cluster service
//! account), scoped to one namespace (`--namespaces`), with no kubelet endpoints controller
//! (`--kubelet-service` empty) and its web server (/healthz, /metrics) on a free 127.0.0.1
//! port without TLS. The Alertmanager, ThanosRuler and PrometheusAgent controllers start too
//! (their CRDs are installed, as in a real cluster) and stay idle.
//!
//! What it renders for a `Prometheus` (v0.93.1; asserted in tests/operator.rs):
//! - StatefulSet `prometheus-<name>` (podManagementPolicy Parallel, claim retention policy
//!   Retain/Retain) whose claim template is `prometheus-<name>-db`, or the template's own
//!   `metadata.name` (so pod 0's claim is `prometheus-<name>-db-prometheus-<name>-0`), mounted
//!   by the container `prometheus` at `/prometheus` with `subPath: prometheus-db`;
//! - the pod securityContext is the resource's `spec.securityContext` as it is (none when
//!   unset: the image's user); image `quay.io/prometheus/prometheus:<spec.version>`, beside
//!   the `config-reloader` (`quay.io/prometheus-operator/prometheus-config-reloader:v0.93.1`);
//! - arguments `--config.file=/etc/prometheus/config_out/prometheus.env.yaml`,
//!   `--storage.tsdb.path=/prometheus`, no lock file flag, and before Prometheus 3.11
//!   `--storage.tsdb.retention.time` (default 24h) and `--storage.tsdb.retention.size`; from
//!   3.11 the retention is in the configuration file (`storage.tsdb.retention`) instead;
//! - the configuration in Secret `prometheus-<name>` (key `prometheus.yaml.gz`), when the
//!   resource has a selector (e.g. `serviceMonitorSelector: {}`);
//! - labels `app.kubernetes.io/{instance: <name>, managed-by: prometheus-operator,
//!   name: prometheus}`, `operator.prometheus.io/{name: <name>, shard: "0"}`,
//!   `prometheus: <name>` (the selector; the claim gets them too), and on the StatefulSet
//!   also `managed-by` and `operator.prometheus.io/mode: server` and the annotation
//!   `prometheus-operator-input-hash`; the StatefulSet's controller owner is the `Prometheus`.
//!
//! A `storageClassName` in the claim template must name an existing StorageClass: the
//! operator refuses the resource otherwise ([`TestCluster::storage_class`] makes one).

use super::cluster::TestCluster;
use super::{free_port, stop_child};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The operator's cache dir, built once by `scripts/prometheus-operator.sh build` (cached by
/// version in ~/.cache/promigrate; minutes when cold, then instant; flock'ed): `bin/operator`
/// and `crd/*.yaml`.
pub fn operator_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        super::path_from_script(
            "prometheus-operator.sh",
            "build",
            " (needs go: see docs/development.md)",
            "its cache dir",
            |d| d.join("bin/operator").is_file() && d.join("crd").is_dir(),
        )
    })
}

/// `monitoring.coreos.com/v1` `Prometheus` (plural `prometheuses`).
pub fn prometheus_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "Prometheus"),
        "prometheuses",
    )
}

/// A running operator, stopped (SIGTERM, then SIGKILL after 10 s) by its PID on drop, before
/// the cluster it borrows. Its log is in the cluster's state dir; a test that fails prints
/// its last lines.
pub struct Operator<'a> {
    cluster: &'a TestCluster,
    child: Child,
    /// The namespace it watches.
    pub namespace: String,
    /// Its stdout and stderr (logfmt).
    pub log: PathBuf,
    /// Its web server: /healthz, /metrics.
    pub url: String,
}

impl Operator<'_> {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits until it answers /healthz and its Prometheus controller has synced its caches
    /// (from then on it reconciles); panics with its log if it exits first or after 60 s.
    fn ready(self) -> Self {
        let mut me = self;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut healthy = false;
        loop {
            if let Ok(Some(status)) = me.child.try_wait() {
                panic!(
                    "the prometheus operator exited ({status}) before it was ready:\n{}",
                    me.log_tail(60)
                );
            }
            healthy = healthy || ureq::get(&format!("{}/healthz", me.url)).call().is_ok();
            if healthy
                && me.log_text().lines().any(|l| {
                    l.contains("successfully synced all caches")
                        && l.contains("component=prometheus-controller")
                })
            {
                return me;
            }
            assert!(
                Instant::now() < deadline,
                "the prometheus operator was not ready after 60 s (/healthz answered: {healthy}):\n{}",
                me.log_tail(60)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops it: SIGTERM to its PID, SIGKILL after 10 s.
    pub fn stop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(10));
    }

    pub fn cluster(&self) -> &TestCluster {
        self.cluster
    }
}

impl Drop for Operator<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Without the informers' start-up chatter (two lines per informer).
            let text = self.log_text();
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| {
                    !l.contains("msg=\"Waiting for caches to sync\"")
                        && !l.contains("msg=\"Caches are synced\"")
                })
                .collect();
            eprintln!(
                "--- last lines of the prometheus operator's log ({}) ---\n{}",
                self.log.display(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
        self.stop();
    }
}

impl TestCluster {
    /// Installs the operator's CRDs (`kubectl apply --server-side`: idempotent) and waits until
    /// they are Established.
    pub fn install_operator_crds(&self) {
        let crd = operator_dir().join("crd");
        let run = |args: &[&str]| {
            let out = self
                .kubectl()
                .args(args)
                .arg("-f")
                .arg(&crd)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "kubectl {args:?} -f {}: {}{}",
                crd.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["apply", "--server-side"]);
        run(&["wait", "--for=condition=Established", "--timeout=60s"]);
    }

    /// Installs the CRDs ([`TestCluster::install_operator_crds`]) and starts the operator
    /// watching `namespace`; returns once it reconciles.
    pub fn start_operator(&self, namespace: &str) -> Operator<'_> {
        self.install_operator_crds();
        let port = free_port();
        let log = self
            .state_dir()
            .join(format!("prometheus-operator-{namespace}.log"));
        let logf = std::fs::File::create(&log).unwrap();
        let child = Command::new(operator_dir().join("bin/operator"))
            .env("KUBECONFIG", &self.kubeconfig)
            .arg(format!("--namespaces={namespace}"))
            .arg("--kubelet-service=")
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log-format=logfmt")
            .arg("--log-level=info")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("start the prometheus operator");
        Operator {
            cluster: self,
            child,
            namespace: namespace.to_string(),
            log,
            url: format!("http://127.0.0.1:{port}"),
        }
        .ready()
    }

    /// A StorageClass `name` with no provisioner (volumes are made by hand, as `make_pv`
    /// does), unless it exists. The operator refuses a Prometheus whose claim template names
    /// a class that does not exist.
    pub fn storage_class(&self, name: &str) {
        let api: Api<StorageClass> = Api::all(self.client.clone());
        if self.rt.block_on(api.get_opt(name)).unwrap().is_none() {
            self.create(
                api,
                json!({"metadata": {"name": name},
                    "provisioner": "kubernetes.io/no-provisioner",
                    "volumeBindingMode": "Immediate"}),
            );
        }
    }

    /// The `Prometheus` resources of `namespace`.
    pub fn prometheuses(&self, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), namespace, &prometheus_resource())
    }

    /// Creates a `Prometheus` from its JSON (`metadata` and `spec`; apiVersion and kind may
    /// be left out).
    pub fn create_prometheus(&self, namespace: &str, v: serde_json::Value) -> DynamicObject {
        let ar = prometheus_resource();
        let mut obj: DynamicObject = serde_json::from_value(v).unwrap();
        obj.types = Some(kube::api::TypeMeta {
            api_version: ar.api_version.clone(),
            kind: ar.kind.clone(),
        });
        self.rt
            .block_on(
                self.prometheuses(namespace)
                    .create(&PostParams::default(), &obj),
            )
            .unwrap()
    }

    pub fn prometheus(&self, namespace: &str, name: &str) -> DynamicObject {
        self.rt
            .block_on(self.prometheuses(namespace).get(name))
            .unwrap()
    }

    /// Merge-patches a `Prometheus`.
    pub fn patch_prometheus(&self, namespace: &str, name: &str, patch: serde_json::Value) {
        self.rt
            .block_on(self.prometheuses(namespace).patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(patch),
            ))
            .unwrap();
    }

    pub fn statefulset(&self, namespace: &str, name: &str) -> Option<StatefulSet> {
        let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), namespace);
        self.rt.block_on(api.get_opt(name)).unwrap()
    }

    /// Waits (60 s) until StatefulSet `name` exists and its controller has observed its
    /// generation (so that a later resourceVersion change is someone's write), e.g. the
    /// operator's `prometheus-<name>` of a `Prometheus`.
    pub fn wait_statefulset(&self, namespace: &str, name: &str) -> StatefulSet {
        let mut found = None;
        self.wait(&format!("statefulset {namespace}/{name}"), || {
            found = self.statefulset(namespace, name).filter(|s| {
                let observed = s.status.as_ref().and_then(|st| st.observed_generation);
                observed.is_some() && observed == s.metadata.generation
            });
            found.is_some()
        });
        found.unwrap()
    }

    /// The Prometheus configuration the operator wrote for `Prometheus` `name`: Secret
    /// `prometheus-<name>`, key `prometheus.yaml.gz`, uncompressed (by `gzip -dc`).
    pub fn prometheus_config(&self, namespace: &str, name: &str) -> String {
        use std::io::Write;
        let api: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(self.client.clone(), namespace);
        let secret = self
            .rt
            .block_on(api.get(&format!("prometheus-{name}")))
            .unwrap();
        let gz = secret
            .data
            .unwrap_or_default()
            .remove("prometheus.yaml.gz")
            .expect("key prometheus.yaml.gz in the configuration Secret")
            .0;
        let mut gzip = Command::new("gzip")
            .arg("-dc")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        gzip.stdin.take().unwrap().write_all(&gz).unwrap();
        let out = gzip.wait_with_output().unwrap();
        assert!(out.status.success(), "gzip -dc of prometheus.yaml.gz");
        String::from_utf8(out.stdout).unwrap()
    }
}
