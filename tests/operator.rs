//! The real Prometheus Operator (v0.93.1, `scripts/prometheus-operator.sh`) run out of cluster
//! against the real control plane of `scripts/test-cluster.sh` (tests/common/operator.rs):
//! what it renders for a `Prometheus`, which promigrate's Kubernetes steps meet in clusters
//! that run it, and the premise they rely on: the operator puts back a StatefulSet scaled to 0
//! behind its back, unless the `Prometheus` is paused.
//!
//! Each test starts its own cluster and operator and stops both when it ends, also on failure
//! (the operator's last log lines are printed then); a lock runs them one at a time.

mod common;

use common::cluster::{NS, TestCluster};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PodSecurityContext;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A `Prometheus` as kube-prometheus writes one (its pod securityContext), with a claim
/// template for a `manual` volume and the ServiceMonitor selector that makes the operator
/// manage the configuration Secret.
fn prometheus(name: &str, version: &str) -> serde_json::Value {
    json!({"metadata": {"name": name}, "spec": {
        "replicas": 1,
        "version": version,
        "serviceMonitorSelector": {},
        "securityContext": {"runAsUser": 1000, "runAsNonRoot": true, "fsGroup": 2000},
        "storage": {"volumeClaimTemplate": {"spec": {
            "storageClassName": "manual", "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}}}}}}})
}

fn replicas(sts: &StatefulSet) -> i32 {
    sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// Polls `done` every 10 ms (so that the time it took is known to about that), up to 60 s;
/// returns how long it took.
fn time_until(what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn a_prometheus_becomes_a_statefulset_whose_claim_template_makes_the_claim() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let k = TestCluster::up();
    k.storage_class("manual");
    let _op = k.start_operator(NS);
    let p = k.create_prometheus(NS, prometheus("k8s", "v3.5.0"));

    let sts = k.wait_statefulset(NS, "prometheus-k8s");
    let meta = &sts.metadata;
    let selector = labels(&[
        ("app.kubernetes.io/instance", "k8s"),
        ("app.kubernetes.io/managed-by", "prometheus-operator"),
        ("app.kubernetes.io/name", "prometheus"),
        ("operator.prometheus.io/name", "k8s"),
        ("operator.prometheus.io/shard", "0"),
        ("prometheus", "k8s"),
    ]);
    let mut sts_labels = selector.clone();
    sts_labels.extend(labels(&[
        ("managed-by", "prometheus-operator"),
        ("operator.prometheus.io/mode", "server"),
    ]));
    assert_eq!(meta.labels.as_ref(), Some(&sts_labels));
    assert!(
        meta.annotations
            .as_ref()
            .is_some_and(|a| a.contains_key("prometheus-operator-input-hash")),
        "{:?}",
        meta.annotations
    );
    let owner = &meta.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("Prometheus", "k8s", Some(true))
    );
    assert_eq!(Some(&owner.uid), p.metadata.uid.as_ref());

    let spec = sts.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(spec.selector.match_labels.as_ref(), Some(&selector));
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    let retention = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .unwrap();
    assert_eq!(
        (
            retention.when_scaled.as_deref(),
            retention.when_deleted.as_deref()
        ),
        (Some("Retain"), Some("Retain"))
    );
    // The volume is named prometheus-<name>-db (the template has no metadata.name).
    let templates = spec.volume_claim_templates.as_ref().unwrap();
    assert_eq!(templates.len(), 1);
    assert_eq!(
        templates[0].metadata.name.as_deref(),
        Some("prometheus-k8s-db")
    );
    assert_eq!(
        templates[0]
            .spec
            .as_ref()
            .unwrap()
            .storage_class_name
            .as_deref(),
        Some("manual")
    );

    let template = &spec.template;
    let mut pod_labels = selector.clone();
    pod_labels.insert("app.kubernetes.io/version".into(), "3.5.0".into());
    assert_eq!(template.metadata.as_ref().unwrap().labels, Some(pod_labels));
    let pod = template.spec.as_ref().unwrap();
    // The pod securityContext is the resource's spec.securityContext, as it is.
    assert_eq!(
        pod.security_context,
        Some(PodSecurityContext {
            run_as_user: Some(1000),
            run_as_non_root: Some(true),
            fs_group: Some(2000),
            ..Default::default()
        })
    );
    let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["prometheus", "config-reloader"]);
    let c = &pod.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some("quay.io/prometheus/prometheus:v3.5.0")
    );
    let args = c.args.clone().unwrap_or_default();
    for want in [
        "--config.file=/etc/prometheus/config_out/prometheus.env.yaml",
        "--storage.tsdb.path=/prometheus",
        // Before Prometheus 3.11 retention is a flag; the operator's default is 24h.
        "--storage.tsdb.retention.time=24h",
    ] {
        assert!(args.iter().any(|a| a == want), "{want} not in {args:?}");
    }
    assert!(
        !args.iter().any(|a| a.contains("lockfile")),
        "no lock file flag: {args:?}"
    );
    // The data volume, mounted at /prometheus with subPath prometheus-db.
    let mounts = c.volume_mounts.as_ref().unwrap();
    let db = mounts
        .iter()
        .find(|m| m.name == "prometheus-k8s-db")
        .unwrap();
    assert_eq!(
        (db.mount_path.as_str(), db.sub_path.as_deref()),
        ("/prometheus", Some("prometheus-db"))
    );
    let c = &pod.containers[1];
    assert_eq!(
        c.image.as_deref(),
        Some("quay.io/prometheus-operator/prometheus-config-reloader:v0.93.1")
    );
    // The configuration: Secret prometheus-k8s (volume `config`, read by the reloader, which
    // writes what prometheus reads into config_out).
    let config_volume = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "config")
        .unwrap();
    assert_eq!(
        config_volume
            .secret
            .as_ref()
            .unwrap()
            .secret_name
            .as_deref(),
        Some("prometheus-k8s")
    );
    let config = k.prometheus_config(NS, "k8s");
    assert!(config.contains("prometheus: monitoring/k8s"), "{config}");
    assert!(!config.contains("retention"), "{config}");

    // The StatefulSet controller makes pod 0's claim from the template (the pod stays
    // Pending: no scheduler).
    let claim = "prometheus-k8s-db-prometheus-k8s-0";
    k.wait(&format!("claim {claim}"), || k.pvc(claim).is_some());
    let pvc = k.pvc(claim).unwrap();
    assert_eq!(
        pvc.spec.unwrap().storage_class_name.as_deref(),
        Some("manual")
    );
    assert_eq!(pvc.metadata.labels, Some(selector));
}

#[test]
fn retention_is_a_flag_before_prometheus_3_11_and_in_the_config_secret_from_it() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let k = TestCluster::up();
    k.storage_class("manual");
    let _op = k.start_operator(NS);
    let retention = |p: &mut serde_json::Value| {
        p["spec"]["retention"] = json!("12h");
        p["spec"]["retentionSize"] = json!("5GB");
    };
    let mut old = prometheus("old", "v3.10.0");
    retention(&mut old);
    k.create_prometheus(NS, old);
    // 3.11 and later; no securityContext; a claim template with a name.
    let mut new = prometheus("new", "v3.11.0");
    retention(&mut new);
    new["spec"]
        .as_object_mut()
        .unwrap()
        .remove("securityContext");
    new["spec"]["storage"]["volumeClaimTemplate"]["metadata"] = json!({"name": "data"});
    k.create_prometheus(NS, new);

    let args = |sts: &StatefulSet| {
        let pod = sts.spec.as_ref().unwrap().template.spec.clone().unwrap();
        pod.containers[0].args.clone().unwrap_or_default()
    };
    let old = k.wait_statefulset(NS, "prometheus-old");
    let old_args = args(&old);
    for want in [
        "--storage.tsdb.retention.time=12h",
        "--storage.tsdb.retention.size=5GB",
    ] {
        assert!(
            old_args.iter().any(|a| a == want),
            "{want} not in {old_args:?}"
        );
    }
    assert!(!k.prometheus_config(NS, "old").contains("retention"));

    let new = k.wait_statefulset(NS, "prometheus-new");
    let new_args = args(&new);
    assert!(
        !new_args.iter().any(|a| a.contains("retention")),
        "{new_args:?}"
    );
    let config = k.prometheus_config(NS, "new");
    assert!(
        config.contains("storage:\n  tsdb:\n    retention:\n      time: 12h\n      size: 5GB\n"),
        "{config}"
    );
    // No securityContext in the resource: none in the pod (the image's user runs it).
    let pod = new.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(
        pod.security_context.clone().unwrap_or_default(),
        PodSecurityContext::default()
    );
    // The template's metadata.name names the volume, and so the claim.
    let spec = new.spec.as_ref().unwrap();
    let templates = spec.volume_claim_templates.as_ref().unwrap();
    assert_eq!(templates[0].metadata.name.as_deref(), Some("data"));
    let db = pod.containers[0]
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.mount_path == "/prometheus")
        .unwrap();
    assert_eq!(
        (db.name.as_str(), db.sub_path.as_deref()),
        ("data", Some("prometheus-db"))
    );
    k.wait("claim data-prometheus-new-0", || {
        k.pvc("data-prometheus-new-0").is_some()
    });
}

/// What promigrate relies on: a StatefulSet the operator manages cannot simply be scaled to 0
/// (the operator scales it back), but it stays at 0 while its `Prometheus` has
/// `spec.paused: true`, until unpaused.
#[test]
fn the_operator_reverts_a_scale_to_zero_unless_the_prometheus_is_paused() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let k = TestCluster::up();
    k.storage_class("manual");
    let op = k.start_operator(NS);
    k.create_prometheus(NS, prometheus("k8s", "v3.5.0"));
    let name = "prometheus-k8s";
    k.wait_statefulset(NS, name);
    let api: Api<StatefulSet> = Api::namespaced(k.client.clone(), NS);
    let scale_to_zero = || {
        k.rt.block_on(api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        ))
        .unwrap()
    };
    let sts = || k.statefulset(NS, name).unwrap();

    // Not paused: scaled to 0, put back to 1.
    let scaled = scale_to_zero();
    assert_eq!(replicas(&scaled), 0);
    let took = time_until("the operator to scale it back to 1", || {
        replicas(&sts()) == 1
    });
    eprintln!("not paused: the operator put replicas back to 1 {took:?} after the scale to 0");

    // Paused, once the operator has seen it (it reports the pause in the status).
    k.patch_prometheus(NS, "k8s", json!({"spec": {"paused": true}}));
    k.wait("status.paused", || {
        k.prometheus(NS, "k8s").data["status"]["paused"] == json!(true)
    });
    let paused_syncs = || {
        op.log_text()
            .matches("no action taken (the resource is paused)")
            .count()
    };
    let before = paused_syncs();
    let scaled = scale_to_zero();
    let generation = scaled.metadata.generation;
    // The change reaches the operator, which takes no action...
    k.wait("the operator to look at the paused resource again", || {
        paused_syncs() > before
    });
    // ... and for 10 s nothing writes the StatefulSet's spec (its generation would change):
    // it stays at 0.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(10) {
        let s = sts();
        assert_eq!(replicas(&s), 0, "scaled back while paused");
        assert_eq!(
            s.metadata.generation, generation,
            "spec changed while paused"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Unpaused: back to 1.
    k.patch_prometheus(NS, "k8s", json!({"spec": {"paused": false}}));
    let took = time_until("the operator to scale it back to 1 once unpaused", || {
        replicas(&sts()) == 1
    });
    eprintln!("unpaused: the operator put replicas back to 1 {took:?} after the unpause");
}

