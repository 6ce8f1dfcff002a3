//! The write preflight (issue 13): `plan` predicts what `apply` would hit at its first write
//! and makes it a blocker naming the path and the fix, on real mounts: a read-only bind
//! mount, tmpfs with `nr_inodes=` and `size=`, an unprivileged user. A refused apply writes
//! nothing; a plan without these blockers applies.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;

/// Whether the target volume holds anything at all.
fn untouched(ws: &Workspace) -> bool {
    std::fs::read_dir(&ws.mount).unwrap().count() == 0
}

/// The BLOCKER lines of a text plan.
fn blockers(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.starts_with("BLOCKER:")).collect()
}

#[test]
fn a_read_only_target_is_a_blocker_for_apply_but_not_for_verify() {
    let ws = Workspace::new();
    let mount = ws.mount.display().to_string();
    let ro = ReadOnlyBind::mount(&ws.mount);
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        blockers(&out)
            .iter()
            .any(|b| b.contains("read-only") && b.contains(&mount)),
        "{out}"
    );
    let (code, out, err) = ws.run(&["apply", "--yes"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("apply refused"), "{out}");
    drop(ro);
    assert!(untouched(&ws));

    // A complete copy on a volume that is read-only now: verify only reads, so it is OK;
    // apply has nothing to write, so it is not refused either.
    let (code, out, err) = ws.run(&["apply", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    let _ro = ReadOnlyBind::mount(&ws.mount);
    let (code, out, _) = ws.run(&["verify"]);
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("read-only"), "a warning says so: {out}");
    let (code, out, err) = ws.run(&["apply", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn too_few_free_inodes_is_a_blocker() {
    let ws = Workspace::new();
    let (_, plan) = ws.run_json(&["plan"]);
    let files = only(&plan)["stats"]["copy_files"].as_u64().unwrap();
    let fs = Tmpfs::mount_with(&ws.mount, &format!("size=64m,nr_inodes={}", files / 2));
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        blockers(&out)
            .iter()
            .any(|b| b.contains("inodes") && b.contains(&ws.mount.display().to_string())),
        "{out}"
    );
    let (code, out, _) = ws.run(&["apply", "--yes"]);
    assert_eq!(code, 1, "{out}");
    assert!(untouched(&ws));
    drop(fs);

    // Exactly as many free inodes as the plan says it needs (tmpfs's root takes one): apply
    // succeeds, so the count covers every file and directory apply creates.
    let (_, plan) = ws.run_json(&["plan"]);
    let need = only(&plan)["target_needs"]["inodes"].as_u64().unwrap();
    assert!(need > files, "files and directories: {plan}");
    let _fs = Tmpfs::mount_with(&ws.mount, &format!("size=64m,nr_inodes={}", need + 1));
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 0, "{out}");
    let (code, out, err) = ws.run(&["apply", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn free_space_without_headroom_is_a_blocker() {
    let ws = Workspace::new();
    let (_, plan) = ws.run_json(&["plan"]);
    let copy = only(&plan)["stats"]["copy_bytes"].as_u64().unwrap();
    // Room for the bytes, not for their rounding to pages and the margin.
    let fs = Tmpfs::mount_with(&ws.mount, &format!("size={}", copy + 8192));
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        blockers(&out)
            .iter()
            .any(|b| b.contains("not enough space") && b.contains(&ws.mount.display().to_string())),
        "{out}"
    );
    let (code, out, _) = ws.run(&["apply", "--yes"]);
    assert_eq!(code, 1, "{out}");
    assert!(untouched(&ws));
    drop(fs);

    // As much free space as the plan says it needs: apply succeeds.
    let (_, plan) = ws.run_json(&["plan"]);
    let need = only(&plan)["target_needs"]["bytes"].as_u64().unwrap();
    assert!(need > copy, "{plan}");
    let _fs = Tmpfs::mount_with(&ws.mount, &format!("size={need}"));
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 0, "{out}");
    let (code, out, err) = ws.run(&["apply", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
}

/// Regression (found in review): what an interrupted run staged was counted twice, as used
/// space and as still to be written, so the rerun "to continue" could be blocked by its own
/// progress on a volume sized to the plan.
#[test]
fn what_an_interrupted_run_staged_counts_as_free_for_the_rerun() {
    let ws = Workspace::new();
    let (_, plan) = ws.run_json(&["plan"]);
    let need = only(&plan)["target_needs"]["bytes"].as_u64().unwrap();
    let _fs = Tmpfs::mount_with(&ws.mount, &format!("size={need}"));
    // The largest block, staged whole (files with the source's size and mtime), as a run
    // stopped before publishing it leaves it.
    let big = only(&plan)["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|b| b["size"].as_u64().unwrap())
        .unwrap()["ulid"]
        .as_str()
        .unwrap()
        .to_string();
    let staging = ws.target().join(".promigrate-staging");
    std::fs::create_dir_all(&staging).unwrap();
    copy_tree(&ws.source.join(&big), &staging.join(&big));
    // With the owner and modes apply gives what it stages.
    for (cmd, args) in [
        ("chown", vec!["-R", "1000:2000"]),
        ("chmod", vec!["-R", "g+rw"]),
    ] {
        let st = std::process::Command::new(cmd)
            .args(&args)
            .arg(&staging)
            .status()
            .unwrap();
        assert!(st.success());
    }
    for d in [
        staging.clone(),
        staging.join(&big),
        staging.join(&big).join("chunks"),
    ] {
        let st = std::process::Command::new("chmod")
            .arg("g+rwxs")
            .arg(&d)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 0, "{out}");
    let (code, v) = ws.run_json(&["apply", "--yes"]);
    assert_eq!(code, 0, "{v}");
    assert!(
        only(&v)["apply"]["resumed_files"].as_u64().unwrap() >= 1,
        "{v}"
    );
    assert_eq!(ws.run(&["verify"]).0, 0);
}

#[test]
fn an_unprivileged_user_cannot_give_the_data_another_owner() {
    let ws = Workspace::new();
    std::os::unix::fs::chown(&ws.mount, Some(1000), Some(1000)).unwrap();
    std::os::unix::fs::chown(ws.dir.path(), Some(1000), Some(1000)).unwrap();
    // uid 1000, gid 1000, no capabilities; the plan wants 1000:2000.
    let (code, out, err) = as_user(&ws, (1000, 1000), &["plan"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        blockers(&out).iter().any(|b| b.contains("CAP_CHOWN")
            && b.contains("1000:2000")
            && b.contains(&ws.target().display().to_string())
            && b.contains("run as root")),
        "{out}"
    );
    let (code, out, _) = as_user(&ws, (1000, 1000), &["apply", "--yes", "--source-stopped"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("apply refused"), "{out}");
    assert!(untouched(&ws));

    // Running as 1000:2000 itself, nothing needs another owner: it applies, and verifies.
    std::os::unix::fs::chown(&ws.mount, Some(1000), Some(2000)).unwrap();
    let (code, out, err) = as_user(&ws, (1000, 2000), &["plan"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = as_user(&ws, (1000, 2000), &["apply", "--yes", "--source-stopped"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = ws.run(&["verify"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_target_this_user_cannot_write_is_a_blocker() {
    let ws = Workspace::new();
    // The volume stays root's (0755); the user runs as the plan's owner, so only the
    // permission to create the TSDB directory is missing.
    std::os::unix::fs::chown(ws.dir.path(), Some(1000), Some(2000)).unwrap();
    std::fs::set_permissions(&ws.mount, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, out, err) = as_user(&ws, (1000, 2000), &["plan"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        blockers(&out).iter().any(|b| b.contains("not writable")
            && b.contains(&ws.mount.display().to_string())
            && b.contains("uid 1000")),
        "{out}"
    );
    assert!(
        !out.contains("CAP_CHOWN"),
        "no ownership change is needed: {out}"
    );
    let (code, out, _) = as_user(&ws, (1000, 2000), &["apply", "--yes", "--source-stopped"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("apply refused"), "{out}");
    assert!(untouched(&ws));
}

#[test]
fn two_targets_on_one_filesystem_must_fit_together() {
    let ws = Workspace::new();
    let (_, plan) = ws.run_json(&["plan"]);
    let need = only(&plan)["target_needs"]["inodes"].as_u64().unwrap();
    // Inodes for one target, not for two (tmpfs's root and the volumes a/ and b/ take three).
    let _fs = Tmpfs::mount_with(&ws.mount, &format!("size=64m,nr_inodes={}", need + 3));
    let volumes = [ws.mount.join("a"), ws.mount.join("b")];
    let mut yaml = format!(
        "apiVersion: promigrate/v1\nkind: Migration\nmetadata:\n  name: test-migration\nsource:\n  path: {}\ntargets:\n",
        ws.source.display()
    );
    for v in &volumes {
        std::fs::create_dir(v).unwrap();
        yaml.push_str(&format!(
            "  - path: {}\n    subPath: prometheus-db\n    securityContext: {{ runAsUser: {RUN_AS_USER}, fsGroup: {FS_GROUP} }}\n",
            v.display()
        ));
    }
    std::fs::write(&ws.plan, yaml).unwrap();
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        blockers(&out)
            .iter()
            .any(|b| b.contains("2 targets share the filesystem") && b.contains("inodes")),
        "{out}"
    );
    let (code, out, _) = ws.run(&["apply", "--yes"]);
    assert_eq!(code, 1, "{out}");
    for v in &volumes {
        assert_eq!(std::fs::read_dir(v).unwrap().count(), 0, "{}", v.display());
    }
}
