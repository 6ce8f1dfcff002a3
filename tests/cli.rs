//! Command-line contract: exit codes, error messages naming the field and line, JSON output
//! with a boolean `ok`, blockers, and that no invalid plan ever writes anything.

mod common;

use common::*;
use std::path::Path;
use std::process::Stdio;

/// Every example plan parses (paths are not resolved: they name production hosts).
#[test]
fn every_example_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            let text = std::fs::read_to_string(&p).unwrap();
            promigrate::plan::file::parse(&text, &p)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 2, "examples/ should hold plans");
}

/// (what is wrong, edit of the plan text, text the message must contain)
const MALFORMED: &[(&str, &str, &str, &str)] = &[
    (
        "wrong apiVersion",
        "apiVersion: promigrate/v1",
        "apiVersion: promigrate/v2",
        "`apiVersion`",
    ),
    ("wrong kind", "kind: Migration", "kind: Backup", "`kind`"),
    (
        "bad name",
        "name: test-migration",
        "name: Test_Migration",
        "`metadata.name`",
    ),
    (
        "unknown top-level field",
        "kind: Migration",
        "kind: Migration\nspec: {}",
        "unknown field `spec`",
    ),
    (
        "unknown transfer field",
        "  parallelism: 4",
        "  parallelism: 4\n  bwlimt: 10M",
        "`transfer.bwlimt`",
    ),
    (
        "bad bwlimit",
        "  parallelism: 4",
        "  parallelism: 4\n  bwlimit: fast",
        "`transfer.bwlimit`",
    ),
    (
        "negative bwlimit",
        "  parallelism: 4",
        "  parallelism: 4\n  bwlimit: -5M",
        "`transfer.bwlimit`",
    ),
    (
        "zero parallelism",
        "parallelism: 4",
        "parallelism: 0",
        "`transfer.parallelism`",
    ),
    (
        "huge parallelism",
        "parallelism: 4",
        "parallelism: 1000",
        "`transfer.parallelism`",
    ),
    (
        "parallelism is text",
        "parallelism: 4",
        "parallelism: many",
        "`transfer.parallelism`",
    ),
    (
        "timeRange reversed",
        "  parallelism: 4",
        "  parallelism: 4\n  timeRange: { min: \"2025-02-01T00:00:00Z\", max: \"2025-01-01T00:00:00Z\" }",
        "`transfer.timeRange`",
    ),
    (
        "timeRange not RFC 3339",
        "  parallelism: 4",
        "  parallelism: 4\n  timeRange: { min: \"yesterday\" }",
        "RFC 3339",
    ),
    (
        "timeRange empty",
        "  parallelism: 4",
        "  parallelism: 4\n  timeRange: {}",
        "`transfer.timeRange`",
    ),
    (
        "negative uid",
        "runAsUser: 1000",
        "runAsUser: -1",
        "`target.securityContext.runAsUser`",
    ),
    (
        "uid is chown's no-change value",
        "runAsUser: 1000",
        "runAsUser: 4294967295",
        "`target.securityContext.runAsUser`",
    ),
    (
        "gid is chown's no-change value",
        "fsGroup: 2000",
        "fsGroup: 4294967295",
        "`target.securityContext.fsGroup`",
    ),
    (
        "uid past 32 bits",
        "runAsUser: 1000",
        "runAsUser: 4294967296",
        "`target.securityContext.runAsUser`",
    ),
    (
        "missing fsGroup",
        "    fsGroup: 2000\n",
        "",
        "missing field `fsGroup`",
    ),
    (
        "missing securityContext",
        "  securityContext:\n    runAsUser: 1000\n    fsGroup: 2000\n",
        "",
        "missing field `securityContext`",
    ),
    (
        "subPath escapes",
        "subPath: prometheus-db",
        "subPath: ../../etc",
        "`target.subPath`",
    ),
    (
        "subPath absolute",
        "subPath: prometheus-db",
        "subPath: /etc",
        "`target.subPath`",
    ),
    (
        "deleteExtraneous not bool",
        "  parallelism: 4",
        "  parallelism: 4\n  deleteExtraneous: maybe",
        "`transfer.deleteExtraneous`",
    ),
    ("not YAML", "kind: Migration", "kind: [Migration", "line"),
    // Issue 18: the parser's words for these, in the plan's terms.
    (
        "uid is a user name",
        "runAsUser: 1000",
        "runAsUser: prometheus",
        "not a numeric uid/gid",
    ),
    (
        "uid is a fraction",
        "runAsUser: 1000",
        "runAsUser: 1000.5",
        "whole number",
    ),
    (
        "the next key indented too far",
        "    fsGroup: 2000",
        "      fsGroup: 2000",
        "indented further than `runAsUser`",
    ),
    (
        "a list given as one value",
        "  parallelism: 4",
        "  parallelism: 4\n  excludeBlocks: 01ABC",
        "`transfer.excludeBlocks` is a list",
    ),
    (
        "a key set twice",
        "  parallelism: 4",
        "  parallelism: 4\n  parallelism: 5",
        "`transfer.parallelism` is set twice, on line 14 and line 15",
    ),
    (
        "source path missing",
        "source:\n  path: ",
        "source:\n  path: /nonexistent",
        "`source.path`",
    ),
    (
        "target path missing",
        "target:\n  path: ",
        "target:\n  path: /nonexistent",
        "`target.path`",
    ),
];

#[test]
fn malformed_plans_exit_2_name_the_field_and_write_nothing() {
    let ws = Workspace::new();
    let good = std::fs::read_to_string(&ws.plan).unwrap();
    for (what, from, to, expect) in MALFORMED {
        assert!(good.contains(from), "{what}: fixture plan lacks {from:?}");
        let bad = good.replacen(from, to, 1);
        std::fs::write(&ws.plan, &bad).unwrap();
        for cmd in ["plan", "apply", "verify"] {
            let args: Vec<&str> = if cmd == "apply" {
                vec![cmd, "--yes"]
            } else {
                vec![cmd]
            };
            let (code, _out, err) = ws.run(&args);
            assert_eq!(code, 2, "{what} ({cmd}): exit {code}\n{err}");
            assert!(
                err.contains(expect),
                "{what} ({cmd}): message lacks {expect:?}:\n{err}"
            );
            assert!(
                err.contains("line "),
                "{what} ({cmd}): no line number:\n{err}"
            );
            assert!(!err.contains("panicked"), "{what}: {err}");
        }
        assert_eq!(
            std::fs::read_dir(&ws.mount).unwrap().count(),
            0,
            "{what}: something was written"
        );
    }
}