// ------------------------------------------------------------------------------------------
// promigrate with an operator-managed target.

/// The plan of `ws` with `target.kubernetes.prometheus: k8s`, its securityContext and
/// subPath left out (taken from the cluster) unless `keep` says otherwise, and `extra`
/// under `kubernetes`.
fn operator_plan(ws: &common::Workspace, kubeconfig: &std::path::Path, keep: &str, extra: &str) {
    let yaml = common::plan_yaml(&ws.source, &ws.mount, "");
    let target = format!("  path: {}\n", ws.mount.display());
    let start = yaml.find(&target).unwrap() + target.len();
    let end = yaml.find("transfer:").unwrap();
    let yaml = format!(
        "{}{keep}  kubernetes:\n    kubeconfig: {}\n    namespace: {NS}\n    prometheus: k8s\n    waitTimeout: 60s\n{extra}{}",
        &yaml[..start],
        kubeconfig.display(),
        &yaml[end..]
    );
    std::fs::write(&ws.plan, yaml).unwrap();
}

/// What promigrate may change on the `Prometheus`: its spec and its annotations.
fn spec_and_annotations(p: &kube::api::DynamicObject) -> serde_json::Value {
    json!({"spec": p.data["spec"], "annotations": p.metadata.annotations})
}

/// The field managers that have written an object (`managedFields`): promigrate writes as
/// `promigrate`, so its name here means it changed the object.
fn managers(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Vec<String> {
    let mut v: Vec<String> = m
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|f| f.manager.clone())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// What promigrate could change on the `Prometheus` and its StatefulSet: their specs,
/// annotations and field managers. (Their resourceVersions also move with the operator's
/// own status writes, which a running operator makes when it likes: comparing them here
/// made these tests fail under load, with no write of promigrate's.)
fn untouched(k: &TestCluster, sts_name: &str) -> serde_json::Value {
    let v = state(k, sts_name);
    for m in ["prometheus_managers", "statefulset_managers"] {
        assert!(
            !v[m].as_array().unwrap().iter().any(|x| x == "promigrate"),
            "promigrate wrote: {v}"
        );
    }
    v
}

/// See [`untouched`].
fn state(k: &TestCluster, sts_name: &str) -> serde_json::Value {
    let sts = k.wait_statefulset(NS, sts_name);
    let p = k.prometheus(NS, "k8s");
    json!({
        "prometheus": spec_and_annotations(&p),
        "prometheus_managers": managers(&p.metadata),
        "statefulset_spec": sts.spec,
        // The operator rewrites its own input-hash annotation when it likes.
        "statefulset_annotations": sts.metadata.annotations.clone().unwrap_or_default()
            .into_iter()
            .filter(|(a, _)| a.starts_with("promigrate.io/"))
            .collect::<BTreeMap<_, _>>(),
        "statefulset_managers": managers(&sts.metadata),
    })
}

/// 30 days of blocks migrated into an operator-managed Prometheus, end to end: plan derives
/// the StatefulSet, claim, PV, subPath, owner and version from the `Prometheus` and blocks on
/// the operator's default 24h retention; with 60d, apply pauses the resource, scales its
/// StatefulSet to 0, which the running operator leaves at 0 through the copy, copies,
/// verifies, scales back and unpauses: both end as they began. A rerun changes nothing.
#[test]
fn an_operator_managed_prometheus_is_migrated_through_the_pause() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let k = TestCluster::up();
    k.storage_class("manual");
    let _op = k.start_operator(NS);
    let ws = common::Workspace::new();
    std::fs::remove_dir_all(&ws.source).unwrap();
    common::days_of_blocks(&ws.source, 30);
    k.make_pv("pv-k8s", "Retain", &ws.mount);
    let mut spec = prometheus("k8s", "v3.5.0");
    spec["spec"]
        .as_object_mut()
        .unwrap()
        .remove("serviceMonitorSelector");
    k.create_prometheus(NS, spec);
    let sts_name = "prometheus-k8s";
    let claim = "prometheus-k8s-db-prometheus-k8s-0";
    k.wait_statefulset(NS, sts_name);
    k.wait_bound(claim, "pv-k8s");
    operator_plan(&ws, &k.kubeconfig, "", "");

    // The operator's default retention (24h) would delete the 30 days at first start.
    let before = untouched(&k, sts_name);
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("BLOCKER")
            && l.contains("a retention time of 24h (the operator's default")
            && l.contains(
                "neither spec.retention nor spec.retentionSize of prometheus/monitoring/k8s"
            )
            && l.contains("of the 30 migrated blocks")),
        "{out}"
    );
    let (code, out, _) = ws.run(&["apply", "--yes", "--source-stopped"]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(untouched(&k, sts_name), before);
    assert!(!ws.target().exists());

    // 60d: plan is clean and says what it took from the cluster.
    k.patch_prometheus(NS, "k8s", json!({"spec": {"retention": "60d"}}));
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 0, "{out}");
    for taken in [
        "taken from the cluster: persistentVolumeClaim prometheus-k8s-db-prometheus-k8s-0",
        "taken from the cluster: statefulSet prometheus-k8s",
        "taken from the cluster: persistentVolume pv-k8s",
        "taken from the cluster: securityContext runAsUser 1000 (pod securityContext.runAsUser), fsGroup 2000",
        "taken from the cluster: subPath prometheus-db",
        "target Prometheus (prometheus/monitoring/k8s): version 3.5.0 (image quay.io/prometheus/prometheus:v3.5.0), runs as 1000:2000, subPath prometheus-db, retention time 60d",
    ] {
        assert!(out.contains(taken), "{taken} in\n{out}");
    }
    assert!(
        out.contains("apply will: prometheus/monitoring/k8s: record spec.paused (unset)"),
        "{out}"
    );

    // apply, watching the StatefulSet and the resource while it runs.
    let before_spec = spec_and_annotations(&k.prometheus(NS, "k8s"));
    let child = ws
        .cmd(&[
            "apply",
            "--yes",
            "--source-stopped",
            "--bwlimit",
            "40K",
            "--output",
            "json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen_replicas: Vec<i32> = Vec::new();
    let mut seen_paused = false;
    let out = {
        let child = std::sync::Arc::new(Mutex::new(Some(child)));
        let waiter = {
            let child = child.clone();
            std::thread::spawn(move || {
                let c = child.lock().unwrap().take().unwrap();
                c.wait_with_output().unwrap()
            })
        };
        while !waiter.is_finished() {
            let r = replicas(&k.statefulset(NS, sts_name).unwrap());
            if seen_replicas.last() != Some(&r) {
                seen_replicas.push(r);
            }
            seen_paused |= k.prometheus(NS, "k8s").data["spec"]["paused"] == json!(true);
            std::thread::sleep(Duration::from_millis(20));
        }
        waiter.join().unwrap()
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Down once, up once: the operator never put it back while promigrate wrote.
    assert_eq!(seen_replicas, [1, 0, 1], "replicas seen during apply");
    assert!(seen_paused, "the resource was never seen paused");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let changes: Vec<String> = v["kubernetes_changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{} {} {} -> {}",
                c["object"].as_str().unwrap(),
                c["field"].as_str().unwrap(),
                c["before"].as_str().unwrap(),
                c["after"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            "prometheus/monitoring/k8s metadata.annotations[promigrate.io/paused-before-migration] (none) -> unset",
            "prometheus/monitoring/k8s spec.paused unset -> true",
            "statefulset/monitoring/prometheus-k8s metadata.annotations[promigrate.io/replicas-before-migration] (none) -> 1",
            "statefulset/monitoring/prometheus-k8s spec.replicas 1 -> 0",
            "statefulset/monitoring/prometheus-k8s spec.replicas 0 -> 1",
            "statefulset/monitoring/prometheus-k8s metadata.annotations[promigrate.io/replicas-before-migration] 1 -> (removed)",
            "prometheus/monitoring/k8s spec.paused true -> unset",
            "prometheus/monitoring/k8s metadata.annotations[promigrate.io/paused-before-migration] unset -> (removed)",
        ],
        "{v}"
    );
    // Both end as they began; the data is where the pod looks, owned as it runs.
    assert_eq!(spec_and_annotations(&k.prometheus(NS, "k8s")), before_spec);
    let sts = k.wait_statefulset(NS, sts_name);
    assert_eq!(replicas(&sts), 1);
    assert!(
        sts.metadata
            .annotations
            .unwrap_or_default()
            .keys()
            .all(|a| !a.starts_with("promigrate.io/"))
    );
    k.wait_bound(claim, "pv-k8s");
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(ws.target().join("wal")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1000, 2000));
    assert_eq!(
        common::content_hashes(&ws.source),
        common::content_hashes(&ws.target())
    );

    // A rerun: nothing to write, nothing changed in the cluster.
    let before = state(&k, sts_name);
    let (code, v) = ws.run_json(&["apply", "--yes", "--source-stopped"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["kubernetes_changes"], json!([]), "{v}");
    assert_eq!(state(&k, sts_name), before);
    let (code, out, _) = ws.run(&["verify"]);
    assert_eq!(code, 0, "{out}");
}

/// Each mismatch between the plan and the operator's Prometheus is a blocker that names
/// both sides, and neither the resource nor its StatefulSet is touched.
#[test]
fn an_operator_target_that_would_not_run_the_data_is_refused() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let k = TestCluster::up();
    k.storage_class("manual");
    let _op = k.start_operator(NS);
    let ws = common::Workspace::new();
    k.make_pv("pv-k8s", "Retain", &ws.mount);
    let mut spec = prometheus("k8s", "v3.5.0");
    spec["spec"]["retention"] = json!("60d");
    k.create_prometheus(NS, spec);
    let sts_name = "prometheus-k8s";
    k.wait_statefulset(NS, sts_name);
    k.wait_bound("prometheus-k8s-db-prometheus-k8s-0", "pv-k8s");
    let refused = |what: &str, needles: &[&str]| {
        let before = untouched(&k, sts_name);
        let (code, out, _) = ws.run(&["plan"]);
        assert_eq!(code, 1, "{what}: {out}");
        assert!(
            out.lines()
                .any(|l| l.starts_with("BLOCKER") && needles.iter().all(|n| l.contains(n))),
            "{what}: {needles:?} in\n{out}"
        );
        let (code, out, _) = ws.run(&["apply", "--yes", "--source-stopped"]);
        assert_eq!(code, 1, "{what}: {out}");
        assert_eq!(untouched(&k, sts_name), before, "{what}: objects changed");
        assert!(!ws.target().exists(), "{what}: data written");
    };
    // Sanity: as made, the plan is clean.
    operator_plan(&ws, &k.kubeconfig, "", "");
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 0, "{out}");

    operator_plan(
        &ws,
        &k.kubeconfig,
        "  securityContext:\n    runAsUser: 65534\n    fsGroup: 65534\n",
        "",
    );
    refused(
        "securityContext",
        &["runAsUser 65534", "runs as uid 1000", "fsGroup"],
    );
    operator_plan(&ws, &k.kubeconfig, "  subPath: data\n", "");
    refused("subPath", &["subPath is `data`", "subPath `prometheus-db`"]);

    // An image older than the source's Prometheus (2.42, from PATH).
    operator_plan(&ws, &k.kubeconfig, "", "");
    k.patch_prometheus(NS, "k8s", json!({"spec": {"version": "v2.40.0"}}));
    k.wait("the operator to roll the image", || {
        k.statefulset(NS, sts_name).is_some_and(|s| {
            s.spec.and_then(|s| s.template.spec).is_some_and(|p| {
                p.containers
                    .iter()
                    .any(|c| c.image.as_deref() == Some("quay.io/prometheus/prometheus:v2.40.0"))
            })
        })
    });
    refused("version", &["2.40.0", "older than the source's 2.42.0"]);
    k.patch_prometheus(NS, "k8s", json!({"spec": {"version": "v3.5.0"}}));

    // Flux manages the resource.
    k.patch_prometheus(
        NS,
        "k8s",
        json!({"metadata": {"labels": {"kustomize.toolkit.fluxcd.io/name": "monitoring",
            "kustomize.toolkit.fluxcd.io/namespace": "flux-system"}}}),
    );
    // The operator copies the resource's labels to the StatefulSet: wait for that write.
    k.wait("the operator to label the StatefulSet", || {
        k.statefulset(NS, sts_name).is_some_and(|s| {
            s.metadata
                .labels
                .unwrap_or_default()
                .contains_key("kustomize.toolkit.fluxcd.io/name")
        })
    });
    refused(
        "GitOps",
        &[
            "prometheus/monitoring/k8s is managed by Flux",
            "suspend",
            "acceptGitOps",
        ],
    );
}
