//! Deep verification (issue 3): damage that a byte comparison cannot see, because the source
//! is already damaged and the copy is faithful. Each case damages source and target alike
//! after a clean migration; `verify --level deep` must exit 1 and name the damaged file, and
//! a real prometheus started on the damaged data must do what the report says it would.

mod common;

use common::*;
use std::path::{Path, PathBuf};

/// What a real prometheus 2.42 does with the damage (seen by starting one on it).
enum Observed {
    /// Exits before it is ready, logging this.
    FailsStart(&'static str),
    /// Starts, and a query over the damaged block fails with this.
    QueryFails(&'static str),
    /// Starts after logging this repair.
    Repairs(&'static str),
    /// Starts and answers.
    Serves,
}

struct Case {
    /// Damages a TSDB root; returns the damaged path relative to it.
    damage: fn(&Path) -> String,
    /// The effect promigrate reports (its snake_case name in JSON).
    effect: &'static str,
    /// Whether the cheap checks in `plan` see it (then checksum verify fails on the blocker).
    cheap: bool,
    observed: Observed,
}

fn oldest_block(root: &Path) -> PathBuf {
    let mut blocks: Vec<(i64, PathBuf)> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("meta.json").exists())
        .map(|p| {
            let m: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(p.join("meta.json")).unwrap())
                    .unwrap();
            (m["minTime"].as_i64().unwrap(), p)
        })
        .collect();
    blocks.sort();
    blocks.remove(0).1
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap().to_string_lossy().into_owned()
}

fn flip(p: &Path, off: u64) {
    let mut b = std::fs::read(p).unwrap();
    b[off as usize] ^= 0xff;
    std::fs::write(p, b).unwrap();
}

/// The index TOC: symbols, series, label indices, label offset table, postings, postings table.
fn toc(index: &Path) -> [u64; 6] {
    let b = std::fs::read(index).unwrap();
    let t = &b[b.len() - 52..];
    std::array::from_fn(|i| u64::from_be_bytes(t[i * 8..i * 8 + 8].try_into().unwrap()))
}

/// Offset of the postings list of `name=value`, from the postings offset table.
fn postings_offset(index: &Path, name: &str, value: &str) -> u64 {
    use promigrate::tsdb::check::scan::uvarint;
    let b = std::fs::read(index).unwrap();
    let mut at = toc(index)[5] as usize + 8; // len, #entries
    loop {
        let (_, n) = uvarint(&b[at..]).unwrap();
        at += n;
        let mut strs = Vec::new();
        for _ in 0..2 {
            let (l, n) = uvarint(&b[at..]).unwrap();
            at += n;
            strs.push(String::from_utf8(b[at..at + l as usize].to_vec()).unwrap());
            at += l as usize;
        }
        let (off, n) = uvarint(&b[at..]).unwrap();
        at += n;
        if strs[0] == name && strs[1] == value {
            return off;
        }
    }
}

fn check_case(case: &Case) {
    let ws = Workspace::new();
    let (code, _, err) = ws.run(&["apply", "--yes"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = ws.run(&["verify", "--level", "deep"]);
    assert_eq!(code, 0, "a clean copy must pass deep verification:\n{out}");

    let damaged = (case.damage)(&ws.source);
    assert_eq!((case.damage)(&ws.target()), damaged);

    let (code, out, _) = ws.run(&["verify"]);
    if case.cheap {
        assert_eq!(
            code, 1,
            "plan's cheap checks see this damage in the source:\n{out}"
        );
    } else {
        assert_eq!(
            code, 0,
            "a content comparison cannot see damage copied faithfully:\n{out}"
        );
    }
    let (code, v) = ws.run_json(&["verify", "--level", "deep"]);
    assert_eq!(code, 1, "{v}");
    let named = v["differences"].as_array().unwrap().iter().any(|d| {
        d["sigil"] == "!"
            && d["path"]
                .as_str()
                .unwrap()
                .starts_with(damaged.trim_end_matches('/'))
    });
    assert!(named, "deep verify does not name {damaged}: {v}");
    let mut c = promigrate();
    c.args(["inspect", "--deep", "--output", "json"])
        .arg(ws.target());
    let (code, out, _) = run(c);
    assert_eq!(code, 1, "{out}");
    let inspect: serde_json::Value = serde_json::from_str(&out).unwrap();
    let problems = inspect["format_problems"].as_array().unwrap();
    assert!(
        problems.iter().any(|p| p["path"]
            .as_str()
            .unwrap()
            .starts_with(damaged.trim_end_matches('/'))
            && p["effect"] == case.effect),
        "expected effect {} for {damaged}: {out}",
        case.effect
    );

    // What a real prometheus does with the same damage.
    let data = ws.dir.path().join("prom-data");
    copy_tree(&ws.target(), &data);
    let server = PromServer::try_start(&data, &ws.dir.path().join("prom"));
    match (&case.observed, server) {
        (Observed::FailsStart(msg), Err(log)) => {
            assert!(log.contains(msg), "expected {msg:?} in:\n{log}")
        }
        (Observed::FailsStart(_), Ok(s)) => panic!(
            "prometheus started on damage reported as fatal:\n{}",
            s.log_text()
        ),
        (_, Err(log)) => panic!("prometheus failed to start:\n{log}"),
        (Observed::Repairs(msg), Ok(s)) => assert!(
            s.log_text().contains(msg),
            "expected {msg:?} in:\n{}",
            s.log_text()
        ),
        (Observed::Serves, Ok(s)) => {
            let at = jiff::Timestamp::now().as_second();
            let r = s.try_query("count(count_over_time(demo_requests_total[10d]))", at);
            assert!(r.is_ok(), "{r:?}");
        }
        (Observed::QueryFails(msg), Ok(s)) => {
            let meta: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(oldest_block(&data).join("meta.json")).unwrap(),
            )
            .unwrap();
            let (a, z) = (
                meta["minTime"].as_i64().unwrap() / 1000,
                meta["maxTime"].as_i64().unwrap() / 1000,
            );
            let errors: Vec<String> = ["demo_requests_total", "demo_temperature_celsius"]
                .iter()
                .filter_map(|m| {
                    s.try_query(&format!("count_over_time({m}[{}s])", z - a), z)
                        .err()
                })
                .collect();
            assert!(
                errors.iter().any(|e| e.contains(msg)),
                "expected a query to fail with {msg:?}, got {errors:?}"
            );
        }
    }
}

#[test]
fn flipped_byte_in_chunk_data() {
    check_case(&Case {
        damage: |root| {
            let f = oldest_block(root).join("chunks/000001");
            flip(&f, std::fs::metadata(&f).unwrap().len() / 2);
            rel(root, &f)
        },
        effect: "query_errors",
        cheap: false,
        observed: Observed::QueryFails("checksum mismatch"),
    });
}

#[test]
fn flipped_byte_in_a_series_entry() {
    check_case(&Case {
        damage: |root| {
            let idx = oldest_block(root).join("index");
            flip(&idx, toc(&idx)[1] + 6);
            rel(root, &idx)
        },
        effect: "query_errors",
        cheap: false,
        observed: Observed::QueryFails("invalid checksum"),
    });
}

#[test]
fn flipped_byte_in_a_postings_list() {
    check_case(&Case {
        damage: |root| {
            let idx = oldest_block(root).join("index");
            // Inside the first series reference of the list for one metric name.
            flip(
                &idx,
                postings_offset(&idx, "__name__", "demo_temperature_celsius") + 8,
            );
            rel(root, &idx)
        },
        effect: "query_errors",
        cheap: false,
        // Prometheus does not check this CRC on read; the flipped reference breaks decoding.
        observed: Observed::QueryFails("decode postings"),
    });
}

#[test]
fn flipped_byte_in_tombstones() {
    check_case(&Case {
        damage: |root| {
            let t = std::fs::read_dir(root)
                .unwrap()
                .map(|e| e.unwrap().path().join("tombstones"))
                .filter(|t| t.exists())
                .max_by_key(|t| std::fs::metadata(t).unwrap().len())
                .unwrap();
            assert!(
                std::fs::metadata(&t).unwrap().len() > 9,
                "the fixture has a real tombstone"
            );
            flip(&t, 6);
            rel(root, &t)
        },
        effect: "fails_start",
        cheap: true,
        observed: Observed::FailsStart("checksum did not match"),
    });
}

#[test]
fn renamed_chunk_segment() {
    check_case(&Case {
        damage: |root| {
            let c = oldest_block(root).join("chunks");
            std::fs::rename(c.join("000001"), c.join("000002")).unwrap();
            rel(root, &c.join("000002"))
        },
        effect: "wrong_data",
        cheap: true,
        // With the only segment renamed, prometheus still reads it: chunks are addressed by
        // the file's position in the list. With several segments, one missing shifts the rest.
        observed: Observed::Serves,
    });
}

#[test]
fn duplicated_head_chunk_file_leaves_a_gap() {
    check_case(&Case {
        damage: |root| {
            std::fs::copy(
                root.join("chunks_head/000001"),
                root.join("chunks_head/000003"),
            )
            .unwrap();
            "chunks_head/".to_string()
        },
        effect: "fails_start",
        cheap: true,
        observed: Observed::FailsStart("found unsequential head chunk files"),
    });
}

#[test]
fn wal_segment_gap() {
    check_case(&Case {
        damage: |root| {
            std::fs::rename(root.join("wal/00000001"), root.join("wal/00000003")).unwrap();
            "wal/".to_string()
        },
        effect: "fails_start",
        cheap: true,
        observed: Observed::FailsStart("segments are not sequential"),
    });
}

#[test]
fn flipped_byte_inside_a_wal_record() {
    check_case(&Case {
        damage: |root| {
            flip(&root.join("wal/00000000"), 200);
            "wal/00000000".to_string()
        },
        effect: "drops_data",
        cheap: false,
        observed: Observed::Repairs("Starting corruption repair"),
    });
}

#[test]
fn meta_json_ulid_differs_from_the_directory() {
    check_case(&Case {
        damage: |root| {
            let b = oldest_block(root);
            let name = b.file_name().unwrap().to_string_lossy().into_owned();
            let meta = std::fs::read_to_string(b.join("meta.json")).unwrap();
            std::fs::write(
                b.join("meta.json"),
                meta.replace(&name, "01ARZ3NDEKTSV4RRFFQ69G5FAV"),
            )
            .unwrap();
            rel(root, &b.join("meta.json"))
        },
        effect: "undeletable",
        cheap: true,
        observed: Observed::Serves,
    });
}

#[test]
fn a_damaged_source_block_blocks_the_plan_until_excluded() {
    let ws = Workspace::new();
    let b = oldest_block(&ws.source);
    let ulid = b.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::rename(b.join("chunks/000001"), b.join("chunks/000002")).unwrap();
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("source block {ulid} is damaged"))
            && out.contains(&format!("excludeBlocks: [{ulid}]")),
        "{out}"
    );

