//! `inspect` reports the same blocks as `promtool tsdb list` on a real TSDB, and the real
//! WAL and head-chunk segment ranges.

mod common;

use common::*;

#[test]
fn inspect_agrees_with_promtool() {
    let dir = fixture();
    let out = std::process::Command::new("promtool")
        .args(["tsdb", "list"])
        .arg(dir)
        .output()
        .expect("promtool (Debian package prometheus)");
    assert!(out.status.success());
    let listing = String::from_utf8(out.stdout).unwrap();
    // BLOCK ULID  MIN TIME  MAX TIME  DURATION  NUM SAMPLES  NUM CHUNKS  NUM SERIES  SIZE
    let mut expected: Vec<Vec<String>> = listing
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
        .filter(|f| f.len() >= 8)
        .collect();
    expected.sort_by_key(|f| f[1].parse::<i64>().unwrap());
    assert!(expected.len() >= 3, "{listing}");

    let mut c = promigrate();
    c.args(["inspect", "--output", "json"]).arg(dir);
    let (code, stdout, err) = run(c);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let blocks = v["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), expected.len());
    for (b, e) in blocks.iter().zip(&expected) {
        assert_eq!(b["ulid"], e[0].as_str());
        assert_eq!(b["min_time"].as_i64().unwrap().to_string(), e[1]);
        assert_eq!(b["max_time"].as_i64().unwrap().to_string(), e[2]);
        assert_eq!(b["num_samples"].as_u64().unwrap().to_string(), e[4]);
        assert_eq!(b["num_chunks"].as_u64().unwrap().to_string(), e[5]);
        assert_eq!(b["num_series"].as_u64().unwrap().to_string(), e[6]);
    }
    assert_eq!(v["min_time"].as_i64().unwrap().to_string(), expected[0][1]);

    // Segment ranges match the files on disk.
    let segs = v["segments"].as_array().unwrap();
    for dir_name in ["wal", "chunks_head"] {
        let mut nums: Vec<u64> = std::fs::read_dir(dir.join(dir_name))
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().to_str().and_then(|n| n.parse().ok()))
            .collect();
        nums.sort();
        let s = segs
            .iter()
            .find(|s| s["dir"] == dir_name)
            .unwrap_or_else(|| panic!("no {dir_name} in {v}"));
        assert_eq!(s["first"].as_u64(), nums.first().copied());
        assert_eq!(s["last"].as_u64(), nums.last().copied());
        assert_eq!(s["count"].as_u64().unwrap() as usize, nums.len());
    }

    let mut c = promigrate();
    c.arg("inspect").arg(dir);
    let (_, text, _) = run(c);
    assert!(
        text.contains(&expected[0][0]) && text.contains("wal/: segments"),
        "{text}"
    );
}

#[test]
fn inspect_of_a_missing_dir_is_usage_error() {
    let mut c = promigrate();
    c.args(["inspect", "/nonexistent/data"]);
    let (code, _, err) = run(c);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/data"), "{err}");
}

#[test]
fn a_directory_that_is_not_a_tsdb_exits_1_and_points_at_the_tsdb_near_it() {
    let d = tempfile::tempdir().unwrap();
    // Something that is no TSDB at all (an /etc).
    let etc = d.path().join("etc");
    std::fs::create_dir_all(etc.join("ssh")).unwrap();
    std::fs::write(etc.join("hosts"), b"127.0.0.1 localhost\n").unwrap();
    // A volume's root, with the TSDB in its subPath.
    let vol = d.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    copy_tree(fixture(), &vol.join("prometheus-db"));
    std::fs::create_dir(vol.join("lost+found")).unwrap();
    for (dir, near) in [
        (etc.clone(), None),
        (vol.clone(), Some(vol.join("prometheus-db"))),
        (
            vol.join("prometheus-db/wal"),
            Some(vol.join("prometheus-db")),
        ),
    ] {
        let mut c = promigrate();
        c.arg("inspect").arg(&dir);
        let (code, out, err) = run(c);
        assert_eq!(code, 1, "{}: {out}\n{err}", dir.display());
        let first = out.lines().next().unwrap_or("");
        assert!(
            first.contains("is not a Prometheus TSDB directory"),
            "said first: {out}"
        );
        match near {
            Some(t) => assert!(
                first.contains(&format!("the TSDB is at {}", t.display())),
                "{out}"
            ),
            None => assert!(!first.contains("the TSDB is at"), "{out}"),
        }
    }
    // plan with source.path at the volume's root: the blocker says where the TSDB is, and
    // the root's entries are not listed one by one before it.
    let ws = Workspace::new();
    let good = std::fs::read_to_string(&ws.plan).unwrap();
    std::fs::write(
        &ws.plan,
        good.replacen(
            &format!("path: {}", ws.source.display()),
            &format!("path: {}", vol.display()),
            1,
        ),
    )
    .unwrap();
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "The TSDB is at {}: point source.path there",
            vol.join("prometheus-db").display()
        )),
        "{out}"
    );
    assert!(!out.contains("not TSDB data"), "{out}");
}

#[test]
fn lost_and_found_at_the_volume_root_is_no_warning() {
    let ws = Workspace::new();
    // The TSDB directory is the volume's root (no subPath), which holds lost+found.
    let good = std::fs::read_to_string(&ws.plan).unwrap();
    std::fs::write(&ws.plan, good.replacen("  subPath: prometheus-db\n", "", 1)).unwrap();
    std::fs::create_dir(ws.mount.join("lost+found")).unwrap();
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("warning:"), "{out}");
    // Another stray entry still is one.
    std::fs::write(ws.mount.join("notes.txt"), b"x").unwrap();
    let (_, out, _) = ws.run(&["plan"]);
    assert!(
        out.contains("not TSDB data; they are left alone: notes.txt"),
        "{out}"
    );
}
