//! Pushgateway metrics against a real Pushgateway (Debian's prometheus-pushgateway on
//! 127.0.0.1), shell completions, the man page, the plan JSON Schema against every example,
//! and the kubectl plugin through a real kubectl.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Pushgateway {
    port: u16,
    child: Child,
}

impl Pushgateway {
    fn start() -> Pushgateway {
        let port = free_port();
        let child = Command::new("prometheus-pushgateway")
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus-pushgateway (Debian package; see scripts/deps.sh)");
        let pg = Pushgateway { port, child };
        let start = Instant::now();
        while ureq::get(&format!("{}/-/ready", pg.url())).call().is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "pushgateway not ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pg
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every promigrate sample the Pushgateway serves: (name, command label) → value.
    fn samples(&self) -> BTreeMap<(String, String), f64> {
        let text = ureq::get(&format!("{}/metrics", self.url()))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        let mut out = BTreeMap::new();
        for line in text.lines().filter(|l| l.starts_with("promigrate_")) {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = series.split_once('{').unwrap();
            assert!(labels.contains(r#"job="promigrate""#), "{line}");
            assert!(labels.contains(r#"migration="test-migration""#), "{line}");
            let command = labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(r#"command=""#))
                .unwrap()
                .trim_end_matches(['"', '}'])
                .to_string();
            out.insert((name.to_string(), command), value.parse().unwrap());
        }
        out
    }
}

impl Drop for Pushgateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get(s: &BTreeMap<(String, String), f64>, name: &str, command: &str) -> Option<f64> {
    s.get(&(name.to_string(), command.to_string())).copied()
}

#[test]
fn runs_push_their_metrics_and_a_failure_keeps_the_last_success_time() {
    let pg = Pushgateway::start();
    let ws = Workspace::new();
    let (_, plan) = ws.run_json(&["plan"]);
    let total = plan["stats"]["copy_bytes"].as_u64().unwrap();
    let files = plan["stats"]["copy_files"].as_u64().unwrap();

    let (code, _, err) = ws.run(&["apply", "--yes", "--pushgateway", &pg.url()]);
    assert_eq!(code, 0, "{err}");
    let s = pg.samples();
    assert_eq!(get(&s, "promigrate_last_run_success", "apply"), Some(1.0));
    assert_eq!(
        get(&s, "promigrate_copied_bytes", "apply"),
        Some(total as f64)
    );
    assert_eq!(
        get(&s, "promigrate_copied_files", "apply"),
        Some(files as f64)
    );
    assert!(get(&s, "promigrate_run_duration_seconds", "apply").unwrap() > 0.0);
    let success_at = get(&s, "promigrate_last_success_timestamp_seconds", "apply").unwrap();
    assert!(success_at > 1.7e9, "{success_at}");

    // A failed verify: a flipped byte on the target.
    let chunk = some_block(&ws.target()).join("chunks/000001");
    flip_byte_keeping_mtime(&chunk, 20);
    let (code, _, _) = ws.run(&["verify", "--pushgateway", &pg.url()]);
    assert_eq!(code, 1);
    let s = pg.samples();
    assert_eq!(get(&s, "promigrate_last_run_success", "verify"), Some(0.0));
    assert_eq!(
        get(&s, "promigrate_verify_differences", "verify"),
        Some(1.0)
    );
    assert_eq!(
        get(&s, "promigrate_last_success_timestamp_seconds", "verify"),
        None
    );
    // The apply's numbers are untouched by the verify's push.
    assert_eq!(get(&s, "promigrate_last_run_success", "apply"), Some(1.0));

    // A failed apply (refused: the source path no longer holds a TSDB) keeps the time of the
    // last successful apply.
    std::thread::sleep(Duration::from_millis(1100));
    let empty = ws.dir.path().join("empty-source");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(
        &ws.plan,
        std::fs::read_to_string(&ws.plan).unwrap().replace(
            &ws.source.display().to_string(),
            &empty.display().to_string(),
        ),
    )
    .unwrap();
    let (code, _, _) = ws.run(&["apply", "--yes", "--pushgateway", &pg.url()]);
    assert_eq!(code, 1);
    let s = pg.samples();
    assert_eq!(get(&s, "promigrate_last_run_success", "apply"), Some(0.0));
    assert_eq!(
        get(&s, "promigrate_last_success_timestamp_seconds", "apply"),
        Some(success_at),
        "a failure must not erase the last success time"
    );
    assert!(get(&s, "promigrate_last_run_timestamp_seconds", "apply").unwrap() > success_at);
}

#[test]
fn a_pushgateway_that_is_down_does_not_fail_the_run() {
    let ws = Workspace::new();
    let dead = format!("http://127.0.0.1:{}", free_port());
    // From the plan file this time (`report` follows `transfer` at the top level).
    ws.write_plan(&format!("report:\n  pushgateway:\n    url: {dead}\n"));
    let (code, _, err) = ws.run(&["apply", "--yes"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("could not push metrics"), "{err}");
    assert!(err.contains(&dead), "{err}");
}

#[test]
fn completions_and_man_page_generate() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = run({
            let mut c = promigrate();
            c.args(["completions", shell]);
            c
        });
        assert_eq!(code, 0, "{err}");
        for word in ["apply", "verify", "bwlimit", "phase"] {
            assert!(out.contains(word), "{shell} completion lacks {word}");
        }
    }
    // The bash script is valid bash.
    let (_, script, _) = run({
        let mut c = promigrate();
        c.args(["completions", "bash"]);
        c
    });
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("c.bash"), script).unwrap();
    let st = Command::new("bash")
        .arg("-n")
        .arg(d.path().join("c.bash"))
        .status()
        .unwrap();
    assert!(st.success());
    let (code, man, _) = run({
        let mut c = promigrate();
        c.arg("man");
        c
    });
    assert_eq!(code, 0);
    assert!(
        man.starts_with(".ie") || man.contains(".TH promigrate"),
        "{man}"
    );
}

fn yaml_to_json(text: &str) -> serde_json::Value {
    serde_saphyr::from_str(text).unwrap()
}

#[test]
fn every_example_validates_against_the_emitted_schema() {
    let (code, schema, _) = run({
        let mut c = promigrate();
        c.arg("schema");
        c
    });
    assert_eq!(code, 0);
    let schema: serde_json::Value = serde_json::from_str(&schema).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            let doc = yaml_to_json(&std::fs::read_to_string(&p).unwrap());
            let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{}: {errors:?}", p.display());
            n += 1;
        }
    }
    assert!(n >= 4, "examples/ holds {n} plans");
    // It rejects what the parser rejects: an unknown field, a wrong apiVersion.
    let good = std::fs::read_to_string(dir.join("minimal.yaml")).unwrap();
    for bad in [
        good.replace("kind: Migration", "kind: Migration\nbogus: 1"),
        good.replace("promigrate/v1", "promigrate/v2"),
    ] {
        assert!(!validator.is_valid(&yaml_to_json(&bad)), "{bad}");
    }
}

/// The kubectl built with the test control plane (`scripts/test-cluster.sh build`).
fn kubectl() -> PathBuf {
    let out = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test-cluster.sh"))
        .arg("build")
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "scripts/test-cluster.sh build failed");
    let bin = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(bin.lines().last().unwrap().trim()).join("kubectl")
}

#[test]
fn works_as_a_kubectl_plugin() {
    let kubectl = kubectl();
    let d = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_promigrate"),
        d.path().join("kubectl-promigrate"),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        d.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run_kubectl = |args: &[&str]| {
        let out = Command::new(&kubectl)
            .args(args)
            .env("PATH", &path)
            .env("KUBECONFIG", d.path().join("none"))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, list) = run_kubectl(&["plugin", "list"]);
    assert!(list.contains("kubectl-promigrate"), "{code:?} {list}");
    let (code, help) = run_kubectl(&["promigrate", "--help"]);
    assert_eq!(code, Some(0), "{help}");
    assert!(help.contains("Usage: kubectl promigrate"), "{help}");
    // A real command through kubectl: plan of a real TSDB.
    let ws = Workspace::new();
    let (code, plan) = run_kubectl(&["promigrate", "plan", "-f", ws.plan.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{plan}");
    assert!(plan.contains("Migration plan: test-migration"), "{plan}");
}