    ws.write_plan(&format!("  excludeBlocks: [{ulid}]\n"));
    let (code, v) = ws.run_json(&["plan"]);
    assert_eq!(code, 0, "{v}");
    assert!(
        v["skipped"]
            .to_string()
            .contains("excluded by transfer.excludeBlocks")
    );
    assert!(
        !v["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["ulid"] == ulid.as_str())
    );
    assert_eq!(ws.run(&["apply", "--yes"]).0, 0);
    let (code, out, _) = ws.run(&["verify", "--level", "deep"]);
    assert_eq!(code, 0, "{out}");
    assert!(!ws.target().join(&ulid).exists());

    std::fs::write(
        &ws.plan,
        std::fs::read_to_string(&ws.plan)
            .unwrap()
            .replace(&ulid, "not-a-ulid"),
    )
    .unwrap();
    let (code, _, err) = ws.run(&["plan"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("`transfer.excludeBlocks") && err.contains("not a block ULID"),
        "{err}"
    );
}

#[test]
fn head_repair_drops_files_before_the_last_gap_and_prometheus_starts() {
    let ws = Workspace::new();
    let head = ws.source.join("chunks_head");
    // 000001 | gap | 000003: prometheus refuses this directory.
    std::fs::copy(head.join("000001"), head.join("000003")).unwrap();
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("chunks_head/ has a gap") && out.contains("headRepair: dropUnsequential"),
        "{out}"
    );

    ws.write_plan("  headRepair: dropUnsequential\n");
    let (code, v) = ws.run_json(&["plan"]);
    assert_eq!(code, 0, "{v}");
    let repairs = v["repairs"].to_string();
    assert!(
        repairs.contains("dropping chunks_head/000001") && repairs.contains("UTC are lost"),
        "the plan states the head time range lost: {repairs}"
    );
    let (_, text, _) = ws.run(&["plan"]);
    assert!(text.contains("REPAIR: chunks_head/"), "{text}");
    assert_eq!(ws.run(&["apply", "--yes"]).0, 0);
    assert!(
        !ws.target().join("chunks_head/000001").exists()
            && ws.target().join("chunks_head/000003").exists()
    );
    let (code, out, _) = ws.run(&["verify", "--level", "deep"]);
    assert_eq!(code, 0, "{out}");
    // The source still has the gap (it is never written); the repaired copy opens.
    assert!(head.join("000001").exists());
    let data = ws.dir.path().join("prom-data");
    copy_tree(&ws.target(), &data);
    let s = PromServer::try_start(&data, &ws.dir.path().join("prom"))
        .unwrap_or_else(|log| panic!("{log}"));
    drop(s);
}

#[test]
fn wal_repair_only_when_a_checkpoint_covers_the_dropped_segments() {
    let ws = Workspace::new();
    let wal = ws.source.join("wal");
    // 00000000 | gap | 00000002, and no checkpoint: not repairable without losing data.
    std::fs::rename(wal.join("00000001"), wal.join("00000002")).unwrap();
    ws.write_plan("  headRepair: dropUnsequential\n");
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("cannot be repaired") && out.contains("not covered by a checkpoint"),
        "{out}"
    );

