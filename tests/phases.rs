//! Two-phase cutover against a real, running prometheus: blocks are presynced while it runs
//! (and compacts), the final phase refuses until it is stopped, then mirrors the rest; the
//! copy answers like the source, including samples written after the presync.

mod common;

use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// The block's compaction level; `None` when the running server deleted the block after it
/// was listed (it compacts while the test polls).
fn level(block: &Path) -> Option<u64> {
    let text = match std::fs::read_to_string(block.join("meta.json")) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        r => r.unwrap(),
    };
    let m: serde_json::Value = serde_json::from_str(&text).unwrap();
    Some(m["compaction"]["level"].as_u64().unwrap())
}

fn blocks(root: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("meta.json").exists())
        .collect();
    v.sort();
    v
}

#[test]
fn presync_while_running_then_final_after_stop() {
    let ws = Workspace::from_fixture(raw_fixture(), "");
    let raw: Vec<String> = blocks(&ws.source)
        .iter()
        .map(|b| b.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(raw.len() > 4 && blocks(&ws.source).iter().all(|b| level(b) == Some(1)));

    // 1. Presync the raw blocks.
    let (code, v) = ws.run_json(&["apply", "--yes", "--phase", "presync"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        v["apply"]["blocks_published"].as_u64().unwrap() as usize,
        raw.len()
    );

    // 2. The source comes alive: it compacts the raw blocks and writes a WAL.
    let work = ws.dir.path().join("servers");
    let mut live = PromServer::start_scraping(&ws.source, &work.join("live"));
    let deadline = Instant::now() + Duration::from_secs(90);
    while !blocks(&ws.source).iter().any(|b| level(b) > Some(1)) {
        assert!(
            Instant::now() < deadline,
            "prometheus did not compact the raw blocks:\n{}",
            live.log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let (_, plan) = ws.run_json(&["plan"]);
    assert_eq!(
        plan["source_state"]["state"], "running",
        "{}",
        plan["source_state"]
    );

    // 3. Presync again while it runs: the compacted blocks.
    let (code, v) = ws.run_json(&["apply", "--yes", "--phase", "presync"]);
    assert_eq!(code, 0, "{v}");
    let presynced_at = jiff::Timestamp::now().as_second();

    // 4. The final phase refuses while it runs, and writes nothing.
    let before = snapshot(&ws.target());
    for phase in ["final", "all"] {
        let (code, v) = ws.run_json(&["apply", "--yes", "--phase", phase]);
        assert_eq!(code, 1, "{v}");
        assert!(
            v["refusal"].as_str().unwrap().contains("still running"),
            "{v}"
        );
    }
    assert_eq!(
        snapshot(&ws.target()),
        before,
        "a refused final phase wrote something"
    );

    // Samples keep arriving after the presync; then the source is stopped.
    std::thread::sleep(Duration::from_secs(3));
    live.stop();
    let (_, plan) = ws.run_json(&["plan"]);
    assert_eq!(
        plan["source_state"]["state"], "stopped",
        "{}",
        plan["source_state"]
    );
    assert!(
        plan["phases"]["final"]["bytes"].as_u64().unwrap() > 0,
        "the WAL is left for the final phase"
    );

    // 5. The final phase: compacted-away blocks go to quarantine, the WAL/head are mirrored.
    let (code, v) = ws.run_json(&["apply", "--yes", "--phase", "final"]);
    assert_eq!(code, 0, "{v}");
    let q = std::path::PathBuf::from(
        v["apply"]["quarantine_dir"]
            .as_str()
            .expect("compacted blocks were quarantined"),
    );
    let source_now: Vec<String> = blocks(&ws.source)
        .iter()
        .map(|b| b.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for r in raw.iter().filter(|r| !source_now.contains(r)) {
        assert!(
            !ws.target().join(r).exists(),
            "compacted-away block {r} is still on the target"
        );
        assert!(
            q.join(r).join("meta.json").exists(),
            "compacted-away block {r} is not in the quarantine"
        );
    }
    let (code, out, _) = ws.run(&["verify", "--level", "deep"]);
    assert_eq!(code, 0, "{out}");

    // 6. The copy answers like the source, including samples scraped after the presync.
    let reference_data = ws.dir.path().join("source-copy");
    copy_tree(&ws.source, &reference_data);
    let reference = PromServer::start(&reference_data, &work.join("ref"), None);
    let migrated = PromServer::start(
        &ws.target(),
        &work.join("new"),
        Some((RUN_AS_USER, FS_GROUP)),
    );
    let now = jiff::Timestamp::now().as_second();
    let since_presync = now - presynced_at;
    let after = |s: &PromServer| {
        s.api(
            "query",
            &[
                ("query", format!("count_over_time(up[{since_presync}s])")),
                ("time", now.to_string()),
            ],
        )
    };
    let (a, b) = (after(&reference), after(&migrated));
    assert!(
        !a["result"].as_array().unwrap().is_empty(),
        "no samples after the presync on the reference"
    );
    assert_eq!(a, b, "samples written after the presync differ");
    for q in [
        "sum(count_over_time(demo_requests_total[10d]))",
        "sum(count_over_time(demo_temperature_celsius[10d]))",
        "sum(count_over_time(prometheus_tsdb_head_samples_appended_total[10d]))",
    ] {
        let p = [("query", q.to_string()), ("time", now.to_string())];
        let (a, b) = (reference.api("query", &p), migrated.api("query", &p));
        assert!(!a["result"].as_array().unwrap().is_empty(), "{q}");
        assert_eq!(a, b, "{q}");
    }
}

#[test]
fn deadline_stops_cleanly_and_the_next_apply_continues() {
    let ws = Workspace::new();
    let (_, plan) = ws.run_json(&["plan"]);
    let total = plan["stats"]["copy_files"].as_u64().unwrap();
    let bytes = plan["stats"]["copy_bytes"].as_u64().unwrap();
    // About 6 s of copying, and 2 s to do it in.
    let rate = format!("{}K", (bytes / 1024 / 6).max(4));
    let (code, v) = ws.run_json(&["apply", "--yes", "--bwlimit", &rate, "--deadline", "2s"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["incomplete"], true, "{v}");
    let copied = v["apply"]["copied_files"].as_u64().unwrap();
    assert!(copied > 0 && copied < total, "copied {copied} of {total}");
    assert_no_temp_files(&ws.mount, "after the deadline");
    assert_eq!(latest_record(&ws, "apply")["exit_code"], 1);
    let (code, v) = ws.run_json(&["apply", "--yes"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        v["apply"]["copied_files"].as_u64().unwrap() + copied,
        total,
        "the rerun copied only the rest: {v}"
    );
    assert_eq!(ws.run(&["verify"]).0, 0);

    let (code, _, err) = ws.run(&["apply", "--yes", "--deadline", "soon"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("RFC 3339") && err.contains("duration"),
        "{err}"
    );
}

/// A presync reads the whole source once, but leaves the page cache as it found it: what it
/// brought in is dropped, what was cached before (a live server's working set) is kept.
#[test]
fn presync_leaves_the_source_page_cache_as_it_found_it() {
    let source = gib_fixture();
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("pv");
    std::fs::create_dir(&mount).unwrap();
    let plan = dir.path().join("plan.yaml");
    std::fs::write(&plan, plan_yaml(source, &mount, "")).unwrap();
    let presync = || {
        let mut c = promigrate();
        c.args(["apply", "--yes", "--phase", "presync", "-f"])
            .arg(&plan)
            .arg("--state-dir")
            .arg(dir.path().join("st"));
        let (code, _, err) = run(c);
        assert_eq!(code, 0, "{err}");
    };

    drop_page_cache();
    presync();
    let cold = cached_share(source);
    eprintln!("source cached after a cold presync: {:.1}%", cold * 100.0);
    assert!(
        cold <= 0.10,
        "{:.1}% of the source is cached after the presync",
        cold * 100.0
    );
    assert!(
        cached_share(&mount) <= 0.10,
        "the target's written pages stay cached"
    );

    std::fs::remove_dir_all(&mount).unwrap();
    std::fs::create_dir(&mount).unwrap();
    let warm_files = walkdir::WalkDir::new(source)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file());
    for f in warm_files {
        std::fs::read(f.path()).unwrap();
    }
    let before = cached_share(source);
    presync();
    let after = cached_share(source);
    eprintln!(
        "source cached around a warm presync: {:.1}% -> {:.1}%",
        before * 100.0,
        after * 100.0
    );
    assert!(before > 0.9, "could not warm the cache ({before})");
    assert!(
        after >= before - 0.05,
        "a presync evicted pages that were cached before: {before} -> {after}"
    );
}

/// Regression: blocks that are still in the source but not selected (excluded, or outside
/// timeRange) are not "compacted away", and with timeRange.max set the target's own WAL/head
/// is not the mirror's business.
#[test]
fn the_final_phase_quarantines_nothing_that_is_still_in_the_source() {
    let ws = Workspace::new();
    assert_eq!(ws.run(&["apply", "--yes"]).0, 0);
    let all = blocks(&ws.target());
    let excluded = all[0].file_name().unwrap().to_string_lossy().into_owned();
    ws.write_plan(&format!("  excludeBlocks: [{excluded}]\n"));
    let (code, v) = ws.run_json(&["apply", "--yes", "--phase", "final"]);
    assert_eq!(code, 0, "{v}");
    assert!(
        v["apply"]["quarantined"].as_array().unwrap().is_empty(),
        "{v}"
    );
    assert!(ws.target().join(&excluded).join("meta.json").exists());

    // A range covering one block and ending in the past: nothing else moves, WAL included.
    let (_, plan) = ws.run_json(&["plan"]);
    let b = &plan["blocks"][1];
    let ts = |ms: i64| jiff::Timestamp::from_millisecond(ms).unwrap().to_string();
    ws.write_plan(&format!(
        "  timeRange: {{ min: \"{}\", max: \"{}\" }}\n  acceptPartialSelection: true\n",
        ts(b["min_time"].as_i64().unwrap() + 60_000),
        ts(b["max_time"].as_i64().unwrap() - 60_000)
    ));
    let before = snapshot(&ws.target());
    let (code, v) = ws.run_json(&["apply", "--yes", "--phase", "final"]);
    assert_eq!(code, 0, "{v}");
    assert!(
        v["apply"]["quarantined"].as_array().unwrap().is_empty(),
        "{v}"
    );
    assert_eq!(snapshot(&ws.target()), before);
}

/// Regression: a foreign WAL checkpoint directory would make prometheus start its replay
/// after it and skip the copied segments. The mirror moves it, whole, to the quarantine.
#[test]
fn a_foreign_checkpoint_directory_is_quarantined_whole() {
    let ws = Workspace::new();
    assert_eq!(ws.run(&["apply", "--yes"]).0, 0);
    let cp = ws.target().join("wal/checkpoint.00000500");
    std::fs::create_dir(&cp).unwrap();
    std::fs::copy(ws.source.join("wal/00000000"), cp.join("00000000")).unwrap();
    let (code, v) = ws.run_json(&["plan"]);
    assert_eq!(code, 0, "{v}");
    let extra = v["extraneous"].to_string();
    assert!(
        extra.contains("wal/checkpoint.00000500\"")
            && !extra.contains("checkpoint.00000500/00000000"),
        "listed as one directory: {extra}"
    );
    let (code, v) = ws.run_json(&["apply", "--yes", "--phase", "final"]);
    assert_eq!(code, 0, "{v}");
    assert!(!cp.exists());
    let q = std::path::PathBuf::from(v["apply"]["quarantine_dir"].as_str().unwrap());
    assert!(q.join("wal/checkpoint.00000500/00000000").exists());
    assert_eq!(ws.run(&["verify", "--level", "deep"]).0, 0);
}

/// Regression: a final phase that is out of time before it starts changes nothing.
#[test]
fn a_final_phase_past_its_deadline_changes_nothing() {
    let ws = Workspace::new();
    assert_eq!(ws.run(&["apply", "--yes", "--phase", "presync"]).0, 0);
    std::fs::write(ws.target().join("wal-foreign-marker"), b"").unwrap();
    std::fs::create_dir_all(ws.target().join("wal")).unwrap();
    std::fs::write(ws.target().join("wal/00099999"), b"foreign").unwrap();
    let before = snapshot(&ws.target());
    let (code, v) = ws.run_json(&[
        "apply",
        "--yes",
        "--phase",
        "final",
        "--deadline",
        "2020-01-01T00:00:00Z",
    ]);
    // Refused as invalid input at the start, showing the current time (it ran as an
    // incomplete apply before, after planning).
    assert_eq!(code, 2, "{v}");
    assert_eq!(v["ok"], false);
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT").to_string();
    let err = v["error"].as_str().unwrap();
    assert!(err.contains("already past"), "{err}");
    assert!(err.contains(&now), "shows the current UTC time: {err}");
    assert_eq!(
        snapshot(&ws.target()),
        before,
        "a final phase past its deadline wrote something"
    );
    assert!(!ws.target().join("wal/checkpoint.00000000").exists());
}

/// The meta.json maxTime of a block directory.
fn max_time(block: &Path) -> i64 {
    let text = std::fs::read_to_string(block.join("meta.json")).unwrap();
    let m: serde_json::Value = serde_json::from_str(&text).unwrap();
    m["maxTime"].as_i64().unwrap()
}

/// Regression: between presync and final, the source's retention deletes its oldest block.
/// The copy promigrate made of it must not stay on the target (verify said "do not cut
/// over"): the final phase quarantines it, and plan, apply and verify agree.
#[test]
fn a_block_the_source_retention_deletes_after_the_presync_is_quarantined_by_the_final_phase() {
    let ws = Workspace::new();
    let (code, out, err) = ws.run(&["apply", "--yes", "--phase", "presync"]);
    assert_eq!(code, 0, "{out}{err}");
    let before = blocks(&ws.source);
    let oldest = before.iter().min_by_key(|b| max_time(b)).unwrap().clone();
    let newest = before.iter().map(|b| max_time(b)).max().unwrap();
    let ulid = oldest.file_name().unwrap().to_string_lossy().into_owned();
    assert!(ws.target().join(&ulid).join("meta.json").exists());
    // A real Prometheus whose retention is just shorter than the oldest block's age relative
    // to the newest block: it deletes that block when it opens the TSDB.
    let retention = format!("{}ms", newest - max_time(&oldest) - 1);
    let mut server =
        PromServer::start_with_retention(&ws.source, &ws.dir.path().join("prom"), &retention);
    let deadline = Instant::now() + Duration::from_secs(60);
    while oldest.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    server.stop();
    assert!(
        !oldest.exists(),
        "retention {retention} did not delete {ulid}:\n{}",
        server.log_text()
    );

    let (code, plan) = ws.run_json(&["plan"]);
    assert_eq!(code, 0, "{plan}");
    let extra = plan["extraneous"].as_array().unwrap();
    let gone = extra.iter().find(|e| e["rel"] == ulid.as_str());
    assert!(gone.is_some(), "plan does not list {ulid}: {plan}");
    assert_eq!(gone.unwrap()["kind"], "dropped", "{plan}");
    // The mark is this migration's: under another migration's name the block is not its to
    // move (it stays, as any foreign block).
    let plan_text = std::fs::read_to_string(&ws.plan).unwrap();
    std::fs::write(
        &ws.plan,
        plan_text.replace("name: test-migration", "name: other-migration"),
    )
    .unwrap();
    let (_, other) = ws.run_json(&["plan"]);
    let e = other["extraneous"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["rel"] == ulid.as_str())
        .cloned();
    assert_eq!(e.unwrap()["kind"], "block", "{other}");
    std::fs::write(&ws.plan, plan_text).unwrap();
    let (_, text, _) = ws.run(&["plan"]);
    assert!(
        text.contains("moved to quarantine by the final phase"),
        "{text}"
    );

    let (code, v) = ws.run_json(&["apply", "--yes", "--phase", "final"]);
    assert_eq!(code, 0, "{v}");
    let quarantined: Vec<&str> = v["apply"]["quarantined"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|q| q.as_str())
        .collect();
    assert!(quarantined.contains(&ulid.as_str()), "{v}");
    assert!(!ws.target().join(&ulid).exists());
    let q = std::path::PathBuf::from(v["apply"]["quarantine_dir"].as_str().unwrap());
    assert!(
        q.join(&ulid).join("meta.json").exists(),
        "moved, not deleted"
    );
    let (code, out, _) = ws.run(&["verify"]);
    assert_eq!(code, 0, "{out}");
}

/// A target block the source lacks that promigrate did not put there is not promigrate's
/// to move: it stays (without deleteExtraneous), and the plan says so.
#[test]
fn a_foreign_block_the_source_lacks_is_left_in_place() {
    let ws = Workspace::new();
    assert_eq!(ws.run(&["apply", "--yes"]).0, 0);
    let foreign = ws.target().join("01ARZ3NDEKTSV4RRFFQ69G5FAV");
    copy_tree(&some_block(&ws.source), &foreign);
    let meta = std::fs::read_to_string(foreign.join("meta.json")).unwrap();
    let mut m: serde_json::Value = serde_json::from_str(&meta).unwrap();
    m["ulid"] = "01ARZ3NDEKTSV4RRFFQ69G5FAV".into();
    m["compaction"]["sources"] = serde_json::json!(["01ARZ3NDEKTSV4RRFFQ69G5FAV"]);
    std::fs::write(foreign.join("meta.json"), m.to_string()).unwrap();
    let (_, plan) = ws.run_json(&["plan"]);
    let e = plan["extraneous"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["rel"] == "01ARZ3NDEKTSV4RRFFQ69G5FAV")
        .cloned();
    assert_eq!(e.unwrap()["kind"], "block", "{plan}");
    let (code, v) = ws.run_json(&["apply", "--yes", "--phase", "final"]);
    assert_eq!(code, 0, "{v}");
    assert!(foreign.join("meta.json").exists());
}