#[test]
fn plan_file_errors_after_review() {
    let ws = Workspace::new();
    let good = std::fs::read_to_string(&ws.plan).unwrap();
    // A quoted number is that number, as it always was.
    std::fs::write(
        &ws.plan,
        good.replace("runAsUser: 1000", "runAsUser: \"1000\""),
    )
    .unwrap();
    let (code, out, err) = ws.run(&["plan"]);
    assert_eq!(code, 0, "{out}\n{err}");
    // A uid past 64 bits is named as written.
    std::fs::write(
        &ws.plan,
        good.replace("runAsUser: 1000", "runAsUser: 18446744073709551615"),
    )
    .unwrap();
    let (_, _, err) = ws.run(&["plan"]);
    assert!(
        err.contains("18446744073709551615 is not a Linux uid/gid"),
        "{err}"
    );
    // A flow list over two lines is no "indented too far".
    std::fs::write(
        &ws.plan,
        good.replace(
            "  parallelism: 4",
            "  parallelism: 4\n  excludeBlocks: [BAD,\n    01ARZ3NDEKTSV4RRFFQ69G5FAV]",
        ),
    )
    .unwrap();
    let (code, _, err) = ws.run(&["plan"]);
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains("indented further"), "{err}");
    // The first of a key set twice is looked for in its own list item only.
    let item = |sub: &str| {
        format!(
            "- path: {}\n  subPath: {sub}\n  securityContext: {{ runAsUser: 1000, fsGroup: 2000 }}\n",
            ws.mount.display()
        )
    };
    let two = format!(
        "apiVersion: promigrate/v1\nkind: Migration\nmetadata:\n  name: t\nsource:\n  path: {}\ntargets:\n{}{}",
        ws.source.display(),
        item("one"),
        item("two").replace("  subPath: two\n", "  subPath: two\n  subPath: three\n")
    );
    std::fs::write(&ws.plan, &two).unwrap();
    let (_, _, err) = ws.run(&["plan"]);
    let first = two
        .lines()
        .position(|l| l.contains("subPath: two"))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!("on line {first} and line {}", first + 1)),
        "{two}\n{err}"
    );
    // UTF-16 text is named as such.
    let named_utf16 = |bytes: Vec<u8>, what: &str| {
        std::fs::write(&ws.plan, bytes).unwrap();
        let (code, _, err) = ws.run(&["plan"]);
        assert_eq!(code, 2, "{what}");
        assert!(
            err.contains("UTF-16") && err.contains("save it as UTF-8"),
            "{what}: {err}"
        );
    };
    named_utf16(
        [0xff, 0xfe]
            .into_iter()
            .chain(good.encode_utf16().flat_map(|u| u.to_le_bytes()))
            .collect(),
        "with a byte-order mark",
    );
    // Without the byte-order mark too (big- and little-endian): ASCII in UTF-16 is valid
    // UTF-8 with a NUL every other byte.
    for be in [false, true] {
        // With a non-ASCII comment too (not valid UTF-8 then).
        named_utf16(
            format!("# é\n{good}")
                .encode_utf16()
                .flat_map(|u| if be { u.to_be_bytes() } else { u.to_le_bytes() })
                .collect(),
            &format!("big-endian {be}"),
        );
    }
    // plan --phase without --bwlimit is a usage error, not silently ignored.
    std::fs::write(&ws.plan, &good).unwrap();
    let (code, _, _) = ws.run(&["plan", "--phase", "final"]);
    assert_eq!(code, 2);
}

#[test]
fn an_empty_or_binary_plan_file_is_named_as_such() {
    let ws = Workspace::new();
    for (text, expect) in [
        (&b""[..], "is empty"),
        (&b"  \n# only a comment\n"[..], "is empty (comments only)"),
        (&b"\x00\xff\xfebinary"[..], "is not a text file"),
        // Zeros (a file zero-filled after a crash) are no UTF-16 either.
        (&[0u8; 512][..], "is not a text file"),
    ] {
        std::fs::write(&ws.plan, text).unwrap();
        let (code, _, err) = ws.run(&["plan"]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(expect), "{err}");
        assert!(!err.contains("pass an existing file"), "{err}");
    }
}

#[test]
fn every_missing_path_is_reported_in_one_run() {
    let ws = Workspace::new();
    let good = std::fs::read_to_string(&ws.plan).unwrap();
    let bad = good
        .replacen(
            &format!("path: {}", ws.source.display()),
            "path: /nonexistent/source",
            1,
        )
        .replacen(
            &format!("path: {}", ws.mount.display()),
            "path: /nonexistent/target",
            1,
        );
    assert_ne!(bad, good);
    std::fs::write(&ws.plan, bad).unwrap();
    let (code, _, err) = ws.run(&["plan"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("`source.path`") && err.contains("`target.path`"),
        "both in one run: {err}"
    );
}

#[test]
fn a_home_relative_path_is_expanded() {
    let ws = Workspace::new();
    let good = std::fs::read_to_string(&ws.plan).unwrap();
    // HOME is the workspace: ~/<source's name> is the source.
    let home = ws.source.parent().unwrap();
    let name = ws.source.file_name().unwrap().to_str().unwrap();
    std::fs::write(
        &ws.plan,
        good.replacen(
            &format!("path: {}", ws.source.display()),
            &format!("path: ~/{name}"),
            1,
        ),
    )
    .unwrap();
    let mut c = ws.cmd(&["plan"]);
    c.env("HOME", home);
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains(&ws.source.display().to_string()), "{out}");
}

