//! Kubernetes steps against a real control plane: etcd, kube-apiserver and
//! kube-controller-manager (PV binder, PV/PVC protection, StatefulSet and garbage collector
//! controllers) started by `scripts/test-cluster.sh` on 127.0.0.1. No kubelet and no
//! scheduler: pods stay Pending, which is all a scale-down/up needs.
//!
//! Each test starts its own cluster ([`TestCluster`] in tests/common/cluster.rs: about 4 s once
//! the binaries are built) and stops it when it ends, also on failure; a lock runs them one at
//! a time.

mod common;

use common::cluster::{NS, TestCluster};
use common::*;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The StatefulSet `prom` these tests migrate behind.
impl TestCluster {
    /// A StatefulSet `prom` whose volumeClaimTemplate `data` asks for a `manual` volume;
    /// its claim for pod 0 is `data-prom-0`.
    fn make_sts(&self, replicas: i32, when_scaled: &str) {
        self.create(
            Api::<StatefulSet>::namespaced(self.client.clone(), NS),
            json!({"metadata": {"name": "prom"}, "spec": {
                "replicas": replicas, "serviceName": "prom",
                "selector": {"matchLabels": {"app": "prom"}},
                "persistentVolumeClaimRetentionPolicy": {"whenScaled": when_scaled, "whenDeleted": "Retain"},
                "template": {"metadata": {"labels": {"app": "prom"}}, "spec": {
                    "securityContext": {"runAsUser": RUN_AS_USER, "fsGroup": FS_GROUP},
                    "containers": [{"name": "prometheus", "image": "prom/prometheus",
                        "volumeMounts": [{"name": "data", "mountPath": "/prometheus", "subPath": "prometheus-db"}]}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                    "accessModes": ["ReadWriteOnce"], "storageClassName": "manual",
                    "resources": {"requests": {"storage": "1Gi"}}}}]}}),
        );
    }

    /// A PV `pv-prom` with `policy` on `mount`, bound by the claim of StatefulSet `prom`.
    fn bound_statefulset(&self, policy: &str, replicas: i32, when_scaled: &str, mount: &Path) {
        self.make_pv("pv-prom", policy, mount);
        self.make_sts(replicas, when_scaled);
        self.wait_bound("data-prom-0", "pv-prom");
    }

