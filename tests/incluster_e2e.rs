//! End to end on the real test node (issue 17), as the runbook lives it: a live source
//! Prometheus 3 on this host; a StatefulSet `prom` of the real Prometheus image
//! ([`TestNode::prometheus_image`]) running on a claim of a `local:` PV whose host directory
//! promigrate is never given, in a namespace where Pod Security enforces `restricted`. The
//! plan names the StatefulSet and leaves the receiver's image and node to be derived (the
//! StatefulSet's Prometheus image, the PV's node affinity). plan → `apply --phase presync`
//! while the source runs → SIGTERM → `apply --phase final --verify-level deep` (quiesced,
//! copied, verified, scaled back: the runbook's go/no-go with `target.kubernetes`) → the
//! StatefulSet's own pod is Ready on the migrated data, runs as the pod's user, and its
//! Prometheus answers like the source did.
//!
//! The `#[ignore]`d `downtime_end_to_end` is the same flow on 1 GiB of real blocks with
//! timings, for `scripts/bench-downtime.sh` (no timing is asserted).

mod common;

use common::node::{TestNode, static_promigrate};
use common::{FS_GROUP, PromFlavor, PromServer, RUN_AS_USER, Workspace};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Api;
use kube::api::ListParams;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const NS: &str = "e2e";
const STS: &str = "prom";
/// The claim the StatefulSet's volumeClaimTemplate `prometheus-db` gives pod `prom-0`.
const CLAIM: &str = "prometheus-db-prom-0";
const POD: &str = "prom-0";
/// A Thanos shipper file that lists no block as uploaded.
const UPLOADED_NONE: &str = "{\"version\": 1, \"uploaded\": []}\n";

/// The source: Prometheus 3 (the version in the image) scraping itself every second.
fn prom3() -> PromFlavor {
    PromFlavor {
        binary: Some(common::prom3_bin().join("prometheus")),
        ..PromFlavor::default()
    }
}

/// One migration on the node: the source server, the StatefulSet, the plan.
struct Flow {
    node: TestNode,
    ws: Workspace,
    source: PromServer,
    /// The local PV's host directory (checked on the host only, never given to promigrate).
    vol: PathBuf,
}

impl Flow {
    /// Everything before the plan: builds first (the node holds the host-wide lock while it
    /// lives), then the source server, the node, the namespace, PV and claim (`size`), and
    /// the StatefulSet, whose pod is Ready on the still empty claim.
    ///
    /// `hold_compactions`: both servers delay the compaction of level-1 blocks (an empty
    /// `--storage.tsdb.delay-compact-file.path`): the 1 GiB fixture's blocks are copies of
    /// one set, which a Prometheus otherwise merges into about 60 MB within seconds.
    fn start(data: &Path, size: &str, hold_compactions: bool) -> Flow {
        static_promigrate();
        common::prom3_bin();
        let ws = Workspace::from_fixture(data, "");
        let node = TestNode::up();
        node.restricted_namespace(NS);
        let vol = node.volume_dir("prom");
        node.local_volume_sized("pv-prom", &vol, NS, CLAIM, size);
        node.create(
            Api::<ConfigMap>::namespaced(node.client.clone(), NS),
            json!({"metadata": {"name": "prom-config"}, "data": {"prometheus.yml":
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: target\n    static_configs:\n      - targets: ['127.0.0.1:9090']\n",
                "uploaded.json": UPLOADED_NONE}}),
        );
        node.create(
            Api::<StatefulSet>::namespaced(node.client.clone(), NS),
            statefulset(&node, hold_compactions),
        );
        wait_ready(&node, None, Duration::from_secs(120));
        // The source starts last: about a minute after its start a Prometheus compacts
        // (the 1 GiB fixture's blocks overlap), which the flow should not wait for.
        let mut flavor = prom3();
        if hold_compactions {
            let uploaded = ws.dir.path().join("uploaded.json");
            std::fs::write(&uploaded, UPLOADED_NONE).unwrap();
            flavor.flags.push(format!(
                "--storage.tsdb.delay-compact-file.path={}",
                uploaded.display()
            ));
        }
        let source = PromServer::start_scraping_flavor(
            &flavor,
            &ws.source,
            &ws.dir.path().join("source-server"),
            "",
        );
        let flow = Flow {
            node,
            ws,
            source,
            vol,
        };
        flow.write_plan();
        flow
    }