#[test]
fn the_plan_file_may_be_given_without_f() {
    let ws = Workspace::new();
    let mut c = promigrate();
    c.args(["plan", ws.plan.to_str().unwrap()]);
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{out}\n{err}");
    let mut c = promigrate();
    c.args([
        "plan",
        "-f",
        ws.plan.to_str().unwrap(),
        ws.plan.to_str().unwrap(),
    ]);
    let (code, _, err) = run(c);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn errors_carry_the_line_number() {
    let ws = Workspace::new();
    let good = std::fs::read_to_string(&ws.plan).unwrap();
    std::fs::write(&ws.plan, good.replace("parallelism: 4", "parallelism: 0")).unwrap();
    let (_, _, err) = ws.run(&["plan"]);
    let line = good
        .lines()
        .position(|l| l.contains("parallelism"))
        .unwrap()
        + 1;
    assert!(err.contains(&format!("line {line}")), "{err}");
}

#[test]
fn missing_plan_file_is_usage_error() {
    let (code, _, err) = run({
        let mut c = promigrate();
        c.args(["plan", "-f", "/nonexistent/plan.yaml"]);
        c
    });
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/plan.yaml"), "{err}");
}

#[test]
fn bad_bwlimit_flag_is_usage_error() {
    let ws = Workspace::new();
    let (code, _, err) = ws.run(&["apply", "--yes", "--bwlimit", "lots"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("rsync units"), "{err}");
}

#[test]
fn json_output_has_boolean_ok_for_every_command() {
    let ws = Workspace::new();
    let (code, v) = ws.run_json(&["plan"]);
    assert_eq!((code, v["ok"].as_bool()), (0, Some(true)));
    let (code, v) = ws.run_json(&["verify", "--level", "meta"]);
    assert_eq!(
        (code, v["ok"].as_bool()),
        (1, Some(false)),
        "nothing applied yet: verify must fail"
    );
    let (code, v) = ws.run_json(&["apply", "--yes", "--dry-run"]);
    assert_eq!((code, v["ok"].as_bool()), (0, Some(true)));
    let (code, v) = ws.run_json(&["apply", "--yes"]);
    assert_eq!((code, v["ok"].as_bool()), (0, Some(true)), "{v}");
    let (code, v) = ws.run_json(&["verify"]);
    assert_eq!((code, v["ok"].as_bool()), (0, Some(true)), "{v}");
    let mut c = promigrate();
    c.args(["inspect", "--output", "json"]).arg(&ws.source);
    let (code, out, _) = run(c);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((code, v["ok"].as_bool()), (0, Some(true)));
    // inspect's errors are JSON too.
    let mut c = promigrate();
    c.args(["inspect", "/nonexistent/data", "--output", "json"]);
    let (code, out, _) = run(c);
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!((code, v["ok"].as_bool()), (2, Some(false)));
    // An error is also one JSON document with ok=false.
    std::fs::write(&ws.plan, "kind: [").unwrap();
    let (code, v) = ws.run_json(&["plan"]);
    assert_eq!((code, v["ok"].as_bool()), (2, Some(false)));
    assert!(v["error"].as_str().unwrap().contains("line"));
}

/// The keys every `--output json` document has, and what they must say: `ok`, `exit_code`
/// (the process's), `error` (`null` unless it failed) and `record` (an absolute path to an
/// existing run record, or `null` for a command that keeps none).
fn assert_contract(what: &str, code: i32, v: &serde_json::Value, ok: bool, record: bool) {
    assert_eq!(v["ok"].as_bool(), Some(ok), "{what}: {v}");
    assert_eq!(
        v["exit_code"].as_i64(),
        Some(i64::from(code)),
        "{what}: {v}"
    );
    assert_eq!(
        v["error"].is_string(),
        code >= 2 || (!ok && v["refusal"].is_null() && what.contains("failure")),
        "{what}: error {v}"
    );
    assert!(v.get("record").is_some(), "{what}: no record key: {v}");
    if record {
        let p = std::path::PathBuf::from(
            v["record"]
                .as_str()
                .unwrap_or_else(|| panic!("{what}: {v}")),
        );
        assert!(p.is_absolute() && p.is_file(), "{what}: {}", p.display());
    } else {
        assert!(v["record"].is_null(), "{what}: {v}");
    }
}

#[test]
fn every_command_and_outcome_has_the_same_json_contract() {
    let ws = Workspace::new();
    let (code, v) = ws.run_json(&["plan"]);
    assert_contract("plan, ok", code, &v, true, false);
    let (code, v) = ws.run_json(&["verify", "--level", "meta"]);
    assert_contract("verify, differences", code, &v, false, true);
    let (code, v) = ws.run_json(&["apply", "--yes", "--dry-run"]);
    assert_contract("apply --dry-run", code, &v, true, false);
    let (code, v) = ws.run_json(&["apply", "--yes"]);
    assert_contract("apply, ok", code, &v, true, true);
    let (code, v) = ws.run_json(&["verify"]);
    assert_contract("verify, ok", code, &v, true, true);
    let mut c = promigrate();
    c.args(["inspect", "--output", "json"]).arg(&ws.source);
    let (code, out, _) = run(c);
    assert_contract(
        "inspect, ok",
        code,
        &serde_json::from_str(&out).unwrap(),
        true,
        false,
    );
    // A blocker: apply refuses and says so, with its record.
    let good = std::fs::read_to_string(&ws.plan).unwrap();
    let inside = ws.source.join("inside");
    std::fs::create_dir(&inside).unwrap();
    std::fs::write(
        &ws.plan,
        good.replacen(
            &format!("path: {}", ws.mount.display()),
            &format!("path: {}", inside.display()),
            1,
        ),
    )
    .unwrap();
    let (code, v) = ws.run_json(&["plan"]);
    assert_contract("plan, blocker", code, &v, false, false);
    let (code, v) = ws.run_json(&["apply", "--yes"]);
    assert_contract("apply, blocker", code, &v, false, true);
    assert!(
        v["refusal"]
            .as_str()
            .is_some_and(|r| r.contains("blockers")),
        "a refusal for blockers says so: {v}"
    );
    std::fs::remove_dir(&inside).unwrap();
    // A failure before any report: one document, with the error.
    std::fs::write(&ws.plan, "kind: [").unwrap();
    for cmd in ["plan", "apply", "verify"] {
        let args: Vec<&str> = if cmd == "apply" {
            vec![cmd, "--yes"]
        } else {
            vec![cmd]
        };
        let (code, v) = ws.run_json(&args);
        assert_contract(&format!("{cmd}, failure"), code, &v, false, false);
    }
    // With JSON logs the error the run ends with is a JSON line on stderr too.
    let mut c = ws.cmd(&["plan"]);
    c.args(["--log-format", "json"]);
    let (code, _, err) = run(c);
    assert_eq!(code, 2);
    let last: serde_json::Value = serde_json::from_str(err.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {err}"));
    assert_eq!(last["level"], "ERROR", "{err}");
    assert_eq!(last["exit_code"], 2, "{err}");
    assert!(last["message"].as_str().unwrap().contains("line"), "{err}");
}

#[test]
fn dry_run_writes_nothing() {
    let ws = Workspace::new();
    let (code, out, _) = ws.run(&["apply", "--dry-run"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("Dry run") && out.contains("copy block"),
        "{out}"
    );
    assert_eq!(std::fs::read_dir(&ws.mount).unwrap().count(), 0);
    assert!(!ws.state.exists(), "a dry run keeps no record");
}

/// Issue 16: `apply --dry-run` is apply's own engine with its writes suppressed, so for each
/// phase it lists what that phase does, and nothing else: a presync copies blocks only (no
/// WAL or head file), and the blocks it says it would put in place are those apply then
/// publishes.
#[test]
fn dry_run_lists_what_the_phase_does() {
    let ws = Workspace::new();
    let (code, v) = ws.run_json(&["apply", "--yes", "--dry-run", "--phase", "presync"]);
    assert_eq!(code, 0, "{v}");
    let actions = json_strings(&v["actions"]);
    for dir in ["wal/", "chunks_head/", "wbl/"] {
        assert!(
            !actions.iter().any(|a| a.contains(dir)),
            "a presync copies nothing in {dir}: {actions:#?}"
        );
    }
    assert_eq!(std::fs::read_dir(&ws.mount).unwrap().count(), 0);

    // What it would put in place (renames, below the TSDB directory) is what apply then
    // puts there, phase by phase.
    let root = ws.target();
    let put_in_place = |v: &serde_json::Value| -> std::collections::BTreeSet<String> {
        only(v)["would"]
            .as_array()
            .unwrap_or_else(|| panic!("no operations: {v}"))
            .iter()
            .filter(|o| o["op"] == "rename")
            .map(|o| {
                let to = std::path::Path::new(o["to"].as_str().unwrap());
                to.strip_prefix(&root).unwrap().display().to_string()
            })
            .collect()
    };
    let written = |before: &std::collections::BTreeMap<String, (u64, i128, u64)>| {
        let now = snapshot(&root);
        now.iter()
            .filter(|(rel, v)| before.get(*rel) != Some(v))
            .map(|(rel, _)| {
                // A block is put in place whole: its directory.
                let top = rel.split('/').next().unwrap();
                if top.parse::<ulid::Ulid>().is_ok() {
                    top.to_string()
                } else {
                    rel.clone()
                }
            })
            .collect::<std::collections::BTreeSet<String>>()
    };
    let would = put_in_place(&v);
    assert!(!would.is_empty());
    let (code, a) = ws.run_json(&["apply", "--yes", "--phase", "presync"]);
    assert_eq!(code, 0, "{a}");
    assert_eq!(written(&Default::default()), would);

    let (code, v) = ws.run_json(&["apply", "--yes", "--dry-run", "--phase", "final"]);
    assert_eq!(code, 0, "{v}");
    let would = put_in_place(&v);
    assert!(
        would
            .iter()
            .all(|p| p.starts_with("wal/") || p.starts_with("chunks_head/")),
        "the blocks are there already: {would:?}"
    );
    let before = snapshot(&root);
    let (code, a) = ws.run_json(&["apply", "--yes", "--phase", "final"]);
    assert_eq!(code, 0, "{a}");
    assert_eq!(written(&before), would);
}

/// The dry run on a target an interrupted run and someone else left things on: a block
/// staged whole (kept and put in place), a temp file (removed), a foreign WAL segment with
/// a wrong mode (quarantined, with deleteExtraneous, not fixed), files and a directory with
/// the wrong mode (fixed), a changed segment with the wrong mode (replaced, so not fixed):
/// each listed once, as apply then does it, and nothing written by the dry run itself.
#[test]
fn dry_run_on_a_used_target_lists_what_apply_then_does() {
    use std::os::unix::fs::PermissionsExt;
    let ws = Workspace::with_extra("  deleteExtraneous: true\n");
    let (code, v) = ws.run_json(&["apply", "--yes"]);
    assert_eq!(code, 0, "{v}");
    let t = ws.target();
    let block = only(&v)["plan"]["blocks"][0]["ulid"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::create_dir(t.join(".promigrate-staging")).unwrap();
    std::fs::rename(t.join(&block), t.join(".promigrate-staging").join(&block)).unwrap();
    std::fs::write(t.join("wal/.00000001.promigrate-tmp"), b"partial").unwrap();
    std::fs::write(t.join("wal/00099999"), b"foreign").unwrap();
    let mut changed = std::fs::read(t.join("wal/00000001")).unwrap();
    changed.extend_from_slice(b"more");
    std::fs::write(t.join("wal/00000001"), changed).unwrap();
    for (rel, mode) in [
        ("wal/00000000", 0o600),
        ("wal/00000001", 0o600),
        ("wal/00099999", 0o600),
        ("wal", 0o755),
    ] {
        std::fs::set_permissions(t.join(rel), std::fs::Permissions::from_mode(mode)).unwrap();
    }

    let before = snapshot(&t);
    let (code, dry) = ws.run_json(&["apply", "--yes", "--dry-run"]);
    assert_eq!(code, 0, "{dry}");
    assert_eq!(snapshot(&t), before, "the dry run wrote");
    let ops: Vec<serde_json::Value> = only(&dry)["would"].as_array().unwrap().clone();
    let rel = |p: &serde_json::Value| {
        Path::new(p.as_str().unwrap())
            .strip_prefix(&t)
            .unwrap()
            .display()
            .to_string()
    };
    let of =
        |op: &str| -> Vec<&serde_json::Value> { ops.iter().filter(|o| o["op"] == op).collect() };
    let mut seen = std::collections::BTreeSet::new();
    for o in &ops {
        assert!(seen.insert(o.to_string()), "listed twice: {o}");
    }

    let (code, real) = ws.run_json(&["apply", "--yes"]);
    assert_eq!(code, 0, "{real}");
    let r = &only(&real)["apply"];
    let removed: Vec<String> = of("remove")
        .into_iter()
        .chain(of("remove_tree"))
        .map(|o| rel(&o["path"]))
        .collect();
    assert_eq!(removed, json_strings(&r["cleaned"]), "{ops:#?}");
    assert_eq!(removed, ["wal/.00000001.promigrate-tmp"]);
    let quarantined: Vec<String> = of("rename")
        .into_iter()
        .filter(|o| rel(&o["to"]).starts_with(".promigrate-quarantine/"))
        .map(|o| rel(&o["from"]))
        .collect();
    assert_eq!(quarantined, json_strings(&r["quarantined"]));
    assert_eq!(quarantined, ["wal/00099999"]);
    assert_eq!(
        of("chown").len() as u64,
        r["ownership_fixed"].as_u64().unwrap(),
        "{ops:#?}"
    );
    let chowned: Vec<String> = of("chown").iter().map(|o| rel(&o["path"])).collect();
    for want in ["wal/00000000", "wal"] {
        assert!(chowned.contains(&want.to_string()), "{chowned:?}");
    }
    for not in ["wal/00000001", "wal/00099999"] {
        assert!(!chowned.contains(&not.to_string()), "{not}: {chowned:?}");
    }
    // The staging directory, emptied, goes at the end.
    assert_eq!(
        of("rmdir")
            .iter()
            .map(|o| rel(&o["path"]))
            .collect::<Vec<_>>(),
        [".promigrate-staging"]
    );
    assert!(!t.join(".promigrate-staging").exists());
    // The staged block: kept (nothing written for it) and put in place.
    let staged = format!(".promigrate-staging/{block}");
    assert!(
        of("write")
            .iter()
            .all(|o| !rel(&o["path"]).starts_with(&staged))
    );
    assert!(
        of("rename")
            .iter()
            .any(|o| rel(&o["from"]) == staged && rel(&o["to"]) == block)
    );
    assert_eq!(r["resumed_files"].as_u64().unwrap(), 4);
    assert!(
        json_strings(&dry["actions"])
            .iter()
            .any(|a| a.contains(&block) && a.contains("by an earlier run")),
        "{}",
        dry["actions"]
    );
}

#[test]
fn help_documents_exit_codes() {
    for args in [
        vec!["--help"],
        vec!["apply", "--help"],
        vec!["verify", "--help"],
    ] {
        let mut c = promigrate();
        c.args(&args);
        let (code, out, _) = run(c);
        assert_eq!(code, 0);
        for line in [
            "0  success (no blockers; apply completed; verify found the target equal)",
            "1  findings: plan blockers, verify differences, apply refused (blockers, a running source,\n     or \"no\" at the prompt) or stopped at its --deadline (incomplete; rerun to continue)",
            "2  invalid usage or plan file (including a missing plan file, source path or target mount path)",
            "3  runtime failure: I/O, permission, disk full, interrupted",
        ] {
            assert!(out.contains(line), "{args:?} lacks {line:?}:\n{out}");
        }
    }
}

#[test]
fn target_inside_source_is_a_blocker() {
    let ws = Workspace::new();
    let inner = ws.source.join("nested-target");
    // The source is a private copy; make the mount point inside it.
    std::fs::create_dir(&inner).unwrap();
    std::fs::write(&ws.plan, plan_yaml(&ws.source, &inner, "")).unwrap();
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("BLOCKER") && out.contains("overlap"), "{out}");
    let (code, out, _) = ws.run(&["apply", "--yes"]);
    assert_eq!(code, 1);
    assert!(out.contains("apply refused"), "{out}");
    assert_eq!(std::fs::read_dir(&inner).unwrap().count(), 0);
}

#[test]
fn block_name_must_match_meta_ulid() {
    let ws = Workspace::new();
    let block = some_block(&ws.source);
    let meta = std::fs::read_to_string(block.join("meta.json")).unwrap();
    let name = block.file_name().unwrap().to_str().unwrap().to_string();
    std::fs::write(
        block.join("meta.json"),
        meta.replace(&name, "01ARZ3NDEKTSV4RRFFQ69G5FAV"),
    )
    .unwrap();
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 1);
    assert!(
        out.contains(&name) && out.contains("01ARZ3NDEKTSV4RRFFQ69G5FAV"),
        "{out}"
    );
}

#[test]
fn source_that_is_not_a_tsdb_is_a_blocker() {
    let ws = Workspace::new();
    let empty = ws.dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(&ws.plan, plan_yaml(&empty, &ws.mount, "")).unwrap();
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 1);
    assert!(out.contains("no blocks and no wal/"), "{out}");
}

#[test]
fn not_enough_space_is_a_blocker() {
    let ws = Workspace::new();
    let small = Tmpfs::mount(&ws.mount, "64k");
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not enough space"), "{out}");
    drop(small);
}

#[test]
fn time_range_selects_whole_blocks_and_reports_the_expanded_range() {
    let ws = Workspace::new();
    let (_, all) = ws.run_json(&["plan"]);
    let blocks = only(&all)["blocks"].as_array().unwrap();
    assert!(blocks.len() >= 3);
    // A range inside the second block only, ending before now: one block, no WAL.
    let b = &blocks[1];
    let (bmin, bmax) = (
        b["min_time"].as_i64().unwrap(),
        b["max_time"].as_i64().unwrap(),
    );
    let ts = |ms: i64| jiff::Timestamp::from_millisecond(ms).unwrap().to_string();
    let range = format!(
        "  timeRange: {{ min: \"{}\", max: \"{}\" }}\n",
        ts(bmin + 60_000),
        ts(bmax - 60_000)
    );
    // Leaving blocks and the head data out must be asked for explicitly.
    ws.write_plan(&range);
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "leaves out {} of {} source blocks",
            blocks.len() - 1,
            blocks.len()
        )),
        "{out}"
    );
    assert!(out.contains("transfer.acceptPartialSelection"), "{out}");
    ws.write_plan(&format!("{range}  acceptPartialSelection: true\n"));
    let (code, v) = ws.run_json(&["plan"]);
    assert_eq!(code, 0, "{v}");
    let sel = only(&v)["blocks"].as_array().unwrap();
    assert_eq!(sel.len(), 1);
    assert_eq!(sel[0]["ulid"], b["ulid"]);
    assert_eq!(
        only(&v)["selected_range"],
        serde_json::json!([bmin, bmax]),
        "the expanded range is the whole block"
    );
    assert!(
        only(&v)["files"].as_array().unwrap().is_empty(),
        "no WAL when max is before the newest data"
    );
    assert_eq!(only(&v)["selection"]["blocks_selected"], 1);
    assert_eq!(only(&v)["selection"]["blocks_total"], blocks.len());
    let (_, out, _) = ws.run(&["plan"]);
    assert!(out.contains("whole blocks selected cover"), "{out}");
    assert!(
        out.contains(&format!("1 of {} source blocks selected", blocks.len())),
        "{out}"
    );
}

