//! Which Prometheus wrote the source (`source_version` in `plan`'s report), against real
//! servers: Debian's 2.42 (`prometheus` on PATH) and 3.16 (scripts/prometheus3.sh, not on
//! PATH, so only its running process can tell 3.16). The SSH source's detection is tested in
//! tests/ssh.rs, beside its sshd.

mod common;

use common::fake_prometheus::{Fake, build_fake, last_segment};
use common::*;

/// Adds `lines` (indented fields of `source:`) to the workspace plan.
fn add_source_fields(ws: &Workspace, lines: &str) {
    let plan = std::fs::read_to_string(&ws.plan).unwrap();
    let at = format!("source:\n  path: {}\n", ws.source.display());
    assert!(plan.contains(&at), "plan template changed");
    std::fs::write(&ws.plan, plan.replace(&at, &format!("{at}{lines}"))).unwrap();
}

/// `plan --output json`'s `source_version`, and the plan's text line about it.
fn planned_version(ws: &Workspace) -> (serde_json::Value, String) {
    let (code, v) = ws.run_json(&["plan"]);
    assert_eq!(code, 0, "{v}");
    let (_, text, _) = ws.run(&["plan"]);
    let line = text
        .lines()
        .find(|l| l.starts_with("Source version: "))
        .unwrap_or_else(|| panic!("no version line: {text}"))
        .to_string();
    (only(&v)["source_version"].clone(), line)
}

fn prom3_server() -> PromFlavor {
    PromFlavor {
        binary: Some(prom3_bin().join("prometheus")),
        ..PromFlavor::default()
    }
}

#[test]
fn a_running_2_42_source_is_asked_through_its_own_binary_as_its_own_user() {
    let ws = Workspace::new();
    chown_tree(&ws.source, (RUN_AS_USER, FS_GROUP));
    let server = PromServer::start(
        &ws.source,
        &ws.dir.path().join("prom"),
        Some((RUN_AS_USER, FS_GROUP)),
    );
    let (sv, line) = planned_version(&ws);
    drop(server);
    assert_eq!(sv["version"], "2.42.0", "{sv}");
    assert_eq!(sv["via"], "running_binary", "{sv}");
    let how = sv["how"].as_str().unwrap();
    assert!(how.contains("/proc/") && how.contains("/exe"), "{how}");
    assert_eq!(sv["tried"], serde_json::json!([]), "{sv}");
    assert!(
        line.starts_with("Source version: Prometheus 2.42.0 (from the running server's binary"),
        "{line}"
    );
}

#[test]
fn a_running_3_16_is_asked_through_its_proc_exe_and_the_plan_field_wins_over_it() {
    let ws = Workspace::new();
    let server = PromServer::start_flavor(
        &prom3_server(),
        &ws.source,
        &ws.dir.path().join("prom"),
        None,
    );
    // The library call the plan makes: 3.16 is only on the process (PATH has 2.42).
    let m = promigrate::plan::file::load(&ws.plan, &promigrate::plan::file::offline).unwrap();
    let sv = promigrate::promversion::detect_source_version(&m.src, &m.source_server);
    assert_eq!(
        sv.version,
        Some(promigrate::promversion::PromVersion::new(3, 16, 0)),
        "{sv:?}"
    );
    assert_eq!(sv.via, promigrate::promversion::Via::RunningBinary);
    let (json, line) = planned_version(&ws);
    assert_eq!(json["version"], "3.16.0", "{json}");
    assert!(line.contains("Prometheus 3.16.0"), "{line}");

    // The plan field is taken as it is, with no command run.
    add_source_fields(&ws, "  prometheusVersion: v3.5.0\n");
    let (json, line) = planned_version(&ws);
    drop(server);
    assert_eq!(json["version"], "3.5.0", "{json}");
    assert_eq!(json["via"], "plan", "{json}");
    assert_eq!(
        line,
        "Source version: Prometheus 3.5.0 (from source.prometheusVersion in the plan)"
    );
}

#[test]
fn with_no_server_on_the_data_the_url_answers_before_path() {
    // A 3.16 runs on another copy; the plan's source is stopped and names its URL.
    let ws = Workspace::new();
    let other = ws.dir.path().join("other");
    copy_tree(fixture(), &other);
    let server =
        PromServer::start_flavor(&prom3_server(), &other, &ws.dir.path().join("prom"), None);
    add_source_fields(&ws, &format!("  prometheusUrl: {}/\n", server.url));
    let (sv, line) = planned_version(&ws);
    drop(server);
    assert_eq!(sv["version"], "3.16.0", "{sv}");
    assert_eq!(sv["via"], "buildinfo", "{sv}");
    let tried = sv["tried"].as_array().unwrap();
    assert_eq!(tried.len(), 1, "{sv}");
    assert!(
        tried[0]
            .as_str()
            .unwrap()
            .contains("no process on this host"),
        "{sv}"
    );
    assert!(line.contains("/api/v1/status/buildinfo"), "{line}");

    // A URL nobody answers on: its error is kept, and PATH's 2.42 answers.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let ws = Workspace::new();
    add_source_fields(&ws, &format!("  prometheusUrl: {closed}\n"));
    let (sv, line) = planned_version(&ws);
    assert_eq!(sv["version"], "2.42.0", "{sv}");
    assert_eq!(sv["via"], "path", "{sv}");
    assert!(sv["tried"][1].as_str().unwrap().contains(&closed), "{sv}");
    assert!(
        line.contains("/usr/bin/prometheus on this host's PATH; not necessarily"),
        "{line}"
    );
}