    // A checkpoint.00000001 holding segment 0's records covers everything before the gap.
    std::fs::create_dir(wal.join("checkpoint.00000001")).unwrap();
    std::fs::copy(
        wal.join("00000000"),
        wal.join("checkpoint.00000001/00000000"),
    )
    .unwrap();
    let (code, v) = ws.run_json(&["plan"]);
    assert_eq!(code, 0, "{v}");
    assert!(v["repairs"].to_string().contains("nothing is lost"), "{v}");
    assert_eq!(ws.run(&["apply", "--yes"]).0, 0);
    assert!(
        !ws.target().join("wal/00000000").exists() && ws.target().join("wal/00000002").exists()
    );
    let (code, out, _) = ws.run(&["verify", "--level", "deep"]);
    assert_eq!(code, 0, "{out}");
    let data = ws.dir.path().join("prom-data");
    copy_tree(&ws.target(), &data);
    let s = PromServer::try_start(&data, &ws.dir.path().join("prom"))
        .unwrap_or_else(|log| panic!("{log}"));
    assert!(!s.log_text().contains("segments are not sequential"));
}

/// No false positive on at least 1 GiB of real blocks (promtool blocks under fresh ULIDs).
#[test]
fn a_gib_of_real_blocks_passes_deep_checks() {
    let big = gib_fixture();
    let mut c = promigrate();
    c.args(["inspect", "--deep", "--output", "json"]).arg(big);
    let (code, out, err) = run(c);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {err}"));
    assert_eq!(code, 0, "{}", v["format_problems"]);
    assert!(v["total_block_bytes"].as_u64().unwrap() >= 1 << 30);
    assert!(v["blocks"].as_array().unwrap().len() > 100);
}

