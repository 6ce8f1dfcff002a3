//! A target written through a receiver pod (issue 17) on the real test node (kubelet,
//! containerd, runc: `tests/common/node.rs`): a claim on a local PV whose host directory
//! promigrate is never given, in a namespace where Pod Security enforces `restricted`. The
//! receiver is the static promigrate of `make static`, uploaded into the pod. Each test starts
//! its own node (they take turns: one node per host).

mod common;

use common::cluster::NS;
use common::node::{TestNode, static_promigrate};
use common::{FS_GROUP, RUN_AS_USER};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use serde_json::json;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A plan whose target is claim `data-prom-0` of namespace [`NS`], with no `path`, and the
/// receiver settings `receiver` (YAML lines under `receiver:`, or none).
fn write_plan(ws: &common::Workspace, kubeconfig: &Path, receiver: &str) {
    let receiver = if receiver.is_empty() {
        String::new()
    } else {
        format!("    receiver:\n{receiver}")
    };
    std::fs::write(
        &ws.plan,
        format!(
            "apiVersion: promigrate/v1
kind: Migration
metadata:
  name: test-migration
source:
  path: {}
target:
  subPath: prometheus-db
  securityContext:
    runAsUser: {RUN_AS_USER}
    fsGroup: {FS_GROUP}
  kubernetes:
    kubeconfig: {}
    namespace: {NS}
    persistentVolume: pv-prom
    persistentVolumeClaim: data-prom-0
    waitTimeout: 60s
{receiver}transfer:
  parallelism: 4
",
            ws.source.display(),
            kubeconfig.display()
        ),
    )
    .unwrap();
}

/// The receiver settings of a plan whose receiver pod runs the node's stand-in image.
fn standin(node: &TestNode) -> String {
    format!("      image: {}\n", node.standin_image())
}

/// Runs promigrate with the static binary to upload.
fn run(ws: &common::Workspace, args: &[&str]) -> (i32, String, String) {
    let mut c = ws.cmd(args);
    c.env("PROMIGRATE_RECEIVER_BINARY", static_promigrate());
    common::run(c)
}

/// The receiver pods in [`NS`] (all of them, whatever their labels say).
fn pods_left(node: &TestNode) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(node.client.clone(), NS);
    node.rt
        .block_on(pods.list(&ListParams::default()))
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect()
}

fn node_with_claim() -> (TestNode, PathBuf) {
    node_with_claim_on(TestNode::up())
}

/// `node` with [`node_with_claim`]'s namespace, volume and claim.
fn node_with_claim_on(node: TestNode) -> (TestNode, PathBuf) {
    node.restricted_namespace(NS);
    let vol = node.volume_dir("prom");
    node.local_volume("pv-prom", &vol, NS, "data-prom-0");
    (node, vol)
}

/// [`node_with_claim`], and a workspace whose plan reaches the claim through a receiver pod
/// of the stand-in image.
fn node_claim_and_plan() -> (TestNode, PathBuf, common::Workspace) {
    node_claim_and_plan_with(standin)
}

/// [`node_with_claim`], and a workspace whose plan has the receiver settings `receiver`
/// gives for the node.
fn node_claim_and_plan_with(
    receiver: impl Fn(&TestNode) -> String,
) -> (TestNode, PathBuf, common::Workspace) {
    let (node, vol) = node_with_claim();
    let ws = common::Workspace::new();
    write_plan(&ws, &node.kubeconfig, &receiver(&node));
    (node, vol, ws)
}

/// What the claim's TSDB must hold after an apply: the source's content, but the file
/// Prometheus rewrites at each start.
fn wanted(ws: &common::Workspace) -> std::collections::BTreeMap<String, u128> {
    let mut want = common::content_hashes(&ws.source);
    want.remove("queries.active");
    want
}

/// The run's log says its stream went through a port-forward spoken as SPDY through the
/// API server's tunnel, and not that the tunnel was refused.
fn assert_spdy(log: &str) {
    assert!(
        log.contains("the stream goes through a port-forward")
            && log.contains("(SPDY through the API server's WebSocket tunnel)")
            && !log.contains("no port-forward through the API server's SPDY tunnel"),
        "{log}"
    );
}

