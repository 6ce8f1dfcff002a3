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
    /// Set when it serves HTTPS with basic auth.
    tls: Option<Tls>,
}

/// What an HTTPS Pushgateway was given: a CA and a server certificate for 127.0.0.1 made by
/// openssl, and one basic-auth user (`promigrate`) whose bcrypt hash htpasswd made.
struct Tls {
    dir: tempfile::TempDir,
    password: String,
}

impl Tls {
    const USER: &str = "promigrate";

    fn new(password: &str) -> Tls {
        let dir = tempfile::tempdir().unwrap();
        let sh = |script: &str| {
            let out = Command::new("bash")
                .arg("-ec")
                .arg(script)
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{script}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
              -keyout ca.key -out ca.pem -days 2 -subj /CN=promigrate-test-ca \
              -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
              -keyout server.key -out server.csr -subj /CN=127.0.0.1 2>/dev/null
            printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > ext
            openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
              -out server.pem -days 2 -extfile ext 2>/dev/null");
        // htpasswd (apache2-utils; see scripts/deps.sh) reads the password on stdin.
        let mut c = Command::new("htpasswd");
        c.args(["-niB", "-C", "4", Tls::USER])
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = c
            .spawn()
            .expect("htpasswd (apache2-utils; see scripts/deps.sh)");
        use std::io::Write;
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let line = String::from_utf8(out.stdout).unwrap();
        let hash = line.trim().split_once(':').unwrap().1.to_string();
        std::fs::write(
            dir.path().join("web.yml"),
            format!(
                "tls_server_config:\n  cert_file: {d}/server.pem\n  key_file: {d}/server.key\n\
                 basic_auth_users:\n  {}: '{hash}'\n",
                Tls::USER,
                d = dir.path().display()
            ),
        )
        .unwrap();
        Tls {
            dir,
            password: password.to_string(),
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

impl Pushgateway {
    fn start() -> Pushgateway {
        Self::spawn(None)
    }

    /// A Pushgateway serving HTTPS, with basic auth, from its `--web.config.file`.
    fn start_tls(password: &str) -> Pushgateway {
        Self::spawn(Some(Tls::new(password)))
    }

    fn spawn(tls: Option<Tls>) -> Pushgateway {
        let port = free_port();
        let mut c = Command::new("prometheus-pushgateway");
        c.arg(format!("--web.listen-address=127.0.0.1:{port}"));
        if let Some(t) = &tls {
            c.arg(format!(
                "--web.config.file={}",
                t.dir.path().join("web.yml").display()
            ));
        }
        let child = c
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus-pushgateway (Debian package; see scripts/deps.sh)");
        let pg = Pushgateway { port, child, tls };
        let start = Instant::now();
        while let Err(e) = pg.get("/-/ready") {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "pushgateway not ready: {e}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pg
    }

    fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// GET `path`: with ureq over HTTP, with curl (trusting the test CA, with the basic-auth
    /// user) over HTTPS.
    fn get(&self, path: &str) -> Result<String, String> {
        let url = format!("{}{path}", self.url());
        match &self.tls {
            None => ureq::get(&url)
                .call()
                .map_err(|e| e.to_string())?
                .body_mut()
                .read_to_string()
                .map_err(|e| e.to_string()),
            Some(t) => {
                let out = Command::new("curl")
                    .args(["-sS", "--fail", "--max-time", "5", "--cacert"])
                    .arg(t.ca())
                    .arg("--user")
                    .arg(format!("{}:{}", Tls::USER, t.password))
                    .arg(&url)
                    .output()
                    .map_err(|e| e.to_string())?;
                if out.status.success() {
                    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
                } else {
                    Err(String::from_utf8_lossy(&out.stderr).into_owned())
                }
            }
        }
    }

    /// Every promigrate sample the Pushgateway serves: (name, command label) → value.
    fn samples(&self) -> BTreeMap<(String, String), f64> {
        let text = self.get("/metrics").unwrap();
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
    let total = only(&plan)["stats"]["copy_bytes"].as_u64().unwrap();
    let files = only(&plan)["stats"]["copy_files"].as_u64().unwrap();

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

/// Every file below `dir`, read as text (lossily).
fn all_text_below(dir: &Path) -> String {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()).into_owned())
        .collect()
}

/// Asserts that no 12-character piece of `secret` is in `text`: ureq's trace log dumps the
/// request 16 bytes a row, so a whole secret would show up only in pieces.
fn assert_not_in(text: &str, secret: &str, what: &str) {
    let chars: Vec<char> = secret.chars().collect();
    for w in chars.windows(12.min(chars.len())) {
        let piece: String = w.iter().collect();
        assert!(!text.contains(&piece), "{what} holds `{piece}` of a secret");
    }
}

fn pushgateway_report(url: &str, more: &str) -> String {
    format!("report:\n  pushgateway:\n    url: {url}\n{more}")
}

#[test]
fn an_https_pushgateway_with_basic_auth_gets_the_metrics_and_never_sees_the_password_logged() {
    use base64::Engine;
    let password = "correct-horse-battery-staple-42";
    let pg = Pushgateway::start_tls(password);
    let tls = pg.tls.as_ref().unwrap();
    let ws = Workspace::new();
    // Relative paths: next to the plan file. The password file ends with a newline, as an
    // editor or `echo` leaves it.
    std::fs::copy(tls.ca(), ws.dir.path().join("gateway-ca.pem")).unwrap();
    std::fs::create_dir(ws.dir.path().join("secrets")).unwrap();
    std::fs::write(ws.dir.path().join("secrets/pw"), format!("{password}\n")).unwrap();
    let auth = "    caFile: gateway-ca.pem\n    basicAuth:\n      username: promigrate\n      passwordFile: secrets/pw\n";
    ws.write_plan(&pushgateway_report(&pg.url(), auth));

    let (code, out, err) = ws.run(&["apply", "--yes", "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("could not push"), "{err}");
    // Every log line ureq and rustls have, wire dumps included.
    let mut verify = ws.cmd(&["verify", "--output", "json"]);
    verify.env("RUST_LOG", "trace");
    let (vcode, vout, verr) = run(verify);
    assert_eq!(vcode, 0, "{verr}");
    assert!(!verr.contains("could not push"), "{verr}");
    let s = pg.samples();
    assert_eq!(get(&s, "promigrate_last_run_success", "apply"), Some(1.0));
    assert_eq!(get(&s, "promigrate_last_run_success", "verify"), Some(1.0));
    assert_eq!(
        get(&s, "promigrate_verify_differences", "verify"),
        Some(0.0)
    );

    let header = base64::engine::general_purpose::STANDARD.encode(format!("promigrate:{password}"));
    let records = all_text_below(&ws.state);
    assert!(records.contains("\"verify\""), "no run records: {records}");
    for (what, text) in [
        ("apply stdout", &out),
        ("apply stderr", &err),
        ("verify stdout", &vout),
        ("verify stderr", &verr),
        ("the run records", &records),
    ] {
        assert_not_in(text, password, what);
        assert_not_in(text, &header, what);
    }
}

#[test]
fn an_https_pushgateway_refusing_the_password_or_the_certificate_gives_a_warning_only() {
    let pg = Pushgateway::start_tls("the-right-password");
    let tls = pg.tls.as_ref().unwrap();
    let ws = Workspace::new();
    let wrong = "a-wrong-password-of-some-length";
    std::fs::write(ws.dir.path().join("pw"), wrong).unwrap();
    let ca = tls.ca().display().to_string();
    let auth = |ca_line: &str| {
        format!("{ca_line}    basicAuth:\n      username: promigrate\n      passwordFile: pw\n")
    };

    // A wrong password: the gateway says 401, the run is not affected, nothing is pushed.
    ws.write_plan(&pushgateway_report(
        &pg.url(),
        &auth(&format!("    caFile: {ca}\n")),
    ));
    let (code, out, err) = ws.run(&["apply", "--yes", "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("could not push metrics"), "{err}");
    assert!(err.contains("401"), "{err}");
    for (what, text) in [
        ("stdout", &out),
        ("stderr", &err),
        ("the run records", &all_text_below(&ws.state)),
    ] {
        assert_not_in(text, wrong, what);
    }
    assert!(pg.samples().is_empty(), "pushed with a wrong password");

    // No caFile: the test CA is in no trust store, so TLS fails, and the warning says why.
    ws.write_plan(&pushgateway_report(&pg.url(), &auth("")));
    let (code, _, err) = ws.run(&["verify"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("could not push metrics"), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(
        pg.samples().is_empty(),
        "pushed over an unverified connection"
    );

    // A password file that is not there: the plan file is invalid (exit 2), the field named.
    std::fs::remove_file(ws.dir.path().join("pw")).unwrap();
    let (code, _, err) = ws.run(&["verify"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("report.pushgateway.basicAuth.passwordFile"),
        "{err}"
    );
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
    // The exit codes are a list, one item per code.
    for code in 0..=3 {
        assert!(man.contains(&format!(".TP\n\\fB{code}\\fR\n")), "{man}");
    }
    assert!(!man.contains("Exit codes:"), "not one block of text: {man}");
    // Every page the main page refers to exists: `promigrate man COMMAND`.
    let referred: Vec<String> = man
        .lines()
        .filter_map(|l| l.strip_prefix("promigrate\\-"))
        .filter_map(|l| l.strip_suffix("(1)"))
        .map(String::from)
        .collect();
    assert!(referred.len() >= 4, "{man}");
    for name in &referred {
        let (code, page, err) = run({
            let mut c = promigrate();
            c.args(["man", name]);
            c
        });
        assert_eq!(code, 0, "{name}: {err}");
        assert!(
            page.contains(&format!(".TH promigrate-{name} 1")),
            "{name}: {page}"
        );
        assert!(page.contains(".SH \"EXIT STATUS\""), "{name}: {page}");
    }
    let (_, page, _) = run({
        let mut c = promigrate();
        c.args(["man", "apply"]);
        c
    });
    assert!(page.contains(".SH EXAMPLES"), "{page}");
    // A hidden command (the receiver's) has no page: refused like an unknown one.
    let (code, page, err) = run({
        let mut c = promigrate();
        c.args(["man", "receive"]);
        c
    });
    assert_eq!(code, 2, "{page}");
    assert!(err.contains("no command \"receive\""), "{err}");
    // And each command's --help ends with examples, then the exit codes.
    for cmd in ["plan", "apply", "verify", "inspect"] {
        let (code, out, _) = run({
            let mut c = promigrate();
            c.args([cmd, "--help"]);
            c
        });
        assert_eq!(code, 0);
        let ex = out
            .find("Examples:")
            .unwrap_or_else(|| panic!("{cmd}: {out}"));
        let codes = out.find("Exit codes:").unwrap();
        assert!(ex < codes, "{cmd}: {out}");
        assert!(
            out[ex..codes]
                .matches(&format!("promigrate {cmd} "))
                .count()
                >= 2,
            "{cmd}: {out}"
        );
    }
}

fn yaml_to_json(text: &str) -> serde_json::Value {
    serde_saphyr::from_str(text).unwrap()
}

/// `promigrate schema`, parsed.
fn schema() -> serde_json::Value {
    let (code, schema, _) = run({
        let mut c = promigrate();
        c.arg("schema");
        c
    });
    assert_eq!(code, 0);
    serde_json::from_str(&schema).unwrap()
}

#[test]
fn every_example_validates_against_the_emitted_schema() {
    let schema = schema();
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

#[test]
fn works_as_a_kubectl_plugin() {
    let kubectl = common::cluster::kube_bin().join("kubectl");
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

/// Every field of the plan file's schema (what the parser accepts) has a row in the field
/// table of docs/plan-file.md, and every row names a field the schema has: the reference
/// cannot drift from the code. A row may name several fields (`source.ssh.host`, `.user`);
/// an object is documented by its fields; `targets` has the fields of `target`.
#[test]
fn the_plan_file_reference_documents_every_schema_field() {
    let schema = schema();
    fn walk(
        node: &serde_json::Value,
        defs: &serde_json::Value,
        prefix: &str,
        out: &mut std::collections::BTreeSet<String>,
    ) {
        if let Some(r) = node["$ref"].as_str() {
            walk(&defs[r.rsplit('/').next().unwrap()], defs, prefix, out);
        }
        for k in ["anyOf", "oneOf", "allOf"] {
            for n in node[k].as_array().into_iter().flatten() {
                walk(n, defs, prefix, out);
            }
        }
        if node["items"].is_object() {
            walk(&node["items"], defs, prefix, out);
        }
        for (k, v) in node["properties"].as_object().into_iter().flatten() {
            let p = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            walk(v, defs, &p, out);
            out.insert(p);
        }
    }
    let mut fields = std::collections::BTreeSet::new();
    walk(&schema, &schema["$defs"], "", &mut fields);
    assert!(fields.len() > 40, "{fields:?}");

    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/plan-file.md"))
            .unwrap();
    let mut rows = std::collections::BTreeSet::new();
    for line in doc.lines().filter(|l| l.starts_with("| `")) {
        let cell = line.split('|').nth(1).unwrap();
        let mut base = String::new();
        for code in cell.split('`').skip(1).step_by(2) {
            if let Some(rest) = code.strip_prefix('.') {
                let parent = base.rsplit_once('.').map_or("", |(p, _)| p);
                rows.insert(format!("{parent}.{rest}"));
            } else {
                base = code.to_string();
                rows.insert(base.clone());
            }
        }
    }
    let documented = |f: &str| {
        let f = f
            .strip_prefix("targets.")
            .map_or(f.to_string(), |r| format!("target.{r}"));
        rows.contains(&f) || rows.iter().any(|r| r.starts_with(&format!("{f}.")))
    };
    let missing: Vec<&String> = fields.iter().filter(|f| !documented(f)).collect();
    assert!(
        missing.is_empty(),
        "fields without a row in docs/plan-file.md: {missing:?}"
    );
    let stale: Vec<&String> = rows.iter().filter(|r| !fields.contains(*r)).collect();
    assert!(
        stale.is_empty(),
        "rows of docs/plan-file.md naming no field: {stale:?}"
    );
}

#[test]
fn a_closed_pipe_is_no_panic_for_the_generators() {
    // `promigrate schema | head -1` and the like: the reader goes before the output is
    // written.
    for args in [&["completions", "bash"][..], &["schema"], &["man"]] {
        let mut child = promigrate()
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
