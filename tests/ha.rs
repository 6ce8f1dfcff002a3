//! HA pairs: `targets:` lists several volumes; the source is read once and every target is
//! written, owned and verified on its own.

mod common;

use common::*;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The second target's owner differs from the first's, so ownership is checked per target.
const B_OWNER: (u32, u32) = (1001, 2001);

/// Rewrites the workspace plan with `targets:` = the workspace volume and `second`.
fn ha_plan(ws: &Workspace, source: &Path, second: &Path, transfer_extra: &str) {
    let yaml = format!(
        "apiVersion: promigrate/v1
kind: Migration
metadata:
  name: test-ha
source:
  path: {}
targets:
  - path: {}
    subPath: prometheus-db
    securityContext: {{ runAsUser: {RUN_AS_USER}, fsGroup: {FS_GROUP} }}
  - path: {}
    securityContext: {{ runAsUser: {}, fsGroup: {} }}
transfer:
  parallelism: 4
{transfer_extra}",
        source.display(),
        ws.mount.display(),
        second.display(),
        B_OWNER.0,
        B_OWNER.1
    );
    std::fs::write(&ws.plan, yaml).unwrap();
}

fn second_volume(ws: &Workspace) -> PathBuf {
    let b = ws.dir.path().join("pv-b");
    std::fs::create_dir(&b).unwrap();
    b
}

fn owners(dir: &Path) -> std::collections::BTreeSet<(u32, u32)> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| !e.file_name().to_string_lossy().starts_with(".promigrate"))
        .map(|e| {
            let m = e.metadata().unwrap();
            (m.uid(), m.gid())
        })
        .collect()
}