#[test]
fn plan_apply_and_verify_through_a_receiver_pod_end_byte_equal_on_the_claim() {
    let started = std::time::Instant::now();
    static_promigrate();
    eprintln!("static binary ready after {:?}", started.elapsed());
    let (node, vol, ws) = node_claim_and_plan();
    // plan changes nothing on the volume: its pod mounts the claim read-only, so the kubelet
    // does not apply fsGroup (group and setgid bit of the volume's root) as it does for a
    // read-write mount.
    let owner_mode = |p: &Path| {
        let md = std::fs::metadata(p).unwrap();
        (md.uid(), md.gid(), md.mode())
    };
    let before = owner_mode(&vol);
    let (code, out, err) = run(&ws, &["plan"]);
    assert_eq!(code, 0, "plan: {out}\n{err}");
    assert!(out.contains("receiver pod"), "{out}");
    assert_eq!(pods_left(&node), Vec::<String>::new(), "after plan");
    assert_eq!(owner_mode(&vol), before, "plan changed the volume's root");
    let t = std::time::Instant::now();
    let (code, out, err) = run(&ws, &["apply", "--yes"]);
    assert_eq!(code, 0, "apply: {out}\n{err}");
    eprintln!("apply through the pod: {:?}", t.elapsed());
    assert_spdy(&err);
    assert_eq!(pods_left(&node), Vec::<String>::new(), "after apply");
    // Its verify took the source's hashes from the copy (every file was copied) and read
    // the target back in the pod: the bytes hashed are the target's alone.
    let files = wanted(&ws).len();
    let bytes: u64 = common::files_below(&ws.source)
        .filter(|(rel, _)| rel != "queries.active")
        .map(|(_, e)| e.metadata().unwrap().len())
        .sum();
    assert!(
        out.contains(&format!("{} hashed in", promigrate::units::bytes(bytes)))
            && out.contains(&format!(
                "the source side of {files} files hashed when an apply copied them"
            )),
        "{out}"
    );

    let db = vol.join("prometheus-db");
    let want = wanted(&ws);
    assert_eq!(common::content_hashes(&db), want, "byte-equal on the PV");
    for (rel, e) in common::files_below(&db) {
        let md = e.metadata().unwrap();
        assert_eq!((md.uid(), md.gid()), (RUN_AS_USER, FS_GROUP), "{rel}");
    }
    let (code, out, err) = run(&ws, &["verify", "--level", "deep"]);
    assert_eq!(code, 0, "verify: {out}\n{err}");
    assert_spdy(&err);
    // A flipped byte on the PV is found by the receiver's hashes.
    let block = common::some_block(&db);
    common::flip_byte_keeping_mtime(&block.join("index"), 100);
    let (code, out, _) = run(&ws, &["verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("content differs"), "{out}");
    assert_eq!(pods_left(&node), Vec::<String>::new(), "after verify");
}

#[test]
fn a_receiver_image_without_a_shell_is_a_clear_error_and_leaves_no_pod() {
    let (node, _vol, ws) =
        node_claim_and_plan_with(|node| format!("      image: {}\n", node.shellless_image()));
    let (code, out, err) = run(&ws, &["plan"]);
    assert_ne!(code, 0, "{out}\n{err}");
    assert!(
        err.contains("has no `sh`") && err.contains("target.kubernetes.receiver.image"),
        "{err}"
    );
    assert_eq!(pods_left(&node), Vec::<String>::new());
}

/// `kubectl apply` of each object.
fn apply_objects(node: &TestNode, objs: impl IntoIterator<Item = serde_json::Value>) {
    for obj in objs {
        let file = node.state_dir().join("object.json");
        std::fs::write(&file, obj.to_string()).unwrap();
        let out = node
            .kubectl()
            .args(["apply", "-f"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A kubeconfig that impersonates a ServiceAccount of [`NS`] (named `name`) which may do
/// only what `rules` (a Role's rules) allow.
fn limited_kubeconfig(node: &TestNode, name: &str, rules: serde_json::Value) -> PathBuf {
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": name, "namespace": NS}, "rules": rules});
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": NS},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NS}]});
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": NS}});
    apply_objects(node, [sa, role, binding]);
    let limited = node.state_dir().join(format!("{name}.kubeconfig"));
    let admin = std::fs::read_to_string(&node.kubeconfig).unwrap();
    assert!(admin.contains("\n  user:\n"), "{admin}");
    std::fs::write(
        &limited,
        admin.replace(
            "\n  user:\n",
            &format!("\n  user:\n    as: system:serviceaccount:{NS}:{name}\n"),
        ),
    )
    .unwrap();
    limited
}

#[test]
fn without_pods_exec_the_error_names_it_and_nothing_is_created() {
    let (node, _vol) = node_with_claim();
    // A ServiceAccount that may do everything with pods but exec into them.
    let limited = limited_kubeconfig(
        &node,
        "no-exec",
        json!([{"apiGroups": [""], "resources": ["pods"],
                "verbs": ["create", "get", "list", "watch", "delete", "patch"]}]),
    );
    let ws = common::Workspace::new();
    write_plan(&ws, &limited, &standin(&node));
    let (code, out, err) = run(&ws, &["plan"]);
    assert_ne!(code, 0, "{out}\n{err}");
    assert!(
        err.contains("may not get pods/exec, create pods/exec")
            && err.contains("Nothing was created"),
        "{err}"
    );
    for granted in ["create pods,", "get pods,", "delete pods"] {
        assert!(!err.contains(granted), "{granted} is granted: {err}");
    }
    assert_eq!(pods_left(&node), Vec::<String>::new());
}

#[test]
fn without_pods_portforward_or_when_told_the_stream_goes_through_the_exec_and_ends_byte_equal() {
    let (node, vol) = node_with_claim();
    // Everything the receiver needs, but no port-forward.
    let limited = limited_kubeconfig(
        &node,
        "no-forward",
        json!([{"apiGroups": [""], "resources": ["pods"],
                "verbs": ["create", "get", "list", "watch", "delete", "patch"]},
               {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["get", "create"]},
               {"apiGroups": [""], "resources": ["persistentvolumeclaims"],
                "verbs": ["get", "list", "watch"]}]),
    );
    // The PV and the namespace are cluster-scoped.
    apply_objects(
        &node,
        [
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": "no-forward-read"},
                "rules": [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]},
                          {"apiGroups": [""], "resources": ["persistentvolumes"],
                           "verbs": ["get", "patch", "list", "watch"]}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": "no-forward-read"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": "no-forward-read"},
                "subjects": [{"kind": "ServiceAccount", "name": "no-forward", "namespace": NS}]}),
        ],
    );
    let ws = common::Workspace::new();
    write_plan(&ws, &limited, &standin(&node));
    let (code, out, err) = run(&ws, &["apply", "--yes"]);
    assert_eq!(code, 0, "apply: {out}\n{err}");
    assert!(
        err.contains("the stream goes through the exec")
            && err.contains("may not get pods/portforward, create pods/portforward"),
        "{err}"
    );
    assert!(!err.contains("through a port-forward"), "{err}");
    let db = vol.join("prometheus-db");
    assert_eq!(
        common::content_hashes(&db),
        wanted(&ws),
        "byte-equal on the PV"
    );
    // With every permission, the variable chooses the exec as well; verify finds the
    // apply's copy whole through it.
    write_plan(&ws, &node.kubeconfig, &standin(&node));
    let verify_with = |var: &str, value: &str| {
        let mut c = ws.cmd(&["verify"]);
        c.env("PROMIGRATE_RECEIVER_BINARY", static_promigrate())
            .env(var, value);
        common::run(c)
    };
    let (code, out, err) = verify_with("PROMIGRATE_RECEIVER_STREAM", "exec");
    assert_eq!(code, 0, "verify: {out}\n{err}");
    assert!(
        err.contains("the stream goes through the exec (PROMIGRATE_RECEIVER_STREAM=exec"),
        "{err}"
    );
    // The variable chooses the WebSocket port-forward instead of SPDY through the tunnel.
    let (code, out, err) = verify_with("PROMIGRATE_RECEIVER_STREAM", "port-forward-websocket");
    assert_eq!(code, 0, "verify: {out}\n{err}");
    assert!(
        err.contains("the stream goes through a port-forward") && err.contains("(WebSocket)"),
        "{err}"
    );
    // A port-forward that RBAC allows but the runtime cannot connect (the port where
    // nothing listens, injected): the stream goes through the exec, with a warning.
    let (code, out, err) = verify_with("PROMIGRATE_TEST_FORWARD_PORT", "1");
    assert_eq!(code, 0, "verify: {out}\n{err}");
    // The runtime's own words (containerd writes them on the error stream after it has
    // ended the data stream) are in the warning.
    assert!(
        err.contains("no port-forward to it (error forwarding port 1")
            && err.contains("the stream goes through the exec instead")
            && !err.contains("no port-forward through the API server's SPDY tunnel"),
        "{err}"
    );
    // A value it does not know is an error before anything is created.
    let (code, out, err) = verify_with("PROMIGRATE_RECEIVER_STREAM", "ssh");
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(
        err.contains("PROMIGRATE_RECEIVER_STREAM=\"ssh\" is not a stream"),
        "{err}"
    );
    assert_eq!(pods_left(&node), Vec::<String>::new());
}

#[test]
fn an_api_server_without_the_spdy_tunnel_gets_the_websocket_port_forward_and_ends_byte_equal() {
    // The API server as before Kubernetes 1.31 (or with the feature turned off): it passes
    // the WebSocket upgrade on to the kubelet untranslated, where the tunnel's subprotocol
    // is not spoken.
    let (node, vol) = node_with_claim_on(TestNode::up_with(&[(
        "PROMIGRATE_KUBE_APISERVER_FEATURE_GATES",
        "PortForwardWebsockets=false",
    )]));
    let ws = common::Workspace::new();
    write_plan(&ws, &node.kubeconfig, &standin(&node));
    let (code, out, err) = run(&ws, &["apply", "--yes"]);
    assert_eq!(code, 0, "apply: {out}\n{err}");
    assert!(
        err.contains("no port-forward through the API server's SPDY tunnel (")
            && err.contains("the stream goes through a port-forward")
            && err.contains("(WebSocket)"),
        "{err}"
    );
    assert_eq!(
        common::content_hashes(&vol.join("prometheus-db")),
        wanted(&ws),
        "byte-equal on the PV"
    );
    assert_eq!(pods_left(&node), Vec::<String>::new());
}

#[test]
fn an_ssh_source_is_written_through_a_receiver_pod_and_verified_byte_equal() {
    // The source on "the VM" (a real sshd on 127.0.0.1), the target a claim only the
    // cluster can attach: the tool's two remote ends at once.
    let (node, vol, ws) = node_claim_and_plan();
    let sshd = common::sshd::Sshd::start();
    let yaml = sshd.through(
        &std::fs::read_to_string(&ws.plan).unwrap(),
        &ws.source,
        "client_key",
        &sshd.path("known_hosts"),
    );
    std::fs::write(&ws.plan, yaml).unwrap();
    let (code, out, err) = run(&ws, &["plan"]);
    assert_eq!(code, 0, "plan: {out}\n{err}");
    assert!(
        out.contains(&sshd.shown(&ws.source)) && out.contains("receiver pod"),
        "{out}"
    );
    // Over SSH promigrate cannot see the source's processes: the operator says it stopped.
    let (code, out, err) = run(
        &ws,
        &["apply", "--yes", "--source-stopped", "--output", "json"],
    );
    assert_eq!(code, 0, "apply: {out}\n{err}");
    assert_spdy(&err);
    // Every file came through the SSH tar streams (not the SFTP fallback).
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let apply = &common::only(&v)["apply"];
    assert!(apply["copied_files"].as_u64().unwrap() > 10, "{v}");
    assert_eq!(apply["streamed_files"], apply["copied_files"], "{v}");
    assert_eq!(
        common::content_hashes(&vol.join("prometheus-db")),
        wanted(&ws),
        "byte-equal on the PV"
    );
    let (code, out, err) = run(&ws, &["verify"]);
    assert_eq!(code, 0, "verify: {out}\n{err}");
    assert_eq!(pods_left(&node), Vec::<String>::new());
}

#[test]
fn an_apply_killed_mid_copy_leaves_its_pod_and_the_rerun_removes_it_and_ends_byte_equal() {
    let (node, vol, ws) = node_claim_and_plan();
    // About 8 s of copying at this limit, once the pod runs; killed once the receiver has
    // written something into the TSDB's directory.
    let db = vol.join("prometheus-db");
    let mut child = spawn_slow_apply_and_wait_for_a_write(&ws, &db, 8);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "apply ended before the kill: the test would prove nothing"
    );
    child.kill().unwrap(); // SIGKILL: no drop runs, the pod stays
    child.wait().unwrap();
    let left = pods_left(&node);
    assert_eq!(left.len(), 1, "the killed run's pod: {left:?}");
    let want = wanted(&ws);
    assert_ne!(
        common::content_hashes(&db),
        want,
        "the kill came after the copy had finished: the test would prove nothing"
    );

    let (code, out, err) = run(&ws, &["apply", "--yes"]);
    assert_eq!(code, 0, "rerun: {out}\n{err}");
    assert!(
        err.contains(&format!("removing the receiver pod {NS}/{}", left[0])),
        "{err}"
    );
    assert_eq!(pods_left(&node), Vec::<String>::new(), "after the rerun");
    assert_eq!(common::content_hashes(&db), want, "byte-equal");
    common::assert_no_temp_files(&db, "after the rerun");
    let (code, out, err) = run(&ws, &["verify"]);
    assert_eq!(code, 0, "verify: {out}\n{err}");
}

/// Starts `apply --yes` limited to copy the source in about `seconds` once its pod runs,
/// and waits until it has written something into the TSDB's directory on the claim.
fn spawn_slow_apply_and_wait_for_a_write(
    ws: &common::Workspace,
    db: &Path,
    seconds: u64,
) -> std::process::Child {
    let total: u64 = common::files_below(&ws.source)
        .map(|(_, e)| e.metadata().unwrap().len())
        .sum();
    let rate = format!("{}K", (total / 1024 / seconds).max(8));
    let mut c = ws.cmd(&["apply", "--yes", "--bwlimit", &rate]);
    c.env("PROMIGRATE_RECEIVER_BINARY", static_promigrate());
    let mut child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    // (Not files_below: a staging directory renamed during the walk is no error here.)
    let any_file = |d: &Path| {
        walkdir::WalkDir::new(d)
            .into_iter()
            .filter_map(Result::ok)
            .any(|e| e.file_type().is_file())
    };
    while !any_file(db) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "apply ended before it wrote anything"
        );
        assert!(
            start.elapsed() < std::time::Duration::from_secs(120),
            "nothing written after 120 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child
}

#[test]
fn a_second_run_beside_a_live_one_leaves_its_receiver_pod_alone() {
    let (node, vol, ws) = node_claim_and_plan();
    let db = vol.join("prometheus-db");
    let first = spawn_slow_apply_and_wait_for_a_write(&ws, &db, 25);
    let live = pods_left(&node);
    assert_eq!(live.len(), 1, "the first run's pod: {live:?}");
    // A second command of the same migration on the same claim, while the first copies.
    let (code, out, err) = run(&ws, &["verify"]);
    let still = pods_left(&node);
    assert!(
        still.contains(&live[0]),
        "the second run deleted the first run's live pod {}: {still:?}\n{err}",
        live[0]
    );
    assert_eq!(code, 3, "{out}\n{err}");
    assert!(
        err.contains("in use by another promigrate run") && err.contains(&live[0]),
        "{err}"
    );
    let done = first.wait_with_output().unwrap();
    assert_eq!(
        done.status.code(),
        Some(0),
        "the first run: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_eq!(pods_left(&node), Vec::<String>::new(), "after both");
    let want = wanted(&ws);
    assert_eq!(common::content_hashes(&db), want, "byte-equal");
}

#[test]
fn a_receiver_pod_deleted_mid_copy_fails_the_apply_clearly_and_the_rerun_ends_byte_equal() {
    let (node, vol, ws) = node_claim_and_plan();
    let db = vol.join("prometheus-db");
    let first = spawn_slow_apply_and_wait_for_a_write(&ws, &db, 20);
    let live = pods_left(&node);
    assert_eq!(live.len(), 1, "the apply's pod: {live:?}");
    let out = node
        .kubectl()
        .args(["delete", "pod", "-n", NS, &live[0]])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = first.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&done.stderr);
    assert_eq!(
        done.status.code(),
        Some(3),
        "apply with its pod gone: {err}"
    );
    assert!(err.contains(&live[0]), "the error names the pod: {err}");
    let want = wanted(&ws);
    assert_ne!(
        common::content_hashes(&db),
        want,
        "the deletion came after the copy had finished: the test would prove nothing"
    );
    assert_eq!(
        pods_left(&node),
        Vec::<String>::new(),
        "after the failed apply"
    );
    let (code, out, err) = run(&ws, &["apply", "--yes"]);
    assert_eq!(code, 0, "rerun: {out}\n{err}");
    assert_eq!(pods_left(&node), Vec::<String>::new(), "after the rerun");
    assert_eq!(common::content_hashes(&db), want, "byte-equal");
    common::assert_no_temp_files(&db, "after the rerun");
    let (code, out, err) = run(&ws, &["verify", "--level", "deep"]);
    assert_eq!(code, 0, "verify: {out}\n{err}");
}

#[test]
fn an_ha_pair_of_claims_is_written_through_two_receiver_pods_from_one_run() {
    let node = TestNode::up();
    node.restricted_namespace(NS);
    let claims = [("pv-a", "data-prom-0"), ("pv-b", "data-prom-1")];
    let mut vols = Vec::new();
    let mut targets = String::new();
    for (pv, claim) in claims {
        let vol = node.volume_dir(pv);
        node.local_volume(pv, &vol, NS, claim);
        vols.push(vol);
        targets.push_str(&format!(
            "  - subPath: prometheus-db
    securityContext: {{ runAsUser: {RUN_AS_USER}, fsGroup: {FS_GROUP} }}
    kubernetes:
      kubeconfig: {}
      namespace: {NS}
      persistentVolume: {pv}
      persistentVolumeClaim: {claim}
      waitTimeout: 60s
      receiver:
        image: {}
",
            node.kubeconfig.display(),
            node.standin_image()
        ));
    }
    let ws = common::Workspace::new();
    std::fs::write(
        &ws.plan,
        format!(
            "apiVersion: promigrate/v1
kind: Migration
metadata:
  name: test-ha
source:
  path: {}
targets:
{targets}transfer:
  parallelism: 4
",
            ws.source.display()
        ),
    )
    .unwrap();
    let (code, out, err) = run(&ws, &["apply", "--yes"]);
    assert_eq!(code, 0, "apply: {out}\n{err}");
    // One receiver pod per claim, both started before either gets its binary: they start
    // together, not one after the other.
    assert_eq!(err.matches(" created (image ").count(), 2, "{err}");
    let second_created = err.rfind(" created (image ").unwrap();
    let first_uploaded = err.find(") uploaded into ").expect("uploaded");
    assert!(
        second_created < first_uploaded,
        "pods started one after the other: {err}"
    );
    assert_eq!(pods_left(&node), Vec::<String>::new(), "after apply");
    let want = wanted(&ws);
    for vol in &vols {
        let db = vol.join("prometheus-db");
        assert_eq!(common::content_hashes(&db), want, "{}", db.display());
    }
    let (code, out, err) = run(&ws, &["verify"]);
    assert_eq!(code, 0, "verify: {out}\n{err}");
    assert_eq!(pods_left(&node), Vec::<String>::new(), "after verify");
}

/// Runs `promigrate ARGS`, sends it SIGINT once its receiver pod exists, and asserts that
/// it ended with exit 3, deleting the pod first (its own message, not a later failure's).
fn interrupted_once_its_pod_exists(node: &TestNode, ws: &common::Workspace, args: &[&str]) {
    let mut c = ws.cmd(args);
    c.env("PROMIGRATE_RECEIVER_BINARY", static_promigrate());
    let child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while pods_left(node).is_empty() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "no receiver pod after 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let done = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(3), "ended by Ctrl-C: {err}");
    assert!(
        err.contains("interrupted before anything was written"),
        "{err}"
    );
    assert_eq!(pods_left(node), Vec::<String>::new(), "after Ctrl-C: {err}");
}

#[test]
fn ctrl_c_while_plan_reads_through_the_pod_removes_the_pod() {
    let (node, _vol, ws) = node_claim_and_plan();
    // Interrupted once its receiver pod exists (starting, or already read).
    interrupted_once_its_pod_exists(&node, &ws, &["plan"]);
}

#[test]
fn ctrl_c_while_verify_waits_for_its_pod_removes_the_pod() {
    // A node that does not exist: the pod stays Pending for the whole waitTimeout (60 s).
    let (node, _vol, ws) = node_claim_and_plan_with(|node| {
        format!(
            "      image: {}\n      nodeName: no-such-node\n",
            node.standin_image()
        )
    });
    interrupted_once_its_pod_exists(&node, &ws, &["verify"]);
}

#[test]
fn a_dynamically_linked_promigrate_says_how_to_get_a_static_one() {
    // No cluster is asked: the binary to upload is settled first.
    let ws = common::Workspace::new();
    write_plan(&ws, &ws.dir.path().join("no-kubeconfig"), "");
    let mut c = ws.cmd(&["plan"]);
    c.env_remove("PROMIGRATE_RECEIVER_BINARY");
    let (code, out, err) = common::run(c);
    assert_ne!(code, 0, "{out}\n{err}");
    assert!(
        err.contains("linked dynamically") && err.contains("make static"),
        "{err}"
    );
    // A dynamic one named by the variable is refused the same way.
    let mut c = ws.cmd(&["plan"]);
    c.env(
        "PROMIGRATE_RECEIVER_BINARY",
        env!("CARGO_BIN_EXE_promigrate"),
    );
    let (code, _, err) = common::run(c);
    assert_ne!(code, 0);
    assert!(
        err.contains("PROMIGRATE_RECEIVER_BINARY=") && err.contains("linked dynamically"),
        "{err}"
    );
}

/// The replicas of StatefulSet `name` in [`NS`].
fn replicas(node: &TestNode, name: &str) -> i32 {
    let api: Api<k8s_openapi::api::apps::v1::StatefulSet> =
        Api::namespaced(node.client.clone(), NS);
    let s = node.rt.block_on(api.get(name)).unwrap();
    s.spec.and_then(|s| s.replicas).unwrap_or(1)
}

/// Waits until pod `name` in [`NS`] is Ready.
fn wait_pod_ready(node: &TestNode, name: &str) {
    let pods: Api<Pod> = Api::namespaced(node.client.clone(), NS);
    common::cluster::poll(
        &format!("pod {NS}/{name} Ready"),
        std::time::Duration::from_secs(90),
        || {
            node.rt
                .block_on(pods.get_opt(name))
                .unwrap()
                .and_then(|p| p.status?.conditions)
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        },
    );
}

#[test]
fn a_claim_a_pod_holds_exclusively_is_freed_by_apply_before_its_receiver_starts_and_left_alone_by_plan()
 {
    // A ReadWriteOncePod claim that a StatefulSet's pod mounts: no receiver pod can mount it
    // beside that pod (the kubelet keeps it Pending). Before, plan waited the whole
    // waitTimeout for its pod and then blamed a pod on another node; apply could not start.
    static_promigrate();
    let node = TestNode::up();
    node.restricted_namespace(NS);
    let vol = node.volume_dir("prom");
    node.local_volume_as(
        "pv-prom",
        &vol,
        NS,
        "data-prom-0",
        "1Gi",
        "ReadWriteOncePod",
    );
    let sts: Api<k8s_openapi::api::apps::v1::StatefulSet> =
        Api::namespaced(node.client.clone(), NS);
    let mut pod = node.restricted_pod(
        "unused",
        node.standin_image(),
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done",
        ],
        Some(("data-prom-0", "")),
    );
    pod["metadata"] = json!({"labels": {"app": "holder"}});
    pod["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "data", "mountPath": "/prometheus"}]);
    node.create(
        sts,
        json!({"metadata": {"name": "holder"}, "spec": {
            "replicas": 1, "serviceName": "holder",
            "selector": {"matchLabels": {"app": "holder"}},
            "template": pod}}),
    );
    wait_pod_ready(&node, "holder-0");
    let ws = common::Workspace::new();
    write_plan(&ws, &node.kubeconfig, &standin(&node));
    let plan = std::fs::read_to_string(&ws.plan).unwrap();
    std::fs::write(
        &ws.plan,
        plan.replace(
            "    waitTimeout: 60s\n",
            "    waitTimeout: 60s\n    statefulSet: holder\n",
        ),
    )
    .unwrap();

    // plan only reads: it stops, naming the claim and the pod, and changes nothing.
    let (code, out, err) = run(&ws, &["plan"]);
    assert_eq!(code, 1, "plan: {out}\n{err}");
    assert!(
        err.contains("ReadWriteOncePod")
            && err.contains(&format!("{NS}/holder-0"))
            && err.contains("Nothing was changed"),
        "{err}"
    );
    assert_eq!(pods_left(&node), vec!["holder-0".to_string()], "after plan");
    assert_eq!(replicas(&node, "holder"), 1);

    // A StatefulSet whose claims go when it is scaled down (whenScaled: Delete) is not
    // scaled down to free one: the checks plan makes come first.
    let retention = |when: &str| {
        let api: Api<k8s_openapi::api::apps::v1::StatefulSet> =
            Api::namespaced(node.client.clone(), NS);
        node.rt
            .block_on(api.patch(
                "holder",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({"spec": {
                    "persistentVolumeClaimRetentionPolicy": {"whenScaled": when}}})),
            ))
            .unwrap();
    };
    retention("Delete");
    let (code, out, err) = run(&ws, &["apply", "--yes"]);
    assert_eq!(code, 1, "apply: {out}\n{err}");
    assert!(
        err.contains("whenScaled: Delete") && err.contains("This claim was not changed"),
        "{err}"
    );
    assert_eq!(replicas(&node, "holder"), 1, "not scaled down");
    assert_eq!(pods_left(&node), vec!["holder-0".to_string()]);
    retention("Retain");

    // An apply that stops before it writes (its deadline passed while the receiver started)
    // scales the StatefulSet back.
    let (code, out, err) = run(&ws, &["apply", "--yes", "--deadline", "1s"]);
    assert_eq!(code, 1, "apply: {out}\n{err}");
    assert!(
        out.contains("scaled to 0 for the receiver, was scaled back"),
        "{out}\n{err}"
    );
    assert_eq!(replicas(&node, "holder"), 1, "scaled back");
    assert!(
        common::files_below(&vol).next().is_none(),
        "nothing written"
    );
    wait_pod_ready(&node, "holder-0");

    // Ctrl-C once the receiver pod exists (the StatefulSet is at 0 for it): the pod is
    // deleted and the StatefulSet scaled back before the process ends.
    let mut c = ws.cmd(&["apply", "--yes"]);
    c.env("PROMIGRATE_RECEIVER_BINARY", static_promigrate());
    let child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !pods_left(&node)
        .iter()
        .any(|p| p.starts_with("promigrate-receiver-"))
    {
        assert!(start.elapsed().as_secs() < 60, "no receiver pod after 60 s");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let done = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&done.stderr);
    let out = String::from_utf8_lossy(&done.stdout);
    assert_eq!(done.status.code(), Some(3), "ended by Ctrl-C: {out}\n{err}");
    assert!(
        format!("{out}{err}").contains("scaled to 0 for the receiver, was scaled back"),
        "{out}\n{err}"
    );
    assert_eq!(
        replicas(&node, "holder"),
        1,
        "scaled back after Ctrl-C: {err}"
    );
    wait_pod_ready(&node, "holder-0");
    assert_eq!(
        pods_left(&node),
        vec!["holder-0".to_string()],
        "after Ctrl-C"
    );

    // apply --yes scales the StatefulSet down before its receiver starts, copies, verifies,
    // and scales it back.
    let (code, out, err) = run(&ws, &["apply", "--yes"]);
    assert_eq!(code, 0, "apply: {out}\n{err}");
    let freed = err
        .find("scaling statefulset/")
        .unwrap_or_else(|| panic!("{err}"));
    let started = err
        .find(" created (image ")
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        freed < started,
        "scaled down before the receiver pod: {err}"
    );
    assert_eq!(
        common::content_hashes(&vol.join("prometheus-db")),
        wanted(&ws),
        "byte-equal on the PV"
    );
    assert_eq!(replicas(&node, "holder"), 1, "scaled back after the verify");
    wait_pod_ready(&node, "holder-0");
    assert_eq!(
        pods_left(&node),
        vec!["holder-0".to_string()],
        "after apply"
    );
}