/// A timeRange that selects nothing (a year typo, an example's range left in) must not give
/// an empty copy and a "go".
#[test]
fn a_time_range_that_selects_nothing_is_a_blocker_and_verify_never_says_ok() {
    let ws = Workspace::new();
    let (_, all) = ws.run_json(&["plan"]);
    let n = only(&all)["blocks"].as_array().unwrap().len();
    let range = "  timeRange: { min: \"2015-05-01T00:00:00Z\", max: \"2015-11-01T00:00:00Z\" }\n";
    ws.write_plan(range);
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("selects no block"), "{out}");
    assert!(
        out.contains("2015-05-01T00:00:00Z"),
        "names the requested range: {out}"
    );
    assert!(
        out.contains("the source's blocks cover"),
        "names the source's range: {out}"
    );
    assert!(
        out.contains(&format!("0 of {n} source blocks selected")),
        "{out}"
    );
    let (code, _, err) = ws.run(&["apply", "--yes"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        std::fs::read_dir(&ws.mount).unwrap().count(),
        0,
        "nothing written"
    );
    let (code, out, _) = ws.run(&["verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(!out.contains("OK"), "{out}");
    // Accepted explicitly, the empty copy still never verifies as OK: nothing was checked.
    ws.write_plan(&format!("{range}  acceptPartialSelection: true\n"));
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 0, "{out}");
    let (code, out, err) = ws.run(&["apply", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("0 of {n} source blocks selected")),
        "{out}"
    );
    let (code, out, _) = ws.run(&["verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no source file was checked"), "{out}");
    assert!(
        out.contains(&format!("0 of {n} source blocks selected")),
        "{out}"
    );
}

/// `timeRange.max` after the newest data keeps the head (WAL, head chunks): nothing is left out.
#[test]
fn a_time_range_ending_in_the_future_keeps_the_head() {
    let ws = Workspace::new();
    let (_, all) = ws.run_json(&["plan"]);
    let n = only(&all)["blocks"].as_array().unwrap().len();
    let files = only(&all)["files"].as_array().unwrap().len();
    assert!(files > 0, "the fixture has head data");
    let max = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24);
    ws.write_plan(&format!("  timeRange: {{ max: \"{max}\" }}\n"));
    let (code, v) = ws.run_json(&["plan"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(only(&v)["files"].as_array().unwrap().len(), files, "{v}");
    assert_eq!(only(&v)["blocks"].as_array().unwrap().len(), n);
    let (code, out, _) = ws.run(&["apply", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("{n} of {n} source blocks selected")),
        "{out}"
    );
    let (code, out, _) = ws.run(&["verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("{n} of {n} source blocks selected")),
        "{out}"
    );
}

#[test]
fn symlinks_on_the_target_are_never_written_through() {
    let ws = Workspace::new();
    let outside = ws.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::create_dir_all(ws.target()).unwrap();
    std::os::unix::fs::symlink(&outside, ws.target().join("wal")).unwrap();
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("symbolic link") && out.contains("/wal"),
        "{out}"
    );
    assert_eq!(ws.run(&["apply", "--yes"]).0, 1);
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "wrote through the link"
    );

    // A subPath that is a link out of the volume.
    std::fs::remove_file(ws.target().join("wal")).unwrap();
    std::fs::remove_dir(ws.target()).unwrap();
    std::os::unix::fs::symlink(&outside, ws.target()).unwrap();
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("outside the volume"), "{out}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
}

/// Regression: a `target.path` that is a symbolic link (to the real mount) got the owner on
/// the link, the real directory stayed root:root 0755 (Prometheus then fails on its lock
/// file), and verify passed. The link is resolved: owner and modes go to the real directory,
/// verify checks it, and the pod's user can run Prometheus on it.
#[test]
fn a_target_path_that_is_a_symlink_is_resolved_and_the_real_directory_owned() {
    use std::os::unix::fs::MetadataExt;
    let ws = Workspace::new();
    let real = ws.dir.path().join("real-pv");
    std::fs::create_dir(&real).unwrap();
    std::fs::remove_dir(&ws.mount).unwrap();
    std::os::unix::fs::symlink(&real, &ws.mount).unwrap();
    // No subPath: the TSDB is the volume's root, which is the link.
    let plan = std::fs::read_to_string(&ws.plan).unwrap();
    std::fs::write(&ws.plan, plan.replace("  subPath: prometheus-db\n", "")).unwrap();
    let (code, out, err) = ws.run(&["apply", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    let md = std::fs::metadata(&real).unwrap();
    assert_eq!(
        (md.uid(), md.gid()),
        (RUN_AS_USER, FS_GROUP),
        "the real directory's owner"
    );
    assert_eq!(
        md.mode() & 0o2070,
        0o2070,
        "the real directory's mode: {:o}",
        md.mode()
    );
    let (code, out, _) = ws.run(&["verify"]);
    assert_eq!(code, 0, "{out}");
    // Prometheus, as the pod's user, starts on it (it creates its lock file there).
    let mut server = PromServer::start(
        &real,
        &ws.dir.path().join("prom"),
        Some((RUN_AS_USER, FS_GROUP)),
    );
    server.stop();

    // A subPath that is a link inside the volume is refused, naming it.
    let ws = Workspace::new();
    std::fs::create_dir(ws.mount.join("data")).unwrap();
    std::os::unix::fs::symlink("data", ws.target()).unwrap();
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("symbolic link"), "{out}");
    assert!(out.contains("prometheus-db"), "{out}");
    assert_eq!(ws.run(&["apply", "--yes"]).0, 1);
    assert_eq!(std::fs::read_dir(ws.mount.join("data")).unwrap().count(), 0);
    let md = std::fs::symlink_metadata(ws.mount.join("data")).unwrap();
    assert_eq!(md.uid(), 0, "nothing was chowned through the link");

    // A link higher up in a longer subPath (found in review: only the last part was checked).
    let ws = Workspace::new();
    std::fs::create_dir(ws.mount.join("data")).unwrap();
    std::os::unix::fs::symlink("data", ws.mount.join("a")).unwrap();
    let plan = std::fs::read_to_string(&ws.plan).unwrap();
    std::fs::write(
        &ws.plan,
        plan.replace("subPath: prometheus-db", "subPath: a/prometheus-db"),
    )
    .unwrap();
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("is a symbolic link"), "{out}");
    assert_eq!(ws.run(&["apply", "--yes"]).0, 1);
    assert_eq!(std::fs::read_dir(ws.mount.join("data")).unwrap().count(), 0);
}

#[test]
fn unwritable_state_dir_fails_before_copying() {
    let ws = Workspace::new();
    let mut c = promigrate();
    c.args([
        "apply",
        "--yes",
        "--state-dir",
        "/proc/promigrate-records",
        "-f",
    ])
    .arg(&ws.plan);
    let (code, _, err) = run(c);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("/proc/promigrate-records") && err.contains("--state-dir"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&ws.mount).unwrap().count(), 0);
}