    /// Merge-patches StatefulSet `prom`.
    fn patch_sts(&self, patch: serde_json::Value) {
        let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), NS);
        let pp = kube::api::PatchParams::default();
        self.rt
            .block_on(api.patch("prom", &pp, &kube::api::Patch::Merge(patch)))
            .unwrap();
    }

    /// Whether pod `prom-0` exists.
    fn pod_exists(&self) -> bool {
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(self.client.clone(), NS);
        self.rt.block_on(pods.get_opt("prom-0")).unwrap().is_some()
    }

    /// StatefulSet `prom` once its controller has caught up with its spec (status
    /// observedGeneration = generation): its resourceVersion then changes only if someone
    /// changes the object.
    fn sts_settled(&self) -> StatefulSet {
        let start = Instant::now();
        loop {
            let s = self.sts("prom");
            let observed = s.status.as_ref().and_then(|st| st.observed_generation);
            if observed.is_some() && observed == s.metadata.generation {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the statefulset controller did not observe generation {:?}",
                s.metadata.generation
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Merge-patches pod `prom-0`.
    fn patch_pod(&self, patch: serde_json::Value) {
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(self.client.clone(), NS);
        let pp = kube::api::PatchParams::default();
        self.rt
            .block_on(pods.patch("prom-0", &pp, &kube::api::Patch::Merge(patch)))
            .unwrap();
    }

    fn replicas(&self) -> i32 {
        self.sts("prom").spec.and_then(|s| s.replicas).unwrap_or(-1)
    }
}

/// A running StatefulSet `prom` (1 replica) on the workspace's volume, the plan naming it,
/// and a first full apply, which scales it back to 1.
fn applied_with_statefulset(k: &TestCluster, ws: &Workspace) {
    k.bound_statefulset("Retain", 1, "Retain", &ws.mount);
    kube_plan(ws, &k.kubeconfig, "    statefulSet: prom\n");
    let (code, v) = ws.run_json(&["apply", "--yes"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(k.replicas(), 1);
}

/// The workspace plan with `target.kubernetes` added.
fn kube_plan(ws: &Workspace, kubeconfig: &Path, extra: &str) {
    let yaml = plan_yaml(&ws.source, &ws.mount, "").replace(
        "  securityContext:\n",
        &format!(
            "  kubernetes:\n    kubeconfig: {}\n    namespace: {NS}\n    persistentVolume: pv-prom\n    persistentVolumeClaim: data-prom-0\n    waitTimeout: 60s\n{extra}  securityContext:\n",
            kubeconfig.display()
        ),
    );
    std::fs::write(&ws.plan, yaml).unwrap();
}

fn changes(v: &serde_json::Value) -> Vec<(String, String, String, String)> {
    v["kubernetes_changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap().to_string();
            (s("object"), s("field"), s("before"), s("after"))
        })
        .collect()
}

#[test]
fn released_pv_is_recovered_and_the_recreated_statefulset_binds_it() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let k = TestCluster::up();
    let ws = Workspace::new();
    // The documented scenario: a Retain PV bound by a StatefulSet's claim, then the
    // StatefulSet and the claim deleted: the PV goes Released.
    k.bound_statefulset("Retain", 1, "Retain", &ws.mount);
    let old_uid = k.pvc("data-prom-0").unwrap().metadata.uid.unwrap();
    k.delete_sts("prom");
    k.delete_pvc("data-prom-0");
    k.wait("pv-prom Released", || k.pv_phase("pv-prom") == "Released");
    // A pending claim that would happily take any `manual` volume: it must not get this one.
    k.create(
        Api::<PersistentVolumeClaim>::namespaced(k.client.clone(), NS),
        json!({"metadata": {"name": "grabber"}, "spec": {"accessModes": ["ReadWriteOnce"],
            "storageClassName": "manual", "resources": {"requests": {"storage": "1Gi"}}}}),
    );

    kube_plan(&ws, &k.kubeconfig, "");
    let (code, text, err) = ws.run(&["plan"]);
    assert_eq!(code, 0, "{text}\n{err}");
    assert!(
        text.contains("persistentvolume/pv-prom: Released, reclaimPolicy Retain, capacity 10Gi"),
        "{text}"
    );
    assert!(
        text.contains(&format!("tests claimRef.uid == {old_uid}")),
        "{text}"
    );

    let (code, v) = ws.run_json(&["apply", "--yes"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        v["verify"]["ok"], true,
        "apply verifies before the Kubernetes steps"
    );
    let pv = k.pv("pv-prom");
    assert_eq!(pv.status.unwrap().phase.as_deref(), Some("Available"));
    let claim = pv.spec.unwrap().claim_ref.unwrap();
    assert_eq!(
        (claim.namespace.as_deref(), claim.name.as_deref(), claim.uid),
        (Some(NS), Some("data-prom-0"), None),
        "still reserved for the same claim name"
    );
    assert_eq!(
        changes(&v),
        [(
            "persistentvolume/pv-prom".to_string(),
            "spec.claimRef.uid".to_string(),
            old_uid,
            format!("(removed; still reserved for {NS}/data-prom-0)")
        )]
    );
    let record = latest_record(&ws, "apply");
    assert_eq!(
        record["report"]["kubernetes_changes"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "{record}"
    );

    // The grabber stays Pending; the re-created StatefulSet's claim binds this PV.
    std::thread::sleep(Duration::from_secs(2));
    let grabber = k.pvc("grabber").unwrap();
    assert_eq!(grabber.status.unwrap().phase.as_deref(), Some("Pending"));
    k.make_sts(1, "Retain");
    k.wait_bound("data-prom-0", "pv-prom");

    // A rerun finds everything done and changes nothing.
    let (code, v) = ws.run_json(&["apply", "--yes"]);
    assert_eq!(code, 0, "{v}");
    assert!(changes(&v).is_empty(), "{:?}", changes(&v));
    assert_eq!(k.replicas(), 1);
}

#[test]
fn running_statefulset_is_scaled_to_zero_while_copying_and_back_after_verify() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let k = TestCluster::up();
    let ws = Workspace::new();
    k.bound_statefulset("Retain", 1, "Retain", &ws.mount);
    k.wait("pod prom-0 created", || k.pod_exists());
    kube_plan(&ws, &k.kubeconfig, "    statefulSet: prom\n");

    let (code, text, _) = ws.run(&["plan"]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("statefulset/monitoring/prom: 1 replica ("),
        "{text}"
    );

    // Slow enough to watch: the StatefulSet is at 0 while data is written.
    let (_, plan) = ws.run_json(&["plan"]);
    let bytes = only(&plan)["stats"]["copy_bytes"].as_u64().unwrap();
    let rate = format!("{}K", (bytes / 1024 / 3).max(8));
    let child = ws
        .cmd(&["apply", "--yes", "--output", "json", "--bwlimit", &rate])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut saw_zero_while_copying = false;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        let writing = std::fs::read_dir(ws.target()).is_ok_and(|mut d| d.next().is_some());
        if writing && k.replicas() == 0 {
            saw_zero_while_copying = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert!(
        saw_zero_while_copying,
        "never saw replicas 0 while the target was written"
    );
    let fields: Vec<(String, String, String)> = changes(&v)
        .into_iter()
        .map(|(_, f, b, a)| (f, b, a))
        .collect();
    let ann = "metadata.annotations[promigrate.io/replicas-before-migration]".to_string();
    assert_eq!(
        fields,
        [
            (ann.clone(), "(none)".into(), "1".into()),
            ("spec.replicas".into(), "1".into(), "0".into()),
            ("spec.replicas".into(), "0".into(), "1".into()),
            (ann, "1".into(), "(removed)".into()),
        ]
    );
    assert_eq!(k.replicas(), 1);
    let sts = k.sts("prom");
    assert!(
        !sts.metadata
            .annotations
            .unwrap_or_default()
            .contains_key("promigrate.io/replicas-before-migration")
    );
    k.wait_bound("data-prom-0", "pv-prom");
}

#[test]
fn failed_verify_leaves_the_statefulset_at_zero() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let k = TestCluster::up();
    let ws = Workspace::new();
    k.bound_statefulset("Retain", 2, "Retain", &ws.mount);
    kube_plan(&ws, &k.kubeconfig, "    statefulSet: prom\n");
    // Copy everything, then damage the copy so that only the checksum verify can see it.
    let (code, _, err) = ws.run(&["apply", "--yes"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(k.replicas(), 2);
    let chunk = some_block(&ws.target()).join("chunks/000001");
    flip_byte_keeping_mtime(&chunk, 100);
    // Something to write, so the StatefulSet is scaled down: another block's tombstones.
    let other = std::fs::read_dir(ws.target())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("tombstones").is_file() && !chunk.starts_with(p))
        .unwrap();
    std::fs::remove_file(other.join("tombstones")).unwrap();

    let (code, v) = ws.run_json(&["apply", "--yes"]);
    assert_eq!(code, 1, "verify differences are findings: {v}");
    assert_eq!(v["verify"]["ok"], false);
    let e = v["error"].as_str().unwrap();
    assert!(
        e.contains("statefulset/monitoring/prom is left at 0 replicas"),
        "{e}"
    );
    assert_eq!(k.replicas(), 0, "left at 0 for the runbook owner");
    let ann = k.sts("prom").metadata.annotations.unwrap_or_default();
    assert_eq!(
        ann.get("promigrate.io/replicas-before-migration")
            .map(String::as_str),
        Some("2")
    );

    // Fix the copy (rerun apply after removing the bad file): it continues and scales back.
    std::fs::remove_file(&chunk).unwrap();
    let (code, v) = ws.run_json(&["apply", "--yes"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(k.replicas(), 2);
}

#[test]
fn delete_policy_pv_and_delete_retention_policy_are_each_refused_and_left_alone() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let k = TestCluster::up();
    let ws = Workspace::new();
    k.bound_statefulset("Delete", 1, "Retain", &ws.mount);
    kube_plan(&ws, &k.kubeconfig, "    statefulSet: prom\n");
    let refused_unchanged = |want: &str, not: &str| {
        let pv_version = k.pv("pv-prom").metadata.resource_version;
        let sts_version = k.sts_settled().metadata.resource_version;
        let (code, text, _) = ws.run(&["plan"]);
        assert_eq!(code, 1, "{text}");
        assert!(text.contains(want), "{text}");
        assert!(!text.contains(not), "only the one blocker: {text}");
        let (code, v) = ws.run_json(&["apply", "--yes"]);
        assert_eq!(code, 1, "{v}");
        assert_eq!(v["refused"], true);
        assert!(changes(&v).is_empty());
        assert_eq!(
            k.pv("pv-prom").metadata.resource_version,
            pv_version,
            "PV modified"
        );
        assert_eq!(
            k.sts("prom").metadata.resource_version,
            sts_version,
            "StatefulSet modified"
        );
        assert!(!ws.target().exists(), "nothing may be written");
    };
    let pv_blocker = "BLOCKER: persistentvolume/pv-prom has reclaimPolicy Delete";
    let sts_blocker = "BLOCKER: statefulset/monitoring/prom has persistentVolumeClaimRetentionPolicy.whenScaled: Delete";
    // The PV alone.
    refused_unchanged(pv_blocker, sts_blocker);
    let (_, text, _) = ws.run(&["plan"]);
    assert!(
        text.contains(r#"persistentVolumeReclaimPolicy\":\"Retain"#)
            || text.contains(r#"persistentVolumeReclaimPolicy":"Retain"#),
        "the blocker gives the fix: {text}"
    );
    // Then the StatefulSet alone: the PV made Retain, the retention policy made Delete.
    let pp = kube::api::PatchParams::default();
    let pvs: Api<PersistentVolume> = Api::all(k.client.clone());
    k.rt.block_on(pvs.patch(
        "pv-prom",
        &pp,
        &kube::api::Patch::Merge(json!({"spec": {"persistentVolumeReclaimPolicy": "Retain"}})),
    ))
    .unwrap();
    k.patch_sts(
        json!({"spec": {"persistentVolumeClaimRetentionPolicy": {"whenScaled": "Delete"}}}),
    );
    refused_unchanged(sts_blocker, pv_blocker);
    assert_eq!(k.replicas(), 1);
}

#[test]
fn stale_annotation_and_idle_statefulset_are_left_as_they_are() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let k = TestCluster::up();
    let ws = Workspace::new();
    applied_with_statefulset(&k, &ws);

    // After a rollback someone scaled by hand and left the annotation (5): a rerun with
    // nothing to write keeps 1 replica and only removes the stale annotation.
    k.patch_sts(
        json!({"metadata": {"annotations": {"promigrate.io/replicas-before-migration": "5"}}}),
    );
    let (code, v) = ws.run_json(&["apply", "--yes"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        k.replicas(),
        1,
        "a stale annotation must not scale anything"
    );
    assert!(
        !k.sts("prom")
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key("promigrate.io/replicas-before-migration")
    );

    // A StatefulSet kept at 0 by its owner, its claim deleted (the PV is Released): apply
    // recovers the PV and does not wait for a claim nothing will create.
    k.patch_sts(json!({"spec": {"replicas": 0}}));
    k.wait("pod prom-0 gone", || !k.pod_exists());
    k.delete_pvc("data-prom-0");
    k.wait("pv-prom Released", || k.pv_phase("pv-prom") == "Released");
    let start = Instant::now();
    let (code, v) = ws.run_json(&["apply", "--yes"]);
    assert_eq!(code, 0, "{v}");
    assert!(
        start.elapsed() < Duration::from_secs(50),
        "it waited for the claim"
    );
    assert_eq!(k.replicas(), 0, "left at 0, as its owner had it");
    assert_eq!(k.pv_phase("pv-prom"), "Available");
}

#[test]
fn wrong_context_namespace_or_server_is_a_clear_blocker() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let k = TestCluster::up();
    let ws = Workspace::new();
    k.make_pv("pv-prom", "Retain", &ws.mount);

    kube_plan(&ws, &k.kubeconfig, "    context: no-such-context\n");
    let (code, text, _) = ws.run(&["plan"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("no-such-context"), "{text}");

    let plan = std::fs::read_to_string(&ws.plan).unwrap();
    std::fs::write(
        &ws.plan,
        plan.replace("    context: no-such-context\n", "")
            .replace(&format!("namespace: {NS}"), "namespace: monitorin"),
    )
    .unwrap();
    let (code, text, _) = ws.run(&["plan"]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("BLOCKER: namespace monitorin does not exist in context `promigrate-test`"),
        "{text}"
    );

    // A kubeconfig whose server has nothing listening: the error names context and server.
    let dead = ws.dir.path().join("dead-kubeconfig");
    let port = free_port();
    let kc = std::fs::read_to_string(&k.kubeconfig).unwrap();
    let server = kc
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .unwrap()
        .to_string();
    std::fs::write(
        &dead,
        kc.replace(&server, &format!("https://127.0.0.1:{port}")),
    )
    .unwrap();
    kube_plan(&ws, &dead, "");
    let start = Instant::now();
    let (code, text, _) = ws.run(&["plan"]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(&format!("server https://127.0.0.1:{port}"))
            && text.contains("promigrate-test"),
        "{text}"
    );
    assert!(start.elapsed() < Duration::from_secs(60));
    let (code, _, _) = ws.run(&["apply", "--yes"]);
    assert_eq!(code, 1);
    assert!(!ws.target().exists(), "nothing may be written");
}

/// Regression: `--deadline 45m` was counted from after the scale-down wait (up to
/// waitTimeout), so the change window could be overrun by that much. It counts from the start:
/// a scale-down that outlasts it leaves the run incomplete, with nothing copied.
#[test]
fn the_deadline_counts_from_the_start_not_from_after_the_scale_down() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let k = TestCluster::up();
    let ws = Workspace::new();
    k.bound_statefulset("Retain", 1, "Retain", &ws.mount);
    k.wait("pod prom-0 created", || k.pod_exists());
    // A finalizer keeps the pod terminating, so the scale-down waits until the test lifts it.
    k.patch_pod(json!({"metadata": {"finalizers": ["promigrate.test/hold"]}}));
    kube_plan(&ws, &k.kubeconfig, "    statefulSet: prom\n");
    let child = ws
        .cmd(&["apply", "--yes", "--output", "json", "--deadline", "3s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    k.wait("statefulset scaled to 0", || k.replicas() == 0);
    std::thread::sleep(Duration::from_secs(5));
    k.patch_pod(json!({"metadata": {"finalizers": null}}));
    let out = child.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(out.status.code(), Some(1), "{v}");
    assert_eq!(v["incomplete"], true, "{v}");
    assert_eq!(only(&v)["apply"]["copied_bytes"], 0, "{v}");
}

/// Issue 13: a presync copies blocks only, so one whose only differences are WAL files
/// writes nothing and leaves the StatefulSet running (it was scaled to 0 and waited for).
#[test]
fn a_presync_with_only_wal_differences_leaves_the_statefulset_running() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let k = TestCluster::up();
    let ws = Workspace::new();
    applied_with_statefulset(&k, &ws);

    // A new WAL segment on the source (a copy of the first: whole valid pages).
    let wal = ws.source.join("wal");
    let last = std::fs::read_dir(&wal)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.parse::<u32>().ok())
        .max()
        .unwrap();
    std::fs::copy(wal.join("00000000"), wal.join(format!("{:08}", last + 1))).unwrap();
    let (code, plan) = ws.run_json(&["plan"]);
    assert_eq!(code, 0, "{plan}");
    assert_eq!(only(&plan)["phases"]["presync"]["files"], 0, "{plan}");
    assert_eq!(only(&plan)["phases"]["final"]["files"], 1, "{plan}");

    let (code, v) = ws.run_json(&["apply", "--yes", "--phase", "presync"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(changes(&v), [], "{v}");
    assert!(v["actions"].to_string().contains("left running"), "{v}");
    assert_eq!(k.replicas(), 1);
    assert!(
        !k.sts("prom")
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key("promigrate.io/replicas-before-migration")
    );
}

/// Regression (found in review): an apply took its target lock only after the scale-down,
/// so a verify reading the target made it fail with the StatefulSet left at 0. It is refused
/// before anything in the cluster changes.
#[test]
fn a_target_in_use_by_a_verify_stops_apply_before_the_scale_down() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let k = TestCluster::up();
    let ws = Workspace::new();
    k.bound_statefulset("Retain", 1, "Retain", &ws.mount);
    k.wait("pod prom-0 created", || k.pod_exists());
    kube_plan(&ws, &k.kubeconfig, "    statefulSet: prom\n");
    std::fs::create_dir_all(ws.target()).unwrap();
    // A reader holding the shared lock, as a running verify does.
    // It says `held` once it holds the lock (a fixed wait lost that race once in five runs).
    let reader = LockHolder::take(&ws.target(), true);
    let (code, v) = ws.run_json(&["apply", "--yes"]);
    drop(reader);
    assert_eq!(code, 3, "{v}");
    assert!(
        v["error"].as_str().unwrap_or_default().contains("is using"),
        "{v}"
    );
    assert!(changes(&v).is_empty(), "{v}");
    assert_eq!(k.replicas(), 1);
    assert!(
        std::fs::read_dir(ws.target()).unwrap().next().is_none(),
        "nothing written"
    );
}

/// A target Prometheus whose retention is shorter than the migrated data's span deletes
/// that history at its first start, after verify said go. plan blocks it, naming the
/// setting (a flag in the container args, or storage.tsdb.retention in the configuration
/// file's ConfigMap, which takes precedence) and how many blocks, and changes nothing.
#[test]
fn a_target_retention_shorter_than_the_data_is_a_blocker() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let k = TestCluster::up();
    let ws = Workspace::new();
    // 30 days of real blocks.
    std::fs::remove_dir_all(&ws.source).unwrap();
    days_of_blocks(&ws.source, 30);
    k.bound_statefulset("Retain", 1, "Retain", &ws.mount);
    let container = |args: serde_json::Value| {
        json!({"spec": {"template": {"spec": {
            "volumes": [{"name": "config", "configMap": {"name": "prom-config"}}],
            "containers": [{
            "name": "prometheus", "image": "prom/prometheus:v2.42.0", "args": args,
            "volumeMounts": [{"name": "data", "mountPath": "/prometheus", "subPath": "prometheus-db"},
                {"name": "config", "mountPath": "/etc/prometheus"}]}]}}}})
    };
    let config = |yaml: &str| {
        let api: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(k.client.clone(), NS);
        let cm = serde_json::from_value(json!({"metadata": {"name": "prom-config"},
            "data": {"prometheus.yml": yaml}}))
        .unwrap();
        k.rt.block_on(async {
            let _ = api.delete("prom-config", &DeleteParams::default()).await;
            api.create(&PostParams::default(), &cm).await
        })
        .unwrap();
    };
    config("global:\n  scrape_interval: 15s\n");
    k.patch_sts(container(json!([
        "--config.file=/etc/prometheus/prometheus.yml",
        "--storage.tsdb.path=/prometheus",
        "--storage.tsdb.retention.time=1d"
    ])));
    kube_plan(&ws, &k.kubeconfig, "    statefulSet: prom\n");
    let before = k.sts_settled().metadata.resource_version;
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("BLOCKER")
            && l.contains("--storage.tsdb.retention.time in statefulset/monitoring/prom")
            && l.contains("1d")
            && l.contains("would delete")
            && l.contains("of the 30 migrated blocks")),
        "{out}"
    );
    // apply refuses as plan does, and touches nothing.
    let (code, out, _) = ws.run(&["apply", "--yes"]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(k.sts("prom").metadata.resource_version, before);
    assert_eq!(k.replicas(), 1);
    assert!(!ws.target().exists());

    // The configuration file's retention (Prometheus 3.8+) takes precedence over the flag.
    config("storage:\n  tsdb:\n    retention:\n      time: 7d\n");
    k.patch_sts(container(json!([
        "--config.file=/etc/prometheus/prometheus.yml",
        "--storage.tsdb.path=/prometheus",
        "--storage.tsdb.retention.time=365d"
    ])));
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("BLOCKER")
            && l.contains(
                "storage.tsdb.retention.time in configmap/monitoring/prom-config key prometheus.yml"
            )
            && l.contains("of the 30 migrated blocks")),
        "{out}"
    );

    // The section replaces the flags whole (Prometheus's config.TSDBRetentionConfig): with
    // only a size in it, the flag's 1d no longer holds.
    config("storage:\n  tsdb:\n    retention:\n      size: 100GB\n");
    k.patch_sts(container(json!([
        "--config.file=/etc/prometheus/prometheus.yml",
        "--storage.tsdb.path=/prometheus",
        "--storage.tsdb.retention.time=1d"
    ])));
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("would delete"), "{out}");
    // A retention longer than the data: nothing said.
    config("storage:\n  tsdb:\n    retention:\n      time: 60d\n");
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("would delete"), "{out}");
}

/// The plan's securityContext and subPath are held against the pod's; a StatefulSet a
/// GitOps controller manages is a blocker until the plan accepts it. Each blocker leaves the
/// StatefulSet untouched. A plan without securityContext and subPath takes the pod's.
#[test]
fn the_plan_is_held_against_the_pod_and_gitops_ownership() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let k = TestCluster::up();
    let ws = Workspace::new();
    k.bound_statefulset("Retain", 1, "Retain", &ws.mount);
    kube_plan(&ws, &k.kubeconfig, "    statefulSet: prom\n");
    let before = k.sts_settled().metadata.resource_version;
    let blocker = |needle: &[&str]| {
        let (code, out, _) = ws.run(&["plan"]);
        assert_eq!(code, 1, "{out}");
        assert!(
            out.lines()
                .any(|l| l.starts_with("BLOCKER") && needle.iter().all(|n| l.contains(n))),
            "{needle:?} in\n{out}"
        );
        let (code, out, _) = ws.run(&["apply", "--yes"]);
        assert_eq!(code, 1, "{out}");
        assert_eq!(k.sts("prom").metadata.resource_version, before);
        assert!(!ws.target().exists());
    };
    let plan = std::fs::read_to_string(&ws.plan).unwrap();
    // The pod runs as RUN_AS_USER:FS_GROUP; the plan says otherwise.
    std::fs::write(
        &ws.plan,
        plan.replace(&format!("runAsUser: {RUN_AS_USER}"), "runAsUser: 4242"),
    )
    .unwrap();
    blocker(&[
        "runAsUser 4242",
        &format!("runs as uid {RUN_AS_USER}"),
        "pod securityContext.runAsUser",
    ]);
    // The pod mounts subPath prometheus-db; the plan says data.
    std::fs::write(
        &ws.plan,
        plan.replace("subPath: prometheus-db", "subPath: data"),
    )
    .unwrap();
    blocker(&["subPath is `data`", "subPath `prometheus-db`"]);
    // Args without --storage.tsdb.path: Prometheus's default data/ below the upstream
    // image's working directory /prometheus, i.e. prometheus-db/data in the volume.
    std::fs::write(&ws.plan, &plan).unwrap();
    k.patch_sts(json!({"spec": {"template": {"spec": {"containers": [{
        "name": "prometheus", "image": "prom/prometheus",
        "args": ["--config.file=/etc/prometheus/prometheus.yml"],
        "volumeMounts": [{"name": "data", "mountPath": "/prometheus", "subPath": "prometheus-db"}]}]}}}}));
    let before_args = k.sts_settled().metadata.resource_version;
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("BLOCKER")
            && l.contains("subPath `prometheus-db/data`")
            && l.contains("--storage.tsdb.path")),
        "{out}"
    );
    assert_eq!(k.sts("prom").metadata.resource_version, before_args);
    k.patch_sts(json!({"spec": {"template": {"spec": {"containers": [{
        "name": "prometheus", "image": "prom/prometheus", "args": null,
        "volumeMounts": [{"name": "data", "mountPath": "/prometheus", "subPath": "prometheus-db"}]}]}}}}));
    // Neither in the plan: both taken from the pod, and said so.
    let derived = plan.replace("  subPath: prometheus-db\n", "").replace(
        &format!("  securityContext:\n    runAsUser: {RUN_AS_USER}\n    fsGroup: {FS_GROUP}\n"),
        "",
    );
    assert!(!derived.contains("securityContext"), "{derived}");
    std::fs::write(&ws.plan, &derived).unwrap();
    let (code, v) = ws.run_json(&["plan"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        only(&v)["target"].as_str().map(PathBuf::from),
        Some(ws.target()),
        "{v}"
    );
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("taken from the cluster: subPath prometheus-db")
            && out.contains(&format!(
                "taken from the cluster: securityContext runAsUser {RUN_AS_USER} (pod securityContext.runAsUser), fsGroup {FS_GROUP}"
            )),
        "{out}"
    );
    // Argo CD's tracking annotation: a blocker, until the plan accepts it.
    std::fs::write(&ws.plan, &plan).unwrap();
    k.patch_sts(json!({"metadata": {"annotations": {
        "argocd.argoproj.io/tracking-id": "monitoring:apps/StatefulSet:monitoring/prom"}}}));
    let before_argo = k.sts_settled().metadata.resource_version;
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("BLOCKER")
            && l.contains("managed by Argo CD")
            && l.contains("acceptGitOps")),
        "{out}"
    );
    assert_eq!(k.sts("prom").metadata.resource_version, before_argo);
    kube_plan(
        &ws,
        &k.kubeconfig,
        "    statefulSet: prom\n    acceptGitOps: true\n",
    );
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("managed by Argo CD"), "{out}");
}