    /// The plan: the StatefulSet and its claim, no `path` (a receiver pod), no receiver
    /// image or node (derived), no persistentVolume or securityContext (derived from the
    /// claim and the StatefulSet).
    fn write_plan(&self) {
        std::fs::write(
            &self.ws.plan,
            format!(
                "apiVersion: promigrate/v1
kind: Migration
metadata:
  name: e2e
source:
  path: {}
target:
  subPath: prometheus-db
  kubernetes:
    kubeconfig: {}
    namespace: {NS}
    persistentVolumeClaim: {CLAIM}
    statefulSet: {STS}
    waitTimeout: 120s
transfer:
  parallelism: 4
",
                self.ws.source.display(),
                self.node.kubeconfig.display()
            ),
        )
        .unwrap();
    }

    /// promigrate with the static binary to upload; stdout and stderr are also printed.
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let mut c = self.ws.cmd(args);
        c.env("PROMIGRATE_RECEIVER_BINARY", static_promigrate());
        let (code, out, err) = common::run(c);
        eprintln!(
            "--- promigrate {} (exit {code}) ---\n{out}\n{err}",
            args.join(" ")
        );
        (code, out, err)
    }

    fn wait_ready(&self, not_uid: Option<&str>, timeout: Duration) -> Pod {
        wait_ready(&self.node, not_uid, timeout)
    }

    /// `wget` of the target Prometheus's HTTP API inside its pod (pod IPs cannot be reached
    /// from the host here); the `data` of a successful answer.
    fn api_in_pod(&self, path: &str, params: &[(&str, String)]) -> serde_json::Value {
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{k}={}", percent(v)))
            .collect();
        let url = format!("http://127.0.0.1:9090/api/v1/{path}?{}", query.join("&"));
        let out = self.node.exec(NS, POD, &["wget", "-qO-", &url], None);
        assert!(
            out.status.success(),
            "wget {url} in {POD}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{url}: {e}: {}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!(v["status"], "success", "{url}: {v}");
        v["data"].clone()
    }

    /// Receiver pods in the namespace, by promigrate's label.
    fn receiver_pods(&self) -> Vec<String> {
        let pods: Api<Pod> = Api::namespaced(self.node.client.clone(), NS);
        let lp = ListParams::default().labels("app.kubernetes.io/managed-by=promigrate");
        self.node
            .rt
            .block_on(pods.list(&lp))
            .unwrap()
            .items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect()
    }

    fn replicas(&self) -> i32 {
        let api: Api<StatefulSet> = Api::namespaced(self.node.client.clone(), NS);
        let s = self.node.rt.block_on(api.get(STS)).unwrap();
        s.spec.and_then(|s| s.replicas).unwrap_or(1)
    }
}