#[test]
fn permission_problems_name_the_path_and_what_to_do() {
    use std::os::unix::fs::PermissionsExt;
    let ws = Workspace::new();
    // A source the user cannot read.
    std::fs::set_permissions(&ws.source, std::fs::Permissions::from_mode(0o700)).unwrap();
    let (code, _, err) = as_user(&ws, (1000, 1000), &["plan"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains(&ws.source.display().to_string()) && err.contains("may read it"),
        "{err}"
    );

    // A readable source, a writable volume, but ownership for another uid needs root.
    std::fs::set_permissions(&ws.source, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&ws.mount, Some(1000), Some(1000)).unwrap();
    std::os::unix::fs::chown(ws.dir.path(), Some(1000), Some(1000)).unwrap();
    // Not root: other users' processes cannot be inspected, so whether the source runs is
    // unknown and the final phase wants the operator's word.
    let (code, out, _) = as_user(&ws, (1000, 1000), &["apply", "--yes"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("--source-stopped"), "{out}");
    // The plan foresees the chown failing (see tests/preflight.rs): apply refuses before
    // writing, instead of failing at its first chown.
    let (code, out, err) = as_user(&ws, (1000, 1000), &["apply", "--yes", "--source-stopped"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("CAP_CHOWN") && out.contains("run as root") && out.contains("apply refused"),
        "{out}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(std::fs::read_dir(&ws.mount).unwrap().count(), 0);
}

#[test]
fn json_logs_are_one_object_per_line() {
    let ws = Workspace::new();
    let mut c = ws.cmd(&["apply", "--yes"]);
    c.args(["--log-format", "json"]);
    let (code, _, err) = run(c);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "{err}");
    for l in lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{l}");
    }
}

#[test]
fn no_at_the_prompt_writes_nothing_but_a_record() {
    let ws = Workspace::new();
    // `script` gives apply a terminal, so it asks.
    let cmdline = format!(
        "{} apply -f {} --state-dir {}",
        env!("CARGO_BIN_EXE_promigrate"),
        ws.plan.display(),
        ws.state.display()
    );
    let mut c = std::process::Command::new("script");
    c.args(["-qec", &cmdline, "/dev/null"]);
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"n\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Apply this plan to"), "no prompt: {text}");
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("declined at the prompt"), "{text}");
    assert_eq!(
        std::fs::read_dir(&ws.mount).unwrap().count(),
        0,
        "something was written"
    );
    let rec = latest_record(&ws, "apply");
    assert_eq!(rec["exit_code"], 1);
    assert_eq!(rec["report"]["refused"], true);
}