#[test]
fn nothing_found_is_unknown_with_the_reason_of_each_way() {
    let ws = Workspace::new();
    let empty = tempfile::tempdir().unwrap();
    let mut c = ws.cmd(&["plan", "--output", "json"]);
    c.env("PATH", empty.path());
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let sv = &only(&v)["source_version"];
    assert_eq!(sv["version"], serde_json::Value::Null, "{sv}");
    assert_eq!(sv["via"], "unknown", "{sv}");
    let tried: Vec<&str> = sv["tried"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tried.len(), 3, "{tried:?}");
    assert!(tried[0].contains("no process on this host"), "{tried:?}");
    assert!(
        tried[1].contains("source.prometheusUrl is not set"),
        "{tried:?}"
    );
    assert!(tried[2].contains("no `prometheus` on PATH"), "{tried:?}");
    let mut c = ws.cmd(&["plan"]);
    c.env("PATH", empty.path());
    let (_, text, _) = run(c);
    assert!(
        text.lines()
            .any(|l| l.starts_with("Source version: unknown (")
                && l.ends_with("; set source.prometheusVersion")),
        "{text}"
    );
}

#[test]
fn an_invalid_version_or_url_is_a_plan_file_error_naming_the_field() {
    for (field, value, says) in [
        (
            "prometheusVersion",
            "\"3.5\"",
            "`3.5` is not a Prometheus version",
        ),
        ("prometheusVersion", "latest", "MAJOR.MINOR.PATCH"),
        ("prometheusUrl", "vm1:9090", "http:// or https://"),
    ] {
        let ws = Workspace::new();
        add_source_fields(&ws, &format!("  {field}: {value}\n"));
        let (code, out, err) = ws.run(&["plan"]);
        assert_eq!(code, 2, "{out}\n{err}");
        assert!(
            err.contains(&format!("field `source.{field}`: line 7 column")) && err.contains(says),
            "{err}"
        );
    }
    // The examples' forms parse.
    let ws = Workspace::new();
    add_source_fields(
        &ws,
        "  prometheusVersion: 2.42.0+ds\n  prometheusUrl: https://vm1.example:9090/prom\n",
    );
    let (sv, _) = planned_version(&ws);
    assert_eq!(sv["version"], "2.42.0", "{sv}");
}