/// Waits until pod `prom-0` is Ready (one whose uid is not `not_uid`), and returns it; a
/// container that cannot start ends the wait at once.
fn wait_ready(node: &TestNode, not_uid: Option<&str>, timeout: Duration) -> Pod {
    let pods: Api<Pod> = Api::namespaced(node.client.clone(), NS);
    let start = Instant::now();
    loop {
        let p = node.rt.block_on(pods.get_opt(POD)).unwrap();
        if let Some(p) = p.filter(|p| p.metadata.uid.as_deref() != not_uid) {
            let st = p.status.clone().unwrap_or_default();
            let ready = st
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if ready {
                return p;
            }
            let stuck = st.container_statuses.iter().flatten().find_map(|c| {
                let w = c.state.as_ref()?.waiting.as_ref()?;
                let r = w.reason.clone().unwrap_or_default();
                (r != "ContainerCreating").then(|| format!("{r}: {:?}", w.message))
            });
            let ended = st.container_statuses.iter().flatten().find_map(|c| {
                let t = c.last_state.as_ref()?.terminated.as_ref()?;
                Some(format!(
                    "restarted after exit {}: {:?}",
                    t.exit_code, t.message
                ))
            });
            if let Some(why) = stuck.or(ended) {
                dump_pod_logs(node);
                panic!("pod {NS}/{POD}: {why}\n{st:#?}");
            }
        }
        if start.elapsed() > timeout {
            dump_pod_logs(node);
            panic!("pod {NS}/{POD} not Ready after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn dump_pod_logs(node: &TestNode) {
    let out = node
        .kubectl()
        .args(["logs", "-n", NS, POD, "--tail=40"])
        .output()
        .unwrap();
    eprintln!(
        "--- kubectl logs {POD} ---\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// StatefulSet `prom`: one replica of the Prometheus image on this node (`nodeName` set),
/// as the `restricted` profile wants it, uid 1000 / gid and fsGroup 2000, the claim of its
/// template at /prometheus with the TSDB in `prometheus-db`, retention long enough for the
/// fixture's old blocks, a readiness probe by `exec` (the kubelet cannot reach a pod IP in
/// this CNI), scraping itself every second (the ConfigMap).
fn statefulset(node: &TestNode, hold_compactions: bool) -> serde_json::Value {
    let mut args = vec![
        "--config.file=/etc/prometheus/prometheus.yml",
        "--storage.tsdb.path=/prometheus/prometheus-db",
        "--storage.tsdb.retention.time=3650d",
        "--web.listen-address=127.0.0.1:9090",
    ];
    if hold_compactions {
        args.push("--storage.tsdb.delay-compact-file.path=/etc/prometheus/uploaded.json");
    }
    json!({
        "metadata": {"name": STS},
        "spec": {
            "replicas": 1,
            "serviceName": STS,
            "selector": {"matchLabels": {"app": STS}},
            "template": {
                "metadata": {"labels": {"app": STS}},
                "spec": {
                    "nodeName": node.name(),
                    "terminationGracePeriodSeconds": 30,
                    "automountServiceAccountToken": false,
                    "securityContext": {
                        "runAsNonRoot": true, "runAsUser": RUN_AS_USER,
                        "runAsGroup": FS_GROUP, "fsGroup": FS_GROUP,
                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "prometheus",
                        "image": node.prometheus_image(),
                        "imagePullPolicy": "Never",
                        "args": args,
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "capabilities": {"drop": ["ALL"]}},
                        "readinessProbe": {
                            "exec": {"command": ["wget", "-qO", "/dev/null",
                                                 "http://127.0.0.1:9090/-/ready"]},
                            "periodSeconds": 1, "timeoutSeconds": 2},
                        "volumeMounts": [
                            {"name": "prometheus-db", "mountPath": "/prometheus"},
                            {"name": "config", "mountPath": "/etc/prometheus"}]}],
                    "volumes": [{"name": "config", "configMap": {"name": "prom-config"}}]}},
            "volumeClaimTemplates": [{
                "metadata": {"name": "prometheus-db"},
                "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-manual",
                         "resources": {"requests": {"storage": "1Gi"}}}}]}})
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn now_s() -> i64 {
    jiff::Timestamp::now().as_second()
}

#[test]
fn a_statefulset_pod_starts_on_data_migrated_through_a_receiver_and_answers_like_the_source() {
    let flow = Flow::start(common::fixture(), "1Gi", false);
    let first = flow.wait_ready(None, Duration::from_secs(5));
    let first_uid = first.metadata.uid.clone();

    let (code, out, err) = flow.run(&["plan"]);
    assert_eq!(code, 0, "plan: {out}\n{err}");
    assert!(out.contains("receiver pod"), "{out}");
    assert_eq!(flow.receiver_pods(), Vec::<String>::new(), "after plan");

    // Presync while the source runs: the receiver's image and node were derived.
    let (code, out, err) = flow.run(&["apply", "--phase", "presync", "--yes"]);
    assert_eq!(code, 0, "presync: {out}\n{err}");
    let derived = format!(
        "(image {}, node {})",
        flow.node.prometheus_image(),
        flow.node.name()
    );
    assert!(err.contains(&derived), "receiver pod not {derived}: {err}");
    assert_eq!(flow.receiver_pods(), Vec::<String>::new(), "after presync");
    // Run again (after a deadline, or to be sure): nothing left to copy, and the block
    // hashes the first one took are kept for the final phase's verify all the same.
    let (code, out, err) = flow.run(&["apply", "--phase", "presync", "--yes"]);
    assert_eq!(code, 0, "second presync: {out}\n{err}");
    let source = flow.ws.source.clone();
    let block_files = move || -> std::collections::BTreeSet<String> {
        common::files_below(&source)
            .map(|(rel, _)| rel)
            .filter(|rel| promigrate::hash::keeps_across_runs(rel))
            .collect()
    };
    let presynced = block_files();

    // What the source answers for a moment it has fully written (it scrapes every second).
    std::thread::sleep(Duration::from_secs(3));
    let at = now_s() - 2;
    std::thread::sleep(Duration::from_secs(2));
    let (min_s, max_s) = common::time_span(&flow.ws.source);
    let window = at - min_s + 3600;
    let queries = [
        format!("sum(count_over_time(demo_requests_total[{window}s]))"),
        format!("sum by (instance) (count_over_time(demo_temperature_celsius[{window}s]))"),
        format!("max_over_time(demo_requests_total[{window}s])"),
        // The source's own scrapes: the WAL it wrote after the presync, copied by the final.
        format!("count_over_time(up{{job=\"self\"}}[{window}s])"),
        "count by (__name__) ({__name__=~\".+\"})".to_string(),
    ];
    let source_answers: Vec<serde_json::Value> = queries
        .iter()
        .map(|q| common::instant(&flow.source, q, at))
        .collect();
    for (q, a) in queries.iter().zip(&source_answers) {
        assert!(
            !a["result"].as_array().unwrap().is_empty(),
            "the source answers nothing for {q}"
        );
    }
    let range = [
        ("query", "sum(rate(demo_requests_total[5m]))".to_string()),
        ("start", min_s.to_string()),
        ("end", max_s.to_string()),
        ("step", "300".to_string()),
    ];
    let source_range = flow.source.api("query_range", &range);

    // The change window: SIGTERM, then the final phase, which verifies before it scales the
    // StatefulSet back (the runbook's go/no-go with target.kubernetes).
    let mut flow = flow;
    flow.source.stop();
    let (code, out, err) = flow.run(&[
        "apply",
        "--phase",
        "final",
        "--yes",
        "--verify-level",
        "deep",
    ]);
    assert_eq!(code, 0, "final: {out}\n{err}");
    // Its verify read the source's block files no more: their hashes were taken as the
    // presync (an earlier run) copied them, or as this run did; the target is read back.
    // A block the live source wrote after the presync is one this run copied: it counts
    // once, not as a block file and as a copied file.
    let now = block_files();
    let new_since = now.difference(&presynced).count();
    let block_files = now.len();
    let taken: usize = out
        .split_once("(the source side of ")
        .and_then(|(_, rest)| rest.split_once(' '))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no source hashes taken from the copies: {out}"));
    // And the files this phase copied (the WAL and head): "… in N files copied".
    let copied: usize = out
        .lines()
        .find_map(|l| {
            let head = l.split_once(" copied")?.0;
            head.rsplit_once(" in ")?.1.split(' ').next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no copied files count: {out}"));
    assert!(
        block_files > 0 && copied > 0 && taken + new_since == block_files + copied,
        "{taken} source hashes taken, for {block_files} block files ({new_since} new since the presync) and {copied} files copied: {out}"
    );
    let final_out = out;
    assert_eq!(flow.replicas(), 1, "scaled back");
    assert_eq!(flow.receiver_pods(), Vec::<String>::new(), "after final");

    // The StatefulSet's own pod, on the migrated data, as the pod's user.
    let pod = flow.wait_ready(first_uid.as_deref(), Duration::from_secs(120));
    assert_ne!(pod.metadata.uid, first_uid, "a new pod after the scale-up");
    let status = flow.node.exec(NS, POD, &["cat", "/proc/1/status"], None);
    let status = String::from_utf8_lossy(&status.stdout);
    let ids = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no {key} in /proc/1/status: {status}"))
            .split_whitespace()
            .skip(1)
            .map(|n| n.parse::<u32>().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids("Uid:"), vec![RUN_AS_USER; 4], "{status}");
    assert_eq!(ids("Gid:"), vec![FS_GROUP; 4], "{status}");
    let comm = flow.node.exec(NS, POD, &["cat", "/proc/1/comm"], None);
    assert_eq!(String::from_utf8_lossy(&comm.stdout).trim(), "prometheus");

    for (q, want) in queries.iter().zip(&source_answers) {
        let got = flow.api_in_pod("query", &[("query", q.clone()), ("time", at.to_string())]);
        assert_eq!(&got, want, "query differs: {q}");
    }
    assert_eq!(
        flow.api_in_pod("query_range", &range),
        source_range,
        "query_range differs"
    );
    // It ingests: its own scrapes arrive on the migrated TSDB.
    common::cluster::poll(
        "a sample of the target's own scrape",
        Duration::from_secs(60),
        || {
            let d = flow.api_in_pod("query", &[("query", "up{job=\"target\"}".into())]);
            !d["result"].as_array().unwrap().is_empty()
        },
    );
    assert!(flow.vol.join("prometheus-db/lock").exists());

    // Why the runbook makes this final apply the go/no-go: once the new server runs, a
    // verify reports its own WAL as different (exit 1). So apply must not send the reader
    // to `promigrate verify` after it has scaled the StatefulSet back.
    let (code, after, _) = flow.run(&["verify"]);
    assert_eq!(code, 1, "a verify beside the running server: {after}");
    assert!(after.contains("wal/"), "{after}");
    assert_eq!(flow.receiver_pods(), Vec::<String>::new(), "at the end");
    assert!(
        !final_out.contains("Next: promigrate verify") && final_out.contains("Next: cut over."),
        "the final apply already verified and scaled back, yet says: {final_out}"
    );
}

/// Runs promigrate (the static release build, as a real driver would be) and stamps each
/// line of its stderr with the seconds since `t0`; returns the exit code and the lines.
fn run_stamped(flow: &Flow, args: &[&str], t0: Instant) -> (i32, Vec<(f64, String)>) {
    use std::io::BufRead;
    let mut c = std::process::Command::new(static_promigrate());
    c.args(args).arg("-f").arg(&flow.ws.plan);
    c.arg("--state-dir").arg(&flow.ws.state);
    c.env("PROMIGRATE_RECEIVER_BINARY", static_promigrate())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let lines: Vec<(f64, String)> = std::io::BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .map(|l| (t0.elapsed().as_secs_f64(), l))
        .collect();
    let code = child.wait().unwrap().code().unwrap_or(-1);
    for (t, l) in &lines {
        eprintln!("[{t:7.2}] {l}");
    }
    (code, lines)
}

/// When the first line containing `what` was logged (seconds since t0).
fn logged(lines: &[(f64, String)], what: &str) -> f64 {
    lines
        .iter()
        .find(|(_, l)| l.contains(what))
        .unwrap_or_else(|| panic!("no log line with {what:?}"))
        .0
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The downtime as the runbook lives it, on real blocks (`PROMIGRATE_DOWNTIME_DATA`, default
/// the 1 GiB fixture): from the source's SIGTERM through the final phase (copy, deep verify,
/// scale-up) to the StatefulSet's pod Ready and the first sample it ingests. Prints one
/// `DOWNTIME key=seconds …` line for scripts/bench-downtime.sh; asserts only that the flow
/// works.
#[test]
#[ignore = "a benchmark: scripts/bench-downtime.sh runs it"]
fn downtime_end_to_end() {
    let data = std::env::var_os("PROMIGRATE_DOWNTIME_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::gib_fixture().to_path_buf());
    let mut flow = Flow::start(&data, "8Gi", true);
    let first_uid = flow.wait_ready(None, Duration::from_secs(5)).metadata.uid;
    let t = Instant::now();
    let (code, _) = run_stamped(&flow, &["apply", "--phase", "presync", "--yes"], t);
    assert_eq!(code, 0, "presync");
    let presync = t.elapsed().as_secs_f64();
    // The source keeps scraping a little after the presync, as in a real window.
    std::thread::sleep(Duration::from_secs(5));
    common::drop_page_cache();

    let (t0, wall0) = (Instant::now(), unix_now());
    flow.source.stop();
    let exited = t0.elapsed().as_secs_f64();
    let (code, lines) = run_stamped(
        &flow,
        &[
            "apply",
            "--phase",
            "final",
            "--yes",
            "--verify-level",
            "deep",
        ],
        t0,
    );
    assert_eq!(code, 0, "final");
    let final_end = t0.elapsed().as_secs_f64();
    let receiver_up = logged(&lines, "apply: copying");
    let copied = logged(&lines, "apply: done");
    let scaled_back = logged(&lines, "back to 1");
    flow.wait_ready(first_uid.as_deref(), Duration::from_secs(300));
    let ready = t0.elapsed().as_secs_f64();
    // The first sample of the target's own scrape (1 s interval), by its own timestamp.
    let mut first_sample = None;
    while first_sample.is_none() {
        let d = flow.api_in_pod("query", &[("query", "up{job=\"target\"}[10m]".into())]);
        first_sample = d["result"][0]["values"][0][0].as_f64();
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "no sample ingested"
        );
    }
    let first_sample = first_sample.unwrap() - wall0;
    let bytes: u64 = common::files_below(&flow.ws.source)
        .map(|(_, e)| e.metadata().unwrap().len())
        .sum();
    println!(
        "DOWNTIME source_gib={:.2} presync={presync:.2} sigterm_to_exit={exited:.2} final_start_to_copy={:.2} final_copy={:.2} final_verify_and_scale={:.2} final_total={:.2} scale_to_ready={:.2} ready_to_first_sample={:.2} total={:.2}",
        bytes as f64 / (1u64 << 30) as f64,
        receiver_up - exited,
        copied - receiver_up,
        scaled_back - copied,
        final_end - exited,
        ready - scaled_back,
        first_sample - ready,
        first_sample,
    );
}