#[test]
fn ha_pair_is_written_from_one_read_of_the_source_and_verified_per_target() {
    // 1 GiB of real blocks, used read-only as the source: big enough that metadata reads are
    // noise next to a second read of the data.
    let source = gib_fixture();
    let ws = Workspace::new();
    let b = second_volume(&ws);
    ha_plan(&ws, source, &b, "");

    let (code, plan) = ws.run_json(&["plan"]);
    assert_eq!(code, 0, "{plan}");
    let targets = plan["targets"].as_array().expect("one plan per target");
    assert_eq!(targets.len(), 2);
    let bytes = targets[0]["stats"]["copy_bytes"].as_u64().unwrap();
    assert_eq!(targets[1]["stats"]["copy_bytes"].as_u64().unwrap(), bytes);
    assert!(bytes > 1 << 30, "fixture too small: {bytes}");

    // Block-layer reads of the apply process (getrusage ru_inblock, 512-byte units) with a
    // cold cache: one read of the source is ~1x the data, reading it per target would be 2x.
    drop_page_cache();
    let io = ws.dir.path().join("time.txt");
    let mut c = Command::new("/usr/bin/time");
    c.arg("-f")
        .arg("%I")
        .arg("-o")
        .arg(&io)
        .arg(env!("CARGO_BIN_EXE_promigrate"))
        .args(["apply", "--yes", "--output", "json", "-f"])
        .arg(&ws.plan)
        .arg("--state-dir")
        .arg(&ws.state);
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let applied = v["targets"].as_array().unwrap();
    for t in applied {
        assert_eq!(t["apply"]["copied_bytes"].as_u64().unwrap(), bytes, "{t}");
        assert_eq!(t["apply"]["ok"], true);
    }
    let inblocks: u64 = std::fs::read_to_string(&io)
        .unwrap()
        .trim()
        .lines()
        .last()
        .unwrap()
        .parse()
        .unwrap();
    let ratio = (inblocks * 512) as f64 / bytes as f64;
    eprintln!("HA apply read {ratio:.2}x the source data from disk");
    assert!(
        (0.7..1.3).contains(&ratio),
        "the source was read {ratio:.2} times for two targets (expected once)"
    );

    // Each target has its own owner, and each verifies (deep: also the format checks).
    assert_eq!(
        owners(&ws.target()),
        [(RUN_AS_USER, FS_GROUP)].into_iter().collect()
    );
    assert_eq!(owners(&b), [B_OWNER].into_iter().collect());
    let (code, v) = ws.run_json(&["verify", "--level", "checksum"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["ok"], true);
    assert_eq!(v["targets"].as_array().unwrap().len(), 2);
    for t in v["targets"].as_array().unwrap() {
        assert_eq!(t["ok"], true, "{t}");
        assert!(t["checked_bytes"].as_u64().unwrap() >= bytes);
    }
    // The source was hashed once and each target once.
    let hashed: u64 = v["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["hashed_bytes"].as_u64().unwrap())
        .sum();
    assert!(
        hashed < 3 * bytes + (64 << 20),
        "hashed {hashed} for {bytes}"
    );
}

#[test]
fn targets_in_different_states_both_end_equal() {
    let ws = Workspace::new();
    // Target A already holds the migration (from a single-target run); B is empty.
    let (code, _, err) = ws.run(&["apply", "--yes"]);
    assert_eq!(code, 0, "{err}");
    let a_before = snapshot(&ws.target());
    let b = second_volume(&ws);
    let source = ws.source.clone();
    ha_plan(&ws, &source, &b, "");

    let (code, v) = ws.run_json(&["apply", "--yes"]);
    assert_eq!(code, 0, "{v}");
    let t = v["targets"].as_array().unwrap();
    assert_eq!(t[0]["apply"]["copied_files"], 0, "A was already complete");
    assert!(t[1]["apply"]["copied_files"].as_u64().unwrap() > 10);
    assert_eq!(snapshot(&ws.target()), a_before, "A was rewritten");
    let (code, out, _) = ws.run(&["verify", "--level", "deep"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("OK: all 2 targets match the source."), "{out}");
}

#[test]
fn verify_names_the_target_that_differs() {
    let ws = Workspace::new();
    let b = second_volume(&ws);
    let source = ws.source.clone();
    ha_plan(&ws, &source, &b, "");
    let (code, _, err) = ws.run(&["apply", "--yes"]);
    assert_eq!(code, 0, "{err}");

    // Flip one byte of a chunk file on target B, keeping its size and mtime.
    let chunk = some_block(&b).join("chunks/000001");
    let len = std::fs::metadata(&chunk).unwrap().len() as usize;
    flip_byte_keeping_mtime(&chunk, len / 2);

    let (code, v) = ws.run_json(&["verify", "--level", "checksum"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["ok"], false);
    let t = v["targets"].as_array().unwrap();
    assert_eq!(t[0]["ok"], true, "{}", t[0]);
    assert_eq!(t[1]["ok"], false);
    let diffs = t[1]["differences"].as_array().unwrap();
    assert_eq!(diffs.len(), 1, "{diffs:?}");
    assert_eq!(diffs[0]["sigil"], "*");
    assert!(
        diffs[0]["path"]
            .as_str()
            .unwrap()
            .ends_with("chunks/000001")
    );
    let (_, text, _) = ws.run(&["verify", "--level", "checksum"]);
    assert!(text.contains("FAILED: 1 of 2 targets differ"), "{text}");

    // apply --checksum (issue 13) replaces it on B only.
    let (code, v) = ws.run_json(&["apply", "--yes", "--checksum"]);
    assert_eq!(code, 0, "{v}");
    let t = v["targets"].as_array().unwrap();
    assert_eq!(t[0]["apply"]["copied_files"], 0, "{}", t[0]);
    assert_eq!(t[0]["plan"]["stats"]["checksum_differing_files"], 0);
    assert_eq!(t[1]["apply"]["copied_files"], 1, "{}", t[1]);
    assert_eq!(t[1]["plan"]["stats"]["checksum_differing_files"], 1);
    let (code, out, _) = ws.run(&["verify", "--level", "checksum"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn killed_ha_apply_resumes_on_both_targets() {
    let ws = Workspace::new();
    let b = second_volume(&ws);
    let source = ws.source.clone();
    ha_plan(&ws, &source, &b, "");
    let (_, plan) = ws.run_json(&["plan"]);
    let bytes = plan["targets"][0]["stats"]["copy_bytes"].as_u64().unwrap();
    // ~4 s: the kill lands mid-copy.
    let mut child = spawn_slow_apply(&ws, bytes, 4);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "apply finished before the kill: the test would prove nothing"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let (code, v) = ws.run_json(&["verify", "--level", "meta"]);
    assert_eq!(code, 1, "an interrupted apply must not verify: {v}");

    let (code, v) = ws.run_json(&["apply", "--yes"]);
    assert_eq!(code, 0, "{v}");
    // It resumed: together the targets got less than two full copies in this run.
    let rerun: u64 = v["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["apply"]["copied_bytes"].as_u64().unwrap())
        .sum();
    assert!(
        rerun < 2 * bytes,
        "the rerun copied everything again: {rerun}"
    );
    for t in [ws.target(), b.clone()] {
        assert_no_temp_files(&t, "after the resumed apply");
    }
    let (code, out, _) = ws.run(&["verify", "--level", "checksum"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn plan_shows_each_target_and_both_target_forms_are_refused() {
    let ws = Workspace::new();
    let b = second_volume(&ws);
    let source = ws.source.clone();
    ha_plan(&ws, &source, &b, "");
    let (code, text, _) = ws.run(&["plan"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("=== target 1 of 2:"), "{text}");
    assert!(text.contains(&format!("=== target 2 of 2: {}", b.display())));

    // `target` and `targets` together, and the same volume twice, are plan-file errors.
    let yaml = std::fs::read_to_string(&ws.plan).unwrap();
    let both = yaml.replace(
        "targets:",
        &format!(
            "target:\n  path: {}\n  securityContext: {{ runAsUser: 1, fsGroup: 1 }}\ntargets:",
            b.display()
        ),
    );
    std::fs::write(&ws.plan, both).unwrap();
    let (code, _, err) = ws.run(&["plan"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("`target`") && err.contains("`targets`"),
        "{err}"
    );

    let twice = yaml.replace(
        &format!("path: {}\n", b.display()),
        &format!("path: {}\n    subPath: prometheus-db\n", ws.mount.display()),
    );
    std::fs::write(&ws.plan, twice).unwrap();
    let (code, _, err) = ws.run(&["plan"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("targets[1].path") && err.contains("targets[0]"),
        "{err}"
    );
}
