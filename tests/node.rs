//! The test node (`scripts/test-node.sh`, [`TestNode`]) does what the receiver pod of issue 17
//! needs: a pod under Pod Security `restricted` writes into a subPath of a local PV as
//! runAsUser:fsGroup, `kubectl exec -i` streams data in and back out, and a pod whose image has
//! no shell runs but cannot exec `sh`. Real kubelet, containerd and runc; each test starts its
//! own node (they take turns: one node per host).

mod common;

use common::cluster::NS;
use common::node::TestNode;
use common::{FS_GROUP, RUN_AS_USER};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

/// `len` bytes that are not all alike (xorshift64): a lost, doubled or reordered block shows.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn restricted_pod_writes_into_a_subpath_of_a_local_pv_as_run_as_user_and_fs_group() {
    let node = TestNode::up();
    node.restricted_namespace(NS);

    // Pod Security admission enforces the profile: the same pod without its settings is refused.
    let pods: Api<Pod> = Api::namespaced(node.client.clone(), NS);
    let plain: Pod = serde_json::from_value(json!({"metadata": {"name": "plain"}, "spec": {
        "nodeName": node.name(), "containers": [{"name": "main", "image": node.standin_image(),
            "imagePullPolicy": "Never", "command": ["sleep", "3600"]}]}}))
    .unwrap();
    let refused = node
        .rt
        .block_on(pods.create(&PostParams::default(), &plain))
        .expect_err("a pod without the restricted settings was admitted");
    assert!(
        refused
            .to_string()
            .contains("violates PodSecurity \"restricted:latest\""),
        "{refused}"
    );

    let vol = node.volume_dir("prom");
    node.local_volume("pv-prom", &vol, NS, "data-prom-0");
    let pod = node.run_pod(
        NS,
        node.restricted_pod(
            "prom-0",
            node.standin_image(),
            &[
                "sh",
                "-c",
                "id > /prometheus/written-by-pod && exec sleep 3600",
            ],
            Some(("data-prom-0", "prometheus-db")),
        ),
    );
    let status = &pod.status.unwrap().container_statuses.unwrap()[0];
    assert_eq!(status.image, node.standin_image());

    // What the container's own process wrote, seen on the host, in the subPath.
    let file = vol.join("prometheus-db/written-by-pod");
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (RUN_AS_USER, FS_GROUP));
    let id = std::fs::read_to_string(&file).unwrap();
    assert!(
        id.starts_with(&format!("uid={RUN_AS_USER} ")) && id.contains(&FS_GROUP.to_string()),
        "{id}"
    );
    // fsGroup: the kubelet gave the volume (and the subPath it made) to group 2000, setgid,
    // so what the pod writes belongs to that group.
    for dir in [vol.clone(), vol.join("prometheus-db")] {
        let m = std::fs::metadata(&dir).unwrap();
        assert_eq!(m.gid(), FS_GROUP, "{}", dir.display());
        assert_ne!(
            m.permissions().mode() & 0o2000,
            0,
            "{} not setgid",
            dir.display()
        );
    }

    // The container's process runs as the profile says: uid 1000, no capabilities, no new
    // privileges, a seccomp filter.
    let out = node.exec(NS, "prom-0", &["cat", "/proc/1/status"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let proc_status = text(&out.stdout);
    for want in [
        format!("Uid:\t{RUN_AS_USER}\t{RUN_AS_USER}\t{RUN_AS_USER}\t{RUN_AS_USER}"),
        "CapEff:\t0000000000000000".to_string(),
        "NoNewPrivs:\t1".to_string(),
        "Seccomp:\t2".to_string(),
    ] {
        assert!(
            proc_status.lines().any(|l| l == want),
            "no {want:?} in\n{proc_status}"
        );
    }
}

#[test]
fn kubectl_exec_streams_stdin_into_the_pod_and_stdout_back() {
    let node = TestNode::up();
    node.restricted_namespace(NS);
    let vol = node.volume_dir("prom");
    node.local_volume("pv-prom", &vol, NS, "data-prom-0");
    node.run_pod(
        NS,
        node.restricted_pod(
            "receiver",
            node.standin_image(),
            &["sleep", "3600"],
            Some(("data-prom-0", "prometheus-db")),
        ),
    );

    // stdin -> `cat > file`. The shell stays (and keeps its stdout open) until cat has read
    // everything: containerd 1.6's CRI exec stops copying stdin as soon as the process's
    // stdout or stderr closes, so `sh -c 'cat > f'` (sh execs cat, stdout on the file) got 0 to
    // 196608 of 5000000 bytes here (containerd issue 12734).
    let data = noise(8 << 20);
    let out = node.exec(
        NS,
        "receiver",
        &["sh", "-c", "cat > /prometheus/streamed; echo received"],
        Some(&data),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "received\n");
    let on_host = vol.join("prometheus-db/streamed");
    assert!(
        std::fs::read(&on_host).unwrap() == data,
        "streamed in: bytes differ"
    );
    let meta = std::fs::metadata(&on_host).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (RUN_AS_USER, FS_GROUP));

    // ... and back out through stdout.
    let out = node.exec(NS, "receiver", &["cat", "/prometheus/streamed"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        out.stdout == data,
        "streamed out: {} bytes differ",
        out.stdout.len()
    );

    // A tar archive into `tar -x` (tar keeps its stdout open until it ends).
    let mut archive = tar::Builder::new(Vec::new());
    for (name, body) in [
        ("wal/00000000", &data[..3 << 20]),
        ("chunks_head/000001", &data[..1000]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        archive.append_data(&mut h, name, body).unwrap();
    }
    let archive = archive.into_inner().unwrap();
    let out = node.exec(
        NS,
        "receiver",
        &["tar", "-x", "-f", "-", "-C", "/prometheus"],
        Some(&archive),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let db = vol.join("prometheus-db");
    assert!(std::fs::read(db.join("wal/00000000")).unwrap() == data[..3 << 20]);
    assert!(std::fs::read(db.join("chunks_head/000001")).unwrap() == data[..1000]);

    // The command's exit status comes back as kubectl's.
    let out = node.exec(NS, "receiver", &["sh", "-c", "echo oops >&2; exit 7"], None);
    assert_eq!(out.status.code(), Some(7));
    assert!(text(&out.stderr).contains("oops"), "{}", text(&out.stderr));
}

#[test]
fn a_shellless_image_runs_and_exec_of_sh_fails() {
    let node = TestNode::up();
    node.restricted_namespace(NS);
    node.run_pod(
        NS,
        node.restricted_pod("noshell", node.shellless_image(), &[], None),
    );

    // exec itself works in this pod: its one binary answers.
    let out = node.exec(NS, "noshell", &["/pause", "-v"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("pause.c v"),
        "{}",
        text(&out.stdout)
    );

    // ... but there is no shell and no tar to run.
    for (args, missing) in [
        (&["sh", "-c", "true"][..], "sh"),
        (&["tar", "-x"][..], "tar"),
    ] {
        let out = node.exec(NS, "noshell", args, Some(b""));
        assert!(!out.status.success(), "{args:?} ran in a shell-less image");
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("exec: \"{missing}\": executable file not found")),
            "{err}"
        );
    }
}