#[test]
fn refused_apply_keeps_a_record_and_one_json_document() {
    let ws = Workspace::new();
    let block = some_block(&ws.source);
    std::fs::write(block.join("meta.json"), b"{ not json").unwrap();
    let name = block.file_name().unwrap().to_string_lossy().into_owned();
    let (code, v) = ws.run_json(&["plan"]);
    assert_eq!(code, 1);
    let blockers = only(&v)["blockers"].to_string();
    assert!(
        blockers.contains(&name) && blockers.contains("meta.json"),
        "unreadable meta.json must block: {v}"
    );
    let (code, v) = ws.run_json(&["apply", "--yes"]);
    assert_eq!(
        (code, v["ok"].as_bool(), v["refused"].as_bool()),
        (1, Some(false), Some(true)),
        "{v}"
    );
    let rec = latest_record(&ws, "apply");
    assert_eq!(rec["exit_code"], 1);
    assert_eq!(std::fs::read_dir(&ws.mount).unwrap().count(), 0);
}

#[test]
fn inspect_exits_1_on_a_bad_meta_json() {
    let ws = Workspace::new();
    let block = some_block(&ws.source);
    std::fs::write(block.join("meta.json"), b"[]").unwrap();
    let mut c = promigrate();
    c.arg("inspect").arg(&ws.source);
    let (code, out, _) = run(c);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("problem:")
            && out.contains(&block.file_name().unwrap().to_string_lossy().to_string()),
        "{out}"
    );
}

