//! Deep verification (issue 3): damage that a byte comparison cannot see, because the source
//! is already damaged and the copy is faithful. Each case damages source and target alike
//! after a clean migration; `verify --level deep` must exit 1 and name the damaged file, and
//! a real prometheus started on the damaged data must do what the report says it would.
//!
//! Every case runs twice (issue 14): on Debian's Prometheus 2.42 data with a real 2.42, and on
//! Prometheus 3.16 data (scripts/gen-tsdb3.sh) with a real 3.16 run with the generator's
//! features ([`PromFlavor::prom3`]). A case is a function of the [`Flavor`]; [`on_both!`] makes
//! its two tests, `<case>::on_2_42` and `<case>::on_3_x`.

mod common;

use common::*;
use std::path::{Path, PathBuf};

/// Which data a case damages and which real Prometheus shows what happens to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavor {
    /// `fixture()` (scripts/gen-tsdb.sh) and Debian's prometheus 2.42.
    V2_42,
    /// `prom3_fixture()` (scripts/gen-tsdb3.sh) and Prometheus 3.16 with its features.
    V3,
}

impl Flavor {
    fn fixture(self) -> &'static Path {
        match self {
            Flavor::V2_42 => fixture(),
            Flavor::V3 => prom3_fixture(),
        }
    }

    fn workspace(self) -> Workspace {
        Workspace::from_fixture(self.fixture(), "")
    }

    /// The prometheus that shows what happens: 2.42 as Debian runs it, 3.x with the features
    /// the fixture was written with (the chunk snapshot among them).
    fn server(self) -> PromFlavor {
        match self {
            Flavor::V2_42 => PromFlavor::default(),
            Flavor::V3 => PromFlavor::prom3(),
        }
    }

    /// This flavor's prometheus with or without `memory-snapshot-on-shutdown`: with it,
    /// Prometheus loads the newest chunk snapshot at startup instead of replaying the WAL
    /// before the snapshot's position (and writes one when stopped).
    fn server_with_snapshots(self, on: bool) -> PromFlavor {
        const FEATURE: &str = "memory-snapshot-on-shutdown";
        let mut f = self.server();
        match self {
            Flavor::V2_42 if on => f.flags.push(format!("--enable-feature={FEATURE}")),
            Flavor::V2_42 => {}
            Flavor::V3 => {
                assert!(f.flags[0].starts_with("--enable-feature="), "{:?}", f.flags);
                let features: Vec<&str> = PROM3_FEATURES
                    .split(',')
                    .filter(|x| on || *x != FEATURE)
                    .collect();
                f.flags[0] = format!("--enable-feature={}", features.join(","));
            }
        }
        f
    }

    /// Starts this flavor's prometheus on `data` as root; `Err(log)` if it exits first.
    fn try_start(self, data: &Path, work: &Path) -> Result<PromServer, String> {
        PromServer::try_start_flavor(&self.server(), data, work, None)
    }

    /// Gives the workspace's source a chunk snapshot after its first WAL segment (the one the
    /// cases damage): 3.x data has one (chunk_snapshot.000004.0001605632, at the end of
    /// wal/00000004, after 00000002 and 00000003); 2.42 data gets one from a real 2.42 run with
    /// `memory-snapshot-on-shutdown` (started, then stopped with SIGTERM:
    /// chunk_snapshot.000002.0000000000, after wal/00000000 and 00000001). Returns the
    /// snapshot's WAL segment number.
    fn with_chunk_snapshot(self, ws: &Workspace) -> u64 {
        if self == Flavor::V2_42 {
            let mut s = PromServer::start_flavor(
                &self.server_with_snapshots(true),
                &ws.source,
                &ws.dir.path().join("snapshot-writer"),
                None,
            );
            s.stop();
            let log = s.log_text();
            assert!(log.contains("chunk snapshot complete"), "{log}");
            let _ = std::fs::remove_file(ws.source.join("lock"));
        }
        let snaps = chunk_snapshots(&ws.source);
        assert_eq!(snaps.len(), 1, "one chunk snapshot: {snaps:?}");
        let name = snaps[0].file_name().unwrap().to_string_lossy().into_owned();
        let index = name.split('.').nth(1).unwrap().parse().unwrap();
        assert!(
            numbered(&ws.source.join("wal")).first().unwrap().0 < index,
            "{name} covers no WAL segment"
        );
        index
    }

    /// Metrics with samples in the oldest block (promtool's backfill in both fixtures).
    fn oldest_block_metrics(self) -> &'static [&'static str] {
        match self {
            Flavor::V2_42 => &["demo_requests_total", "demo_temperature_celsius"],
            Flavor::V3 => &["backfill_value"],
        }
    }
}