/// Issue 17: an image the node cannot pull is named at once (not after the wait timeout),
/// with what to set; no pod is left behind.
#[test]
fn a_receiver_image_the_node_cannot_pull_is_a_clear_error_and_leaves_no_pod() {
    // A registry on a closed port of 127.0.0.1: the pull is refused at once.
    let (node, _vol, ws) = node_claim_and_plan_with(|_| {
        "      image: 127.0.0.1:1/promigrate-test/no-such-image:1\n".to_string()
    });
    let (code, out, err) = run(&ws, &["plan"]);
    assert_eq!(code, 3, "{out}\n{err}");
    assert!(
        err.contains("cannot pull image 127.0.0.1:1/promigrate-test/no-such-image:1")
            && err.contains("target.kubernetes.receiver.image"),
        "{err}"
    );
    // Named from the pod's status at once, not from the wait's timeout.
    assert!(!err.contains("is not running after"), "{err}");
    assert_eq!(pods_left(&node), Vec::<String>::new());
}

/// A claim on a volume that names no node (a `hostPath` PV here, as a network volume would
/// be), writable by the receiver's user as a Prometheus volume is, and a plan for it whose
/// receiver names no node either: its pod goes where the scheduler puts it.
fn node_with_unplaced_claim() -> (TestNode, PathBuf, common::Workspace) {
    let node = TestNode::up();
    node.restricted_namespace(NS);
    let vol = node.volume_dir("prom");
    // The kubelet applies no fsGroup to a hostPath volume: the directory is the pod user's.
    std::os::unix::fs::chown(&vol, Some(RUN_AS_USER), Some(FS_GROUP)).unwrap();
    node.host_path_volume("pv-prom", &vol, NS, "data-prom-0");
    let ws = common::Workspace::new();
    write_plan(&ws, &node.kubeconfig, &standin(&node));
    (node, vol, ws)
}