/// verify holds the target server against the plan again: a change in the cluster after
/// plan and apply (here the pod's user) stops the go, and undoing it gives it back.
#[test]
fn verify_rechecks_the_target_server() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let k = TestCluster::up();
    let ws = Workspace::new();
    applied_with_statefulset(&k, &ws);
    let (code, out, _) = ws.run(&["verify"]);
    assert_eq!(code, 0, "{out}");
    k.patch_sts(json!({"spec": {"template": {"spec": {"securityContext": {"runAsUser": 4242}}}}}));
    let (code, out, _) = ws.run(&["verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("BLOCKER (target Prometheus)")
            && l.contains("runs as uid 4242")),
        "{out}"
    );
    assert!(
        out.contains("the data matches, but the target Prometheus"),
        "{out}"
    );
    let (code, v) = ws.run_json(&["verify"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        only(&v)["cluster_blockers"][0]
            .as_str()
            .unwrap()
            .contains("4242"),
        "{v}"
    );
    k.patch_sts(
        json!({"spec": {"template": {"spec": {"securityContext": {"runAsUser": RUN_AS_USER}}}}}),
    );
    let (code, out, _) = ws.run(&["verify"]);
    assert_eq!(code, 0, "{out}");
}

/// The wait for the pods to stop watches each pod mounting the claim until it is deleted,
/// within `waitTimeout`: a pod that stays (here a bare pod the StatefulSet does not own)
/// ends it, naming only the pods still there, with nothing written and the StatefulSet left
/// at 0; a rerun waits for that pod and goes on as soon as it is deleted.
#[test]
fn a_pod_that_keeps_the_claim_ends_the_wait_naming_it_and_nothing_is_written() {
    use std::io::BufRead;
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let k = TestCluster::up();
    let ws = Workspace::new();
    k.bound_statefulset("Retain", 1, "Retain", &ws.mount);
    kube_plan(&ws, &k.kubeconfig, "    statefulSet: prom\n");
    let plan = std::fs::read_to_string(&ws.plan).unwrap();
    std::fs::write(
        &ws.plan,
        plan.replace("waitTimeout: 60s", "waitTimeout: 3s"),
    )
    .unwrap();
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(k.client.clone(), NS);
    k.create(
        pods.clone(),
        json!({
            "metadata": {"name": "holder"},
            "spec": {
                "containers": [{"name": "c", "image": "busybox"}],
                "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data-prom-0"}}]
            }
        }),
    );

    let start = Instant::now();
    let (code, v) = ws.run_json(&["apply", "--yes"]);
    assert!(start.elapsed() >= Duration::from_secs(3), "it did not wait");
    assert_ne!(code, 0, "{v}");
    let e = v["error"].as_str().unwrap_or_default();
    assert!(
        e.contains("pod holder in namespace")
            && e.contains("still mounts claim data-prom-0 after 3s"),
        "{e}"
    );
    assert!(!e.contains("prom-0,") && !e.contains(", prom-0"), "{e}");
    assert_eq!(k.replicas(), 0);
    assert!(!k.pod_exists(), "prom-0 was deleted by the scale-down");
    assert_eq!(
        std::fs::read_dir(&ws.mount).unwrap().count(),
        0,
        "something was written"
    );

    // The rerun waits (up to 60 s) for `holder`, which goes while it waits.
    std::fs::write(&ws.plan, plan).unwrap();
    let mut child = ws
        .cmd(&["apply", "--yes", "--output", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        log.push_str(&line);
        log.push('\n');
        if line.contains("waiting for pod holder to stop") {
            k.rt.block_on(pods.delete("holder", &Default::default()))
                .unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(log.contains("waiting for pod holder to stop"), "{log}");
    assert_eq!(out.status.code(), Some(0), "{v}\n{log}");
    assert_eq!(k.replicas(), 1);
}