/// The only environment a `--version` run gets.
const CLEAN_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn chmod(p: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// What a fake's `--version` wrote (`uid=… euid=…`, then its environment), and takes it away.
fn take_marker(marker: &std::path::Path) -> Option<(u32, Vec<String>)> {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(marker).ok()?.uid();
    let text = std::fs::read_to_string(marker).unwrap();
    std::fs::remove_file(marker).unwrap();
    let mut lines = text.lines().map(str::to_string);
    let ids = lines.next().unwrap_or_default();
    assert_eq!(ids, format!("uid={owner} euid={owner}"), "{text}");
    Some((owner, lines.collect()))
}

/// The review's attack: a user who may write the data directory starts their own
/// `prometheus` on it that makes itself non-dumpable, so that /proc/<pid> belongs to root. Its
/// `--version` runs as that user (the ids of /proc/<pid>/status), with nothing of
/// promigrate's environment. A binary another user could replace is never run as root, even
/// when root runs the server; root's own binary in root's directories is.
#[test]
fn a_server_binary_another_user_could_replace_never_runs_as_root() {
    let ws = Workspace::new();
    chown_tree(&ws.source, (RUN_AS_USER, FS_GROUP));
    let seg = last_segment(&ws.source);
    // The user's own directory and binary.
    let user_dir = ws.dir.path().join("userbin");
    let marker = user_dir.join("marker");
    let bin = build_fake(&user_dir, &marker);
    chown_tree(&user_dir, (RUN_AS_USER, FS_GROUP));
    chmod(&user_dir, 0o755);

    // 1. Non-dumpable, as the user: run as the user, not as root.
    {
        let _fake = Fake::start(&bin, &seg, Some((RUN_AS_USER, FS_GROUP)));
        let (sv, _) = planned_version(&ws);
        assert_eq!(sv["version"], "9.9.9", "{sv}");
        assert_eq!(sv["via"], "running_binary", "{sv}");
    }
    let (uid, env) = take_marker(&marker).expect("the fake's --version ran");
    assert_eq!(uid, RUN_AS_USER, "it ran as uid {uid}");
    assert_eq!(env, [CLEAN_PATH], "its environment");

    // 2. Root runs the user's binary: it is not run as root; PATH's 2.42 answers.
    {
        let _fake = Fake::start(&bin, &seg, None);
        let (sv, line) = planned_version(&ws);
        assert_eq!(sv["via"], "path", "{sv}");
        assert_eq!(sv["version"], "2.42.0", "{sv}");
        let why = sv["tried"][0].as_str().unwrap();
        assert!(
            why.contains(&format!("{} belongs to uid {RUN_AS_USER}", bin.display()))
                && why.contains("not run as root"),
            "{why}"
        );
        assert!(line.contains("Prometheus 2.42.0"), "{line}");
    }
    assert_eq!(take_marker(&marker), None, "the user's binary ran as root");

    // 3. Root's binary, but in a directory the user may write (so may have swapped it).
    let root_bin = build_fake(&ws.dir.path().join("rootbin"), &marker);
    std::fs::copy(&root_bin, &bin).unwrap();
    std::os::unix::fs::chown(&bin, Some(0), Some(0)).unwrap();
    chmod(&bin, 0o755);
    {
        let _fake = Fake::start(&bin, &seg, None);
        let (sv, _) = planned_version(&ws);
        assert_eq!(sv["via"], "path", "{sv}");
        let why = sv["tried"][0].as_str().unwrap();
        assert!(
            why.contains(&format!(
                "{} belongs to uid {RUN_AS_USER}",
                user_dir.display()
            )) && why.contains("not run as root"),
            "{why}"
        );
    }
    assert_eq!(
        take_marker(&marker),
        None,
        "a binary in the user's directory ran as root"
    );

    // 4. Root's binary in root's directories: run as root, still with nothing of our
    // environment.
    {
        let _fake = Fake::start(&root_bin, &seg, None);
        let (sv, _) = planned_version(&ws);
        assert_eq!(sv["version"], "9.9.9", "{sv}");
        assert_eq!(sv["via"], "running_binary", "{sv}");
    }
    let (uid, env) = take_marker(&marker).expect("root's binary ran");
    assert_eq!((uid, env), (0, vec![CLEAN_PATH.to_string()]));
}

/// `prometheus` from PATH: empty and relative entries are skipped (they name the current
/// directory, which anybody may have chosen), and as root the first `prometheus` on PATH
/// runs only if neither it nor a directory above it is another user's or writable by others.
#[test]
fn path_skips_relative_entries_and_never_runs_another_users_binary_as_root() {
    let ws = Workspace::new();
    let cwd = ws.dir.path().join("cwd");
    let cwd_marker = ws.dir.path().join("cwd-marker");
    build_fake(&cwd.join("bin"), &cwd_marker);
    let user_dir = ws.dir.path().join("userbin");
    let user_marker = ws.dir.path().join("user-marker");
    build_fake(&user_dir, &user_marker);
    chown_tree(&user_dir, (RUN_AS_USER, FS_GROUP));
    let root_dir = ws.dir.path().join("rootbin");
    let root_marker = ws.dir.path().join("root-marker");
    build_fake(&root_dir, &root_marker);

    let plan_with_path = |path: String| {
        let mut c = ws.cmd(&["plan", "--output", "json"]);
        c.env("PATH", path).current_dir(&cwd);
        let (code, out, err) = run(c);
        assert_eq!(code, 0, "{out}\n{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        only(&v)["source_version"].clone()
    };
    let sv = plan_with_path(format!(":bin:./bin:{}", user_dir.display()));
    assert_eq!(sv["via"], "unknown", "{sv}");
    let why = sv["tried"][2].as_str().unwrap();
    assert!(
        why.contains(&format!(
            "{}/prometheus belongs to uid {RUN_AS_USER}",
            user_dir.display()
        )) && why.contains("not run as root"),
        "{why}"
    );
    assert!(!cwd_marker.exists(), "a relative PATH entry was used");
    assert!(!user_marker.exists(), "the user's binary ran as root");

    let sv = plan_with_path(format!("bin:{}:{}", root_dir.display(), user_dir.display()));
    assert_eq!(sv["version"], "9.9.9", "{sv}");
    assert_eq!(sv["via"], "path", "{sv}");
    assert!(!cwd_marker.exists(), "a relative PATH entry was used");
    assert!(!user_marker.exists(), "the user's binary ran as root");
    assert_eq!(
        take_marker(&root_marker),
        Some((0, vec![CLEAN_PATH.to_string()]))
    );
}