/// Regression: a numbering gap in wbl/ (which nothing repairs) blocks the plan.
#[test]
fn a_wbl_gap_blocks_the_plan() {
    let ws = Workspace::new();
    std::fs::create_dir(ws.source.join("wbl")).unwrap();
    std::fs::copy(
        ws.source.join("wal/00000000"),
        ws.source.join("wbl/00000000"),
    )
    .unwrap();
    std::fs::copy(
        ws.source.join("wal/00000000"),
        ws.source.join("wbl/00000002"),
    )
    .unwrap();
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("source wbl/ is damaged") && out.contains("segments are not sequential"),
        "{out}"
    );
}

/// Only the newest checkpoint is read by prometheus, and damage in it stops the start.
#[test]
fn only_the_newest_checkpoint_is_checked_and_its_damage_is_fatal() {
    let ws = Workspace::new();
    let wal = ws.source.join("wal");
    for n in ["checkpoint.00000000", "checkpoint.00000001"] {
        std::fs::create_dir(wal.join(n)).unwrap();
        std::fs::copy(wal.join("00000000"), wal.join(n).join("00000000")).unwrap();
    }
    // Damage both; only the newest matters.
    for n in ["checkpoint.00000000", "checkpoint.00000001"] {
        let f = wal.join(n).join("00000000");
        let mut b = std::fs::read(&f).unwrap();
        b[200] ^= 0xff;
        std::fs::write(&f, b).unwrap();
    }
    let mut c = promigrate();
    c.args(["inspect", "--deep", "--output", "json"])
        .arg(&ws.source);
    let (code, out, _) = run(c);
    assert_eq!(code, 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let problems = v["format_problems"].as_array().unwrap();
    assert!(
        problems.iter().any(
            |p| p["path"] == "wal/checkpoint.00000001/00000000" && p["effect"] == "fails_start"
        ),
        "{out}"
    );
    assert!(
        !problems
            .iter()
            .any(|p| p["path"].as_str().unwrap().contains("checkpoint.00000000")),
        "{out}"
    );
}