/// `mod <case> { #[test] fn on_2_42(); #[test] fn on_3_x() }`, each calling `<case>(flavor)`.
macro_rules! on_both {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[test]
            fn on_2_42() {
                super::$case(super::Flavor::V2_42)
            }
            #[test]
            fn on_3_x() {
                super::$case(super::Flavor::V3)
            }
        }
    )*};
}

/// What the real prometheus does with the damage (seen by starting one on it).
enum Observed {
    /// Exits before it is ready, logging this.
    FailsStart(&'static str),
    /// Starts, and a query over the damaged block fails with this.
    QueryFails(&'static str),
    /// Starts after logging this repair.
    Repairs(&'static str),
    /// Starts and answers.
    Serves,
    /// Starts and answers without logging this (it does not read the damage at startup).
    ServesWithout(&'static str),
    /// Exits before it is ready, logging this, after deleting every numbered WAL segment
    /// (its WAL repair does that first).
    FailsStartDeletingWal(&'static str),
}

struct Case<'a> {
    /// Damages a TSDB root; returns the damaged path relative to it.
    damage: &'a dyn Fn(&Path) -> String,
    /// The effect promigrate reports (its snake_case name in JSON).
    effect: &'static str,
    /// Whether the cheap checks in `plan` see it (then checksum verify fails on the blocker).
    cheap: bool,
    /// The prometheus that shows the effect; `None`: [`Flavor::server`].
    server: Option<PromFlavor>,
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

/// The numbered files directly in `dir` (`wal/`, `wbl/`, `chunks_head/`), by number.
fn numbered(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let n = p.file_name()?.to_str()?.parse().ok()?;
            p.is_file().then_some((n, p))
        })
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no numbered file in {}", dir.display());
    v
}

/// `dir/<n>` named as Prometheus names the files of `dir` (6 digits in chunks_head/, else 8).
fn numbered_name(dir: &Path, n: u64) -> PathBuf {
    if dir.ends_with("chunks_head") {
        dir.join(format!("{n:06}"))
    } else {
        dir.join(format!("{n:08}"))
    }
}

/// The chunk snapshot directories of a TSDB.
fn chunk_snapshots(root: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("chunk_snapshot.")
        })
        .collect()
}

/// Removes the chunk snapshots of a TSDB: Prometheus then replays the whole WAL, as a 2.42
/// without `memory-snapshot-on-shutdown` does (and 3.x without a snapshot to load).
fn remove_chunk_snapshots(root: &Path) {
    for d in chunk_snapshots(root) {
        std::fs::remove_dir_all(d).unwrap();
    }
}

/// Migrates `ws` (whose source may have been prepared), damages source and target alike,
/// and checks what verify and inspect report; then a real prometheus on a copy of the
/// damaged target must do what the case observed.
fn check_case(flavor: Flavor, ws: &Workspace, case: &Case) {
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
    let named = only(&v)["differences"].as_array().unwrap().iter().any(|d| {
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

    let server = case.server.clone().unwrap_or_else(|| flavor.server());
    observe(flavor, ws, &server, &case.observed);
}

/// What a real prometheus (`server`) does with the damaged target: started on a fresh copy
/// of it, it must do what `observed` says.
fn observe(flavor: Flavor, ws: &Workspace, server: &PromFlavor, observed: &Observed) {
    let n = std::fs::read_dir(ws.dir.path()).unwrap().count();
    let data = ws.dir.path().join(format!("prom-data-{n}"));
    copy_tree(&ws.target(), &data);
    let started = PromServer::try_start_flavor(
        server,
        &data,
        &ws.dir.path().join(format!("prom-{n}")),
        None,
    );
    match (observed, started) {
        (Observed::FailsStart(msg), Err(log)) => {
            assert!(log.contains(msg), "expected {msg:?} in:\n{log}")
        }
        (Observed::FailsStartDeletingWal(msg), Err(log)) => {
            assert!(log.contains(msg), "expected {msg:?} in:\n{log}");
            let left: Vec<_> = std::fs::read_dir(data.join("wal"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<u64>().is_ok())
                .collect();
            assert!(left.is_empty(), "WAL segments left: {left:?}\n{log}");
        }
        (Observed::FailsStart(_) | Observed::FailsStartDeletingWal(_), Ok(s)) => panic!(
            "prometheus started on damage reported as fatal:\n{}",
            s.log_text()
        ),
        (_, Err(log)) => panic!("prometheus failed to start:\n{log}"),
        (Observed::Repairs(msg), Ok(s)) => assert!(
            s.log_text().contains(msg),
            "expected {msg:?} in:\n{}",
            s.log_text()
        ),
        (Observed::ServesWithout(msg), Ok(s)) => {
            let log = s.log_text();
            assert!(!log.contains(msg), "unexpected {msg:?} in:\n{log}");
            let at = jiff::Timestamp::now().as_second();
            let m = flavor.oldest_block_metrics()[0];
            let r = s.try_query(&format!("count(count_over_time({m}[10d]))"), at);
            assert!(r.is_ok(), "{r:?}");
        }
        (Observed::Serves, Ok(s)) => {
            let at = jiff::Timestamp::now().as_second();
            let m = flavor.oldest_block_metrics()[0];
            let r = s.try_query(&format!("count(count_over_time({m}[10d]))"), at);
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
            let errors: Vec<String> = flavor
                .oldest_block_metrics()
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

on_both!(
    flipped_byte_in_chunk_data,
    flipped_byte_in_a_series_entry,
    flipped_byte_in_a_postings_list,
    flipped_byte_in_tombstones,
    renamed_chunk_segment,
    duplicated_head_chunk_file_leaves_a_gap,
    wal_segment_gap,
    flipped_byte_inside_a_wal_record,
    flipped_byte_in_a_wal_record_covered_by_a_chunk_snapshot,
    meta_json_ulid_differs_from_the_directory,
    a_damaged_source_block_blocks_the_plan_until_excluded,
    head_repair_drops_files_before_the_last_gap_and_prometheus_starts,
    wal_repair_only_when_a_checkpoint_covers_the_dropped_segments,
    a_wbl_gap_blocks_the_plan,
    only_the_newest_checkpoint_is_checked_and_its_damage_is_fatal,
    a_damaged_checkpoint_covered_by_a_chunk_snapshot,
);

fn flipped_byte_in_chunk_data(flavor: Flavor) {
    check_case(
        flavor,
        &flavor.workspace(),
        &Case {
            damage: &|root| {
                let f = oldest_block(root).join("chunks/000001");
                // In a chunk the queries read: the last one (the last series' newest). The
                // middle of the file was in a chunk of 2.42's deleted series once, which a
                // tombstone covered whole, so Prometheus never read it (seen in CI).
                let bytes = std::fs::read(&f).unwrap();
                let (_, data, len, _) = *segment_chunks(&bytes, false).last().unwrap();
                flip(&f, (data + len / 2) as u64);
                rel(root, &f)
            },
            effect: "query_errors",
            cheap: false,
            server: None,
            observed: Observed::QueryFails("checksum mismatch"),
        },
    );
}

fn flipped_byte_in_a_series_entry(flavor: Flavor) {
    check_case(
        flavor,
        &flavor.workspace(),
        &Case {
            damage: &|root| {
                let idx = oldest_block(root).join("index");
                flip(&idx, toc(&idx)[1] + 6);
                rel(root, &idx)
            },
            effect: "query_errors",
            cheap: false,
            server: None,
            observed: Observed::QueryFails("invalid checksum"),
        },
    );
}

fn flipped_byte_in_a_postings_list(flavor: Flavor) {
    let metric = *flavor.oldest_block_metrics().last().unwrap();
    check_case(
        flavor,
        &flavor.workspace(),
        &Case {
            damage: &|root| {
                let idx = oldest_block(root).join("index");
                // Inside the first series reference of the list for one metric name.
                flip(&idx, postings_offset(&idx, "__name__", metric) + 8);
                rel(root, &idx)
            },
            effect: "query_errors",
            cheap: false,
            server: None,
            // 2.42 does not check this CRC on read, the flipped reference breaks decoding
            // ("decode postings: invalid size"); 3.16 checks it ("decode postings: invalid
            // checksum").
            observed: Observed::QueryFails("decode postings"),
        },
    );
}

fn flipped_byte_in_tombstones(flavor: Flavor) {
    check_case(
        flavor,
        &flavor.workspace(),
        &Case {
            damage: &|root| {
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
            server: None,
            observed: Observed::FailsStart("checksum did not match"),
        },
    );
}

fn renamed_chunk_segment(flavor: Flavor) {
    check_case(
        flavor,
        &flavor.workspace(),
        &Case {
            damage: &|root| {
                let c = oldest_block(root).join("chunks");
                std::fs::rename(c.join("000001"), c.join("000002")).unwrap();
                rel(root, &c.join("000002"))
            },
            effect: "wrong_data",
            cheap: true,
            server: None,
            // With the only segment renamed, prometheus still reads it: chunks are addressed by
            // the file's position in the list. With several segments, one missing shifts the rest.
            observed: Observed::Serves,
        },
    );
}

fn duplicated_head_chunk_file_leaves_a_gap(flavor: Flavor) {
    check_case(
        flavor,
        &flavor.workspace(),
        &Case {
            damage: &|root| {
                // The first head chunk file copied to the last number + 2 (2.42: 000001 |
                // gap | 000003; 3.x: 000007 000008 | gap | 000010).
                let dir = root.join("chunks_head");
                let files = numbered(&dir);
                let last = files.last().unwrap().0;
                std::fs::copy(&files[0].1, numbered_name(&dir, last + 2)).unwrap();
                "chunks_head/".to_string()
            },
            effect: "fails_start",
            cheap: true,
            server: None,
            observed: Observed::FailsStart("found unsequential head chunk files"),
        },
    );
}

fn wal_segment_gap(flavor: Flavor) {
    check_case(
        flavor,
        &flavor.workspace(),
        &Case {
            damage: &|root| {
                // The last segment renamed to its number + 2 (2.42: 00000000 | gap |
                // 00000003; 3.x: 00000002 00000003 | gap | 00000006).
                let dir = root.join("wal");
                let (last, path) = numbered(&dir).pop().unwrap();
                std::fs::rename(path, numbered_name(&dir, last + 2)).unwrap();
                "wal/".to_string()
            },
            effect: "fails_start",
            cheap: true,
            server: None,
            observed: Observed::FailsStart("segments are not sequential"),
        },
    );
}

/// A WAL segment Prometheus replays at startup: no chunk snapshot (3.x data: its snapshot
/// removed, so that the whole WAL is replayed as on the 2.42 data).
fn flipped_byte_inside_a_wal_record(flavor: Flavor) {
    check_case(
        flavor,
        &flavor.workspace(),
        &Case {
            damage: &|root| {
                remove_chunk_snapshots(root);
                let first = numbered(&root.join("wal")).remove(0).1;
                flip(&first, 200);
                rel(root, &first)
            },
            effect: "drops_data",
            cheap: false,
            server: None,
            observed: Observed::Repairs("Starting corruption repair"),
        },
    );
}

/// A WAL segment before the newest chunk snapshot's position: Prometheus with
/// `memory-snapshot-on-shutdown` loads the snapshot and does not read the segment at startup
/// (no repair, nothing lost); without that feature it replays the segment and repairs it by
/// truncating, as above. Both are shown on both versions.
fn flipped_byte_in_a_wal_record_covered_by_a_chunk_snapshot(flavor: Flavor) {
    let ws = flavor.workspace();
    flavor.with_chunk_snapshot(&ws);
    check_case(
        flavor,
        &ws,
        &Case {
            damage: &|root| {
                let first = numbered(&root.join("wal")).remove(0).1;
                flip(&first, 200);
                rel(root, &first)
            },
            effect: "covered_by_snapshot",
            cheap: false,
            server: Some(flavor.server_with_snapshots(true)),
            observed: Observed::ServesWithout("attempting repair"),
        },
    );
    observe(
        flavor,
        &ws,
        &flavor.server_with_snapshots(false),
        &Observed::Repairs("Starting corruption repair"),
    );
}

fn meta_json_ulid_differs_from_the_directory(flavor: Flavor) {
    check_case(
        flavor,
        &flavor.workspace(),
        &Case {
            damage: &|root| {
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
            server: None,
            observed: Observed::Serves,
        },
    );
}

fn a_damaged_source_block_blocks_the_plan_until_excluded(flavor: Flavor) {
    let ws = flavor.workspace();
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
        only(&v)["skipped"]
            .to_string()
            .contains("excluded by transfer.excludeBlocks")
    );
    assert!(
        !only(&v)["blocks"]
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

fn head_repair_drops_files_before_the_last_gap_and_prometheus_starts(flavor: Flavor) {
    let ws = flavor.workspace();
    let head = ws.source.join("chunks_head");
    // first … last | gap | a copy of the first: prometheus refuses this directory.
    let files = numbered(&head);
    let (first, last) = (files[0].1.clone(), files.last().unwrap().0);
    let copy = numbered_name(&head, last + 2);
    std::fs::copy(&first, &copy).unwrap();
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("chunks_head/ has a gap") && out.contains("headRepair: dropUnsequential"),
        "{out}"
    );

    ws.write_plan("  headRepair: dropUnsequential\n");
    let (code, v) = ws.run_json(&["plan"]);
    assert_eq!(code, 0, "{v}");
    let repairs = only(&v)["repairs"].to_string();
    assert!(
        repairs.contains(&format!("dropping {}", rel(&ws.source, &first)))
            && repairs.contains("UTC are lost"),
        "the plan states the head time range lost: {repairs}"
    );
    let (_, text, _) = ws.run(&["plan"]);
    assert!(text.contains("REPAIR: chunks_head/"), "{text}");
    assert_eq!(ws.run(&["apply", "--yes"]).0, 0);
    let kept = rel(&ws.source, &copy);
    assert!(
        files
            .iter()
            .all(|(_, p)| !ws.target().join(rel(&ws.source, p)).exists())
            && ws.target().join(&kept).exists()
    );
    let (code, out, _) = ws.run(&["verify", "--level", "deep"]);
    assert_eq!(code, 0, "{out}");
    // The source still has the gap (it is never written); the repaired copy opens.
    assert!(first.exists());
    let data = ws.dir.path().join("prom-data");
    copy_tree(&ws.target(), &data);
    let s = flavor
        .try_start(&data, &ws.dir.path().join("prom"))
        .unwrap_or_else(|log| panic!("{log}"));
    drop(s);
    if chunk_snapshots(&ws.source).is_empty() {
        return; // 2.42 data: no chunk snapshot, the WAL is replayed
    }
    // 3.x data has a chunk snapshot: the plan says that a Prometheus loading it replays no WAL
    // before it, so the range is lost although the WAL holds it. Samples in that range: a
    // Prometheus 3 on the fixture, on the repaired copy with the snapshot loaded (fewer), and
    // without the feature (the WAL gives them back).
    assert!(
        repairs.contains("with memory-snapshot-on-shutdown it loads chunk_snapshot."),
        "{repairs}"
    );
    let text = repairs.split("head chunks from ").nth(1).unwrap();
    let (a, rest) = text.split_once(" to ").unwrap();
    let z = rest.split_once(" UTC").unwrap().0;
    let (a, z): (jiff::Timestamp, jiff::Timestamp) = (a.parse().unwrap(), z.parse().unwrap());
    let q = format!(
        "sum(count_over_time(feed_huge_histogram[{}s]))",
        z.as_second() - a.as_second() + 1
    );
    let count = |server: &PromFlavor, data: &Path, name: &str| -> u64 {
        let copy = ws.dir.path().join(format!("{name}-data"));
        copy_tree(data, &copy);
        let _ = std::fs::remove_file(copy.join("lock"));
        let s = PromServer::start_flavor(server, &copy, &ws.dir.path().join(name), None);
        let v = s.try_query(&q, z.as_second()).unwrap();
        v["result"][0]["value"][1]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let reference = count(&flavor.server(), flavor.fixture(), "reference");
    let with_snapshot = count(&flavor.server_with_snapshots(true), &ws.target(), "snap");
    let without = count(&flavor.server_with_snapshots(false), &ws.target(), "nosnap");
    assert!(
        with_snapshot < reference && without == reference,
        "samples in the dropped range: {reference} on the fixture, {with_snapshot} on the repaired copy with the snapshot loaded, {without} without"
    );
}

fn wal_repair_only_when_a_checkpoint_covers_the_dropped_segments(flavor: Flavor) {
    let ws = flavor.workspace();
    let wal = ws.source.join("wal");
    // The last segment renamed to its number + 1 leaves a gap before it, and no checkpoint
    // covers the segments before the gap (2.42: 00000000 | gap | 00000002, no checkpoint;
    // 3.x: 00000002 00000003 | gap | 00000005, checkpoint.00000001): not repairable
    // without losing data.
    let segs = numbered(&wal);
    let (last, last_path) = segs.last().unwrap().clone();
    std::fs::rename(&last_path, numbered_name(&wal, last + 1)).unwrap();
    ws.write_plan("  headRepair: dropUnsequential\n");
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("cannot be repaired") && out.contains("not covered by a checkpoint"),
        "{out}"
    );

    // A checkpoint.<last> holding the first segment's records covers everything before the
    // gap.
    let checkpoint = wal.join(format!("checkpoint.{last:08}"));
    std::fs::create_dir(&checkpoint).unwrap();
    std::fs::copy(&segs[0].1, checkpoint.join("00000000")).unwrap();
    let (code, v) = ws.run_json(&["plan"]);
    assert_eq!(code, 0, "{v}");
    assert!(
        only(&v)["repairs"].to_string().contains("nothing is lost"),
        "{v}"
    );
    assert_eq!(ws.run(&["apply", "--yes"]).0, 0);
    assert!(
        segs[..segs.len() - 1]
            .iter()
            .all(|(_, p)| !ws.target().join(rel(&ws.source, p)).exists())
            && ws
                .target()
                .join(rel(&ws.source, &numbered_name(&wal, last + 1)))
                .exists()
    );
    let (code, out, _) = ws.run(&["verify", "--level", "deep"]);
    assert_eq!(code, 0, "{out}");
    let data = ws.dir.path().join("prom-data");
    copy_tree(&ws.target(), &data);
    let s = flavor
        .try_start(&data, &ws.dir.path().join("prom"))
        .unwrap_or_else(|log| panic!("{log}"));
    assert!(!s.log_text().contains("segments are not sequential"));
}

/// No false positive on at least 1 GiB of real blocks (promtool blocks under fresh ULIDs).
/// 2.42 data only: tests/prom3.rs shows a healthy Prometheus 3.16 TSDB (blocks with chunks
/// of 1 MiB or more, head, WBL, chunk snapshot) passing `verify --level deep`.
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

/// Regression: a numbering gap in wbl/ (which nothing repairs) blocks the plan; a real
/// prometheus fails to start on it.
fn a_wbl_gap_blocks_the_plan(flavor: Flavor) {
    let ws = flavor.workspace();
    let wbl = ws.source.join("wbl");
    // 2.42 writes no WBL here: make one from a WAL segment. 3.x has one.
    if !wbl.exists() {
        std::fs::create_dir(&wbl).unwrap();
        std::fs::copy(ws.source.join("wal/00000000"), wbl.join("00000000")).unwrap();
    }
    let files = numbered(&wbl);
    let last = files.last().unwrap().0;
    std::fs::copy(&files[0].1, numbered_name(&wbl, last + 2)).unwrap();
    let (code, out, _) = ws.run(&["plan"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("source wbl/ is damaged") && out.contains("segments are not sequential"),
        "{out}"
    );
    let log = flavor
        .try_start(&ws.source, &ws.dir.path().join("prom"))
        .err()
        .expect("prometheus started on a wbl/ gap");
    assert!(log.contains("segments are not sequential"), "{log}");
}

/// Makes the newest checkpoint `checkpoint.<n>` hold the first WAL segment's records and
/// deletes the segments up to `n`, as Prometheus leaves the WAL after a checkpoint (it never
/// keeps a segment a checkpoint covers); an older `checkpoint.<n-1>` is left beside it, as
/// Prometheus may (it deletes older checkpoints after writing a new one). With 3.x data `n`
/// is the fixture's own checkpoint.00000001 (segments 00000002 on follow it). Returns the
/// newest checkpoint's directory name.
fn checkpoint_layout(root: &Path) -> String {
    let wal = root.join("wal");
    let segs = numbered(&wal);
    let existing = std::fs::read_dir(&wal)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_prefix("checkpoint.")?.parse::<u64>().ok()
        })
        .max();
    let n = match existing {
        Some(n) => n,
        None => {
            // 2.42 data has no checkpoint: the first segment becomes checkpoint.<first>,
            // and only the segments after it stay.
            let (first, path) = segs[0].clone();
            let dir = wal.join(format!("checkpoint.{first:08}"));
            std::fs::create_dir(&dir).unwrap();
            std::fs::rename(path, dir.join("00000000")).unwrap();
            first
        }
    };
    let newest = format!("checkpoint.{n:08}");
    if n > 0 {
        let older = wal.join(format!("checkpoint.{:08}", n - 1));
        std::fs::create_dir(&older).unwrap();
        std::fs::copy(wal.join(&newest).join("00000000"), older.join("00000000")).unwrap();
    }
    newest
}

/// Prometheus reads only the newest checkpoint, and damage in it stops the start: reading
/// it fails, and the WAL repair that follows deletes every WAL segment numbered above the
/// damaged checkpoint file's (here: all of them), then fails. No chunk snapshot (3.x data:
/// removed), so the checkpoint is read on both versions.
fn only_the_newest_checkpoint_is_checked_and_its_damage_is_fatal(flavor: Flavor) {
    let ws = flavor.workspace();
    // 2.42 data: wal/00000000 and 00000001 renamed to 00000002 and 00000003, so that two
    // checkpoints (0 and 1) fit before the first segment.
    let wal = ws.source.join("wal");
    if numbered(&wal)[0].0 < 2 {
        for (n, path) in numbered(&wal).into_iter().rev() {
            std::fs::rename(path, numbered_name(&wal, n + 2)).unwrap();
        }
    }
    // Laid out before the migration, so that the target's new files get its owner and mode.
    remove_chunk_snapshots(&ws.source);
    let newest = checkpoint_layout(&ws.source);
    check_case(
        flavor,
        &ws,
        &Case {
            damage: &|root| {
                // Damage both; only the newest matters.
                for d in std::fs::read_dir(root.join("wal")).unwrap() {
                    let d = d.unwrap().path();
                    if d.is_dir() {
                        flip(&d.join("00000000"), 200);
                    }
                }
                format!("wal/{newest}/00000000")
            },
            effect: "fails_start_wal_deleted",
            cheap: false,
            server: None,
            observed: Observed::FailsStartDeletingWal("repair corrupted WAL"),
        },
    );
    let mut c = promigrate();
    c.args(["inspect", "--deep", "--output", "json"])
        .arg(ws.target());
    let (code, out, _) = run(c);
    assert_eq!(code, 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let problems = v["format_problems"].as_array().unwrap();
    let checkpoints: Vec<&str> = problems
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .filter(|p| p.contains("checkpoint."))
        .collect();
    assert_eq!(checkpoints.len(), 1, "only the newest is checked: {out}");
}

/// A damaged checkpoint older than the newest chunk snapshot's WAL segment: Prometheus with
/// `memory-snapshot-on-shutdown` loads the snapshot and does not replay the checkpoint (it
/// starts); without that feature it fails as above.
fn a_damaged_checkpoint_covered_by_a_chunk_snapshot(flavor: Flavor) {
    let ws = flavor.workspace();
    let index = flavor.with_chunk_snapshot(&ws);
    let newest = checkpoint_layout(&ws.source);
    assert!(newest < format!("checkpoint.{index:08}"));
    check_case(
        flavor,
        &ws,
        &Case {
            damage: &|root| {
                flip(&root.join("wal").join(&newest).join("00000000"), 200);
                format!("wal/{newest}/00000000")
            },
            effect: "checkpoint_covered_by_snapshot",
            cheap: false,
            server: Some(flavor.server_with_snapshots(true)),
            observed: Observed::ServesWithout("attempting repair"),
        },
    );
    observe(
        flavor,
        &ws,
        &flavor.server_with_snapshots(false),
        &Observed::FailsStartDeletingWal("repair corrupted WAL"),
    );
}