#[test]
fn yaml_fraction_bwlimit_is_kib_and_tiny_limits_are_refused() {
    let ws = Workspace::with_extra("  bwlimit: 1.5\n");
    let (code, v) = ws.run_json(&["plan"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(only(&v)["bwlimit"], 1536);
    ws.write_plan("  bwlimit: 0.0001\n");
    let (code, _, err) = ws.run(&["plan"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("below 1 KiB/s") && err.contains("`transfer.bwlimit`"),
        "{err}"
    );
}

/// Runs `apply` under `script` (a terminal), returning the child and a buffer that collects
/// what it prints.
fn apply_on_a_terminal(
    ws: &Workspace,
) -> (
    std::process::Child,
    std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
) {
    let cmdline = format!(
        "exec {} apply -f {} --state-dir {}",
        env!("CARGO_BIN_EXE_promigrate"),
        ws.plan.display(),
        ws.state.display()
    );
    let mut child = std::process::Command::new("script")
        .args(["-qec", &cmdline, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut stdout = child.stdout.take().unwrap();
    let b = buf.clone();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut chunk = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    (child, buf)
}

/// Waits (up to 30 s) until `text()` shows apply's confirmation question.
fn wait_for_prompt(text: &dyn Fn() -> String) {
    let start = std::time::Instant::now();
    while !text().contains("Apply this plan to") {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "no prompt: {}",
            text()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Regression: Ctrl-C at the `[y/N]` prompt was ignored (the stop-at-next-chunk handler was
/// already installed), and a `y` typed afterwards wrote. It must end apply at once.
#[test]
fn ctrl_c_at_the_prompt_ends_apply_with_nothing_written() {
    let ws = Workspace::new();
    let (mut child, buf) = apply_on_a_terminal(&ws);
    let text = || String::from_utf8_lossy(&buf.lock().unwrap()).into_owned();
    wait_for_prompt(&text);
    use std::io::Write;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"\x03").unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let _ = stdin.write_all(b"y\n");
    let _ = stdin.flush();
    let status = ended_within(&mut child, std::time::Duration::from_secs(30), || {
        format!("apply still runs after Ctrl-C at the prompt: {}", text())
    });
    drop(stdin);
    assert_ne!(status.code(), Some(0), "{}", text());
    assert!(!text().contains("Applied"), "{}", text());
    assert_eq!(
        std::fs::read_dir(&ws.mount).unwrap().count(),
        0,
        "something was written: {}",
        text()
    );
}

/// End of input (Ctrl-D) at the prompt is a "no": nothing written, exit 1.
#[test]
fn end_of_input_at_the_prompt_writes_nothing() {
    let ws = Workspace::new();
    let (mut child, buf) = apply_on_a_terminal(&ws);
    let text = || String::from_utf8_lossy(&buf.lock().unwrap()).into_owned();
    wait_for_prompt(&text);
    use std::io::Write;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"\x04").unwrap();
    stdin.flush().unwrap();
    let status = child.wait().unwrap();
    drop(stdin);
    assert_eq!(status.code(), Some(1), "{}", text());
    assert_eq!(
        std::fs::read_dir(&ws.mount).unwrap().count(),
        0,
        "{}",
        text()
    );
}

/// Regression: with no terminal and no --yes, apply went ahead without asking.
#[test]
fn apply_without_a_terminal_needs_yes() {
    let ws = Workspace::new();
    let (code, out, err) = ws.run(&["apply"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("--yes"), "{err}");
    assert_eq!(std::fs::read_dir(&ws.mount).unwrap().count(), 0);
    // A dry run needs no confirmation.
    assert_eq!(ws.run(&["apply", "--dry-run"]).0, 0);
}

/// A deadline shorter than the plan's estimate is said at the start.
#[test]
fn a_deadline_shorter_than_the_estimate_is_warned_about_at_the_start() {
    let ws = Workspace::new();
    let (code, v) = ws.run_json(&["apply", "--yes", "--bwlimit", "8K", "--deadline", "2s"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["incomplete"], true, "{v}");
    let w = v["warnings"].as_array().unwrap();
    assert!(
        w.iter().any(|w| w.as_str().unwrap().contains("--deadline")),
        "{v}"
    );
}

#[test]
fn each_phase_is_estimated_at_its_own_rate_and_plan_takes_bwlimit_and_phase() {
    let ws = Workspace::with_extra("  bwlimit: 64K\n  finalBwlimit: 50M\n");
    let (code, out, err) = ws.run(&["plan"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("at 64.0 KiB/s (transfer.bwlimit)"), "{out}");
    assert!(
        out.contains("Downtime (the final phase's copy): ")
            && out.contains("at 50.0 MiB/s (transfer.finalBwlimit)"),
        "{out}"
    );
    // The runbook's estimate of the downtime at another rate, without editing the plan.
    let (code, out, _) = ws.run(&["plan", "--bwlimit", "10M", "--phase", "final"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("at 10.0 MiB/s (--bwlimit)"), "{out}");
    assert!(
        out.contains("at 64.0 KiB/s (transfer.bwlimit)"),
        "presync stays: {out}"
    );
    let (code, v) = ws.run_json(&["plan"]);
    assert_eq!(code, 0);
    let phases = &only(&v)["phases"];
    assert_eq!(phases["presync"]["rate"]["from"], "transfer.bwlimit", "{v}");
    assert_eq!(
        phases["final"]["rate"]["from"], "transfer.finalBwlimit",
        "{v}"
    );
}

#[test]
fn without_a_limit_the_estimate_is_at_the_rate_the_last_apply_measured() {
    let ws = Workspace::new();
    let (_, out, _) = ws.run(&["plan"]);
    assert!(out.contains("no estimate: no limit set"), "{out}");
    // A run record of an earlier apply that copied 1 GiB in 10 s.
    let dir = ws.state.join("test-migration");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("20261201T000000.000Z-apply.json"),
        r#"{"command": "apply", "started": "2026-12-01T00:00:00Z",
            "report": {"dry_run": false, "targets": [{"apply": {
              "copied_bytes": 1073741824, "duration_seconds": 10.0, "bwlimit": null}}]}}"#,
    )
    .unwrap();
    // A later apply that kept to a limit measured its limit: not taken.
    std::fs::write(
        dir.join("20261202T000000.000Z-apply.json"),
        r#"{"command": "apply", "started": "2026-12-02T00:00:00Z",
            "report": {"dry_run": false, "targets": [{"apply": {
              "copied_bytes": 1073741824, "duration_seconds": 50.0, "bwlimit": 20971520}}]}}"#,
    )
    .unwrap();
    let (code, out, err) = ws.run(&["plan"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("at 102.4 MiB/s (measured by the apply of 2026-12-01T00:00:00Z"),
        "{out}"
    );
}

#[test]
fn the_presync_limit_does_not_throttle_the_downtime_and_apply_says_its_limit() {
    let ws = Workspace::with_extra("  bwlimit: 64K\n");
    let (code, out, err) = ws.run(&["apply", "--yes"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        err.contains("apply: all phase, bandwidth limit none (transfer.finalBwlimit is not set: the downtime is not throttled)"),
        "{err}"
    );
    let (code, out, err) = ws.run(&["apply", "--yes", "--phase", "presync"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        err.contains("apply: presync phase, bandwidth limit 64.0 KiB/s (transfer.bwlimit)"),
        "{err}"
    );
    let (code, out, err) = ws.run(&["apply", "--yes", "--phase", "final", "--bwlimit", "1M"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        err.contains("apply: final phase, bandwidth limit 1.0 MiB/s (--bwlimit)"),
        "{err}"
    );
}

#[test]
fn the_next_steps_are_pasteable_and_a_presync_logs_its_own_file_count() {
    let ws = Workspace::new();
    let (code, out, err) = ws.run(&["apply", "--yes", "--phase", "presync"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let plan = ws.plan.display().to_string();
    let state = ws.state.display().to_string();
    let want = format!(
        "Next: stop the source Prometheus, then run: promigrate apply -f {plan} --state-dir {state} --phase final\n"
    );
    assert!(out.contains(&want), "{out}");
    // The log line counts the files this phase copies, as its report does.
    let (_, v) = ws.run_json(&["apply", "--yes", "--phase", "presync", "--dry-run"]);
    let copied: u64 = v["targets"][0]["plan"]["phases"]["presync"]["files"]
        .as_u64()
        .unwrap();
    assert_eq!(copied, 0, "the first presync copied them all: {v}");
    let fresh = Workspace::new();
    let (_, v) = fresh.run_json(&["plan"]);
    let presync_files = only(&v)["phases"]["presync"]["files"].as_u64().unwrap();
    let total = only(&v)["stats"]["copy_files"].as_u64().unwrap();
    assert!(presync_files < total, "the fixture has WAL/head files: {v}");
    let (_, _, err) = fresh.run(&["apply", "--yes", "--phase", "presync"]);
    assert!(
        err.contains(&format!("apply: copying files={presync_files} ")),
        "{err}"
    );
    // After the final phase: verify, deep, on the same plan and records.
    let (code, out, _) = ws.run(&["apply", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "Next: promigrate verify -f {plan} --state-dir {state} --level deep"
        )),
        "{out}"
    );
    // A path with a space is quoted for the shell.
    let spaced = ws.dir.path().join("my plan.yaml");
    std::fs::copy(&ws.plan, &spaced).unwrap();
    let mut c = promigrate();
    c.args(["apply", "--yes", "--state-dir"])
        .arg(&ws.state)
        .arg(&spaced);
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains(&format!("verify -f '{}'", spaced.display())),
        "{out}"
    );
}

/// Issue 18: without --state-dir, run records go to `migrations/` beside the plan file,
/// wherever promigrate runs from (not the current directory by accident), and the path
/// printed is that one, absolute.
#[test]
fn run_records_default_to_beside_the_plan_file_whatever_the_working_directory() {
    let ws = Workspace::new();
    let elsewhere = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let mut c = promigrate();
        c.args(args)
            .arg("-f")
            .arg(&ws.plan)
            .current_dir(elsewhere.path());
        run(c)
    };
    let (code, out, err) = run(&["apply", "--yes", "--source-stopped"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let records = ws.dir.path().join("migrations").join("test-migration");
    let written: Vec<_> = std::fs::read_dir(&records)
        .unwrap_or_else(|e| panic!("{}: {e}\n{out}", records.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(written.len(), 1, "{written:?}");
    assert!(
        out.contains(&format!("Run record: {}", written[0].display())),
        "{out}"
    );
    assert!(
        !elsewhere.path().join("migrations").exists(),
        "a record went to the working directory"
    );
    let (code, out, _) = run(&["verify"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(std::fs::read_dir(&records).unwrap().count(), 2);
    // The "Next:" line needs no --state-dir for the default.
    let (_, out, _) = run(&["apply", "--yes", "--source-stopped", "--phase", "presync"]);
    assert!(
        out.contains("Next:") && !out.contains("--state-dir"),
        "{out}"
    );
}

/// Issue 18: a relative `target.path` (`./pv`, `x/../pv`), or a plan file named by a
/// relative path, is no symbolic link: no warning says it is. One that is a link is named.
#[test]
fn a_relative_target_path_is_not_called_a_symbolic_link() {
    let ws = Workspace::new();
    std::fs::create_dir(ws.dir.path().join("x")).unwrap();
    let plan = std::fs::read_to_string(&ws.plan).unwrap();
    for path in ["./pv", "x/../pv", "pv"] {
        std::fs::write(
            &ws.plan,
            plan.replace(
                &format!("path: {}", ws.mount.display()),
                &format!("path: {path}"),
            ),
        )
        .unwrap();
        // From the plan's directory, with the plan named relatively too.
        let mut c = promigrate();
        c.args(["plan", "-f", "plan.yaml", "--state-dir"])
            .arg(&ws.state)
            .current_dir(ws.dir.path());
        let (code, out, err) = run(c);
        assert_eq!(code, 0, "{path}: {out}{err}");
        assert!(!out.contains("symbolic link"), "{path}: {out}");
    }
    // A link is still named.
    std::os::unix::fs::symlink("pv", ws.dir.path().join("pv-link")).unwrap();
    std::fs::write(
        &ws.plan,
        plan.replace(&format!("path: {}", ws.mount.display()), "path: pv-link"),
    )
    .unwrap();
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "pv-link is a symbolic link: promigrate works on the directory it resolves to"
        ),
        "{out}"
    );
}

/// Issue 18: the JSON contract when a run is interrupted (SIGINT) or stopped by its
/// deadline: one document, `ok` false, `exit_code` the process's, `error` set when it
/// failed, and the record of the run.
#[test]
fn an_interrupted_or_out_of_time_run_keeps_the_json_contract() {
    let interrupted = |ws: &Workspace, args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--output", "json"]);
        let child = ws
            .cmd(&a)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_secs(2));
        signal(child.id(), nix::sys::signal::Signal::SIGINT);
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?}: not one JSON document ({e}): {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), v)
    };
    let ws = Workspace::new();
    // 100 KiB/s: the fixture takes several seconds, SIGINT comes after 2.
    let (code, v) = interrupted(
        &ws,
        &["apply", "--yes", "--source-stopped", "--bwlimit", "100K"],
    );
    assert_eq!(code, 3, "{v}");
    assert_contract("apply, interrupted", code, &v, false, true);
    assert!(v["error"].as_str().unwrap().contains("interrupted"), "{v}");

    // A deadline that passes mid-copy: incomplete, exit 1, no error, a record.
    let (code, v) = ws.run_json(&[
        "apply",
        "--yes",
        "--source-stopped",
        "--bwlimit",
        "100K",
        "--deadline",
        "2s",
    ]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["incomplete"], true, "{v}");
    assert_contract("apply, deadline", code, &v, false, true);

    // verify, interrupted in the middle of a large file (a sparse one on both sides).
    let (code, v) = ws.run_json(&["apply", "--yes", "--source-stopped"]);
    assert_eq!(code, 0, "{v}");
    big_sparse_segment(&ws);
    let (code, v) = interrupted(&ws, &["verify", "--level", "checksum"]);
    assert_eq!(code, 3, "{v}");
    assert_contract("verify, interrupted", code, &v, false, true);
}

/// Regression: a verify whose output had nowhere to go (the terminal or the pipe it wrote to
/// gone: `promigrate verify | tee log` with `tee` killed, a dropped session) ignored SIGTERM
/// and SIGINT and went on hashing for minutes: the signal's log line failed to write, the
/// logger's own report of that failure panicked the signal task, and no signal was
/// listened to after that. It must stop at once, with exit 3, as on a terminal.
#[test]
fn a_verify_whose_output_is_gone_still_stops_on_a_signal() {
    let ws = Workspace::new();
    let (code, v) = ws.run_json(&["apply", "--yes", "--source-stopped"]);
    assert_eq!(code, 0, "{v}");
    big_sparse_segment(&ws);
    let mut child = ws
        .cmd(&["verify", "--level", "checksum"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Hashing the 16 GiB segment (minutes in this debug build) once it has it open.
    let segment = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|fds| {
                fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                    .any(|p| p.ends_with("wal/00000099"))
            })
            .unwrap_or(false)
    };
    let start = std::time::Instant::now();
    while !segment(child.id()) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "verify never opened the segment"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Its output goes nowhere from now on.
    drop(child.stdout.take());
    drop(child.stderr.take());
    signal(child.id(), nix::sys::signal::Signal::SIGTERM);
    let status = ended_within(&mut child, std::time::Duration::from_secs(60), || {
        "verify went on hashing for 60 s after SIGTERM".to_string()
    });
    assert_eq!(status.code(), Some(3), "{status:?}");
}