/// Issue 17: a volume that names no node (cloud disks, Ceph RBD: the usual case once the
/// StatefulSet's pod is gone) gets a receiver pod without a node, which the real scheduler
/// places; the apply ends byte-equal and leaves no pod.
#[test]
fn a_receiver_pod_on_a_volume_that_names_no_node_is_placed_by_the_scheduler() {
    let (node, vol, ws) = node_with_unplaced_claim();
    let (code, out, err) = run(&ws, &["apply", "--yes"]);
    assert_eq!(code, 0, "apply: {out}\n{err}");
    assert!(err.contains("node chosen by the scheduler"), "{err}");
    assert_eq!(
        common::content_hashes(&vol.join("prometheus-db")),
        wanted(&ws),
        "byte-equal on the PV"
    );
    assert_eq!(pods_left(&node), Vec::<String>::new(), "after apply");
}

/// Issue 17: a receiver pod that no node can take (here: the only node cordoned) is named at
/// once from the scheduler's verdict, with what to do, while the wait goes on (a cluster
/// autoscaler may add a node) until `waitTimeout`; then the error names it again; no pod is
/// left behind and nothing is written.
#[test]
fn a_receiver_pod_no_node_can_take_is_named_at_once_and_leaves_no_pod() {
    let (node, vol, ws) = node_with_unplaced_claim();
    let plan = std::fs::read_to_string(&ws.plan).unwrap();
    assert!(plan.contains("waitTimeout: 60s"), "{plan}");
    std::fs::write(
        &ws.plan,
        plan.replace("waitTimeout: 60s", "waitTimeout: 8s"),
    )
    .unwrap();
    let out = node
        .kubectl()
        .args(["cordon", node.name()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let (code, out, err) = run(&ws, &["apply", "--yes"]);
    assert_eq!(code, 3, "{out}\n{err}");
    // Said at once, as a warning, while it waits...
    let warned = err
        .find("cannot be placed yet (Unschedulable: ")
        .unwrap_or_else(|| panic!("the warning: {err}"));
    assert!(
        err[warned..].contains("1 node(s) were unschedulable")
            && err[warned..].contains("waiting up to 8s"),
        "{err}"
    );
    // ...and as the error once the wait is over, with what to do.
    let failed = err
        .find("cannot be placed on any node (Unschedulable: ")
        .unwrap_or_else(|| panic!("the error: {err}"));
    assert!(warned < failed, "{err}");
    assert!(
        err[failed..].contains("target.kubernetes.receiver.nodeName")
            && err[failed..].contains("waited 8s"),
        "what to do: {err}"
    );
    assert_eq!(pods_left(&node), Vec::<String>::new());
    assert_eq!(
        std::fs::read_dir(&vol).unwrap().count(),
        0,
        "nothing written to the volume"
    );
}
