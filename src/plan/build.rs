//! How a plan is built: scan and check the source once, then compare each target with it.
//! Reads only (with [`Compare`] set to a checksum, every file the quick check calls
//! identical, on both sides).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use super::diff::{self, State};
use super::file::Migration;
use super::inventory::{self, FileInfo, Inventory};
use super::policy::{count, extraneous, left_out, phases};
use super::{BlockPlan, Compare, FilePlan, MigrationPlan, PlanStats, Selection, Survey, preflight};
use crate::fsutil;
use crate::progress::Progress;
use crate::relpath::RelPath;
use crate::{tsdb, units};

/// Progress of the content comparison, made once the number of bytes to read is known.
pub type ProgressFor<'a> = &'a dyn Fn(u64) -> Box<dyn Progress>;

/// Scans the source (with every meta.json) and finds its [`SourceFacts`]. A remote source
/// answers both from one snapshot ([`crate::source::Source::snapshot`]).
pub fn scan_and_check(m: &Migration) -> anyhow::Result<(Inventory, SourceFacts)> {
    let t = std::time::Instant::now();
    let view = m.src.snapshot();
    let src = inventory::scan_source(&view, inventory::Depth::WithMeta, m.parallelism)?;
    tracing::debug!(
        blocks = src.blocks.len(),
        seconds = t.elapsed().as_secs_f64(),
        "source scanned"
    );
    let t = std::time::Instant::now();
    let facts = source_facts(m, &view, &src);
    tracing::debug!(
        problems = facts.problems.len(),
        seconds = t.elapsed().as_secs_f64(),
        "source checked (cheap format checks, liveness)"
    );
    Ok((src, facts))
}

/// What is known of the source itself, whatever the target: whether its server runs, and
/// what the cheap format checks found. Found once, shared by the plans of every target.
pub struct SourceFacts {
    /// Whether the source Prometheus runs.
    pub state: crate::live::Liveness,
    /// Which Prometheus version wrote the data.
    pub version: crate::promversion::SourceVersion,
    /// The cheap format checks' findings over the whole source inventory.
    pub problems: Vec<crate::tsdb::check::Problem>,
    /// The source as it was scanned (over SSH, answering from the scan's snapshot): the
    /// reads planning makes after the scan (meta.json and tombstones compared with the
    /// target's) get the bytes the scan saw, without another round trip each.
    pub scanned: crate::source::View,
    /// Content hashes (xxh3-128) of source files computed so far, by path: with several
    /// targets each source file is hashed once.
    pub hashes: SourceHashes,
}

/// Source content hashes by path (relative to the TSDB root).
pub type SourceHashes = Mutex<HashMap<RelPath, u128>>;

/// The content hash of the source file `f`: the one computed before (its bytes then counted
/// as done on `progress`), or read now and kept. `Ok((hash, bytes read now))`.
pub fn source_hash(
    hashes: &SourceHashes,
    source: &crate::source::Source,
    f: &FileInfo,
    buf: &mut [u8],
    progress: &dyn Progress,
    cancel: &std::sync::atomic::AtomicBool,
) -> std::io::Result<(u128, u64)> {
    if let Some(h) = hashes.lock().ok().and_then(|h| h.get(&f.rel).copied()) {
        progress.add_bytes(f.size);
        return Ok((h, 0));
    }
    let h = crate::hash::file(source, &f.rel, buf, progress, cancel)?;
    if let Ok(mut map) = hashes.lock() {
        map.insert(f.rel.clone(), h);
    }
    Ok((h, f.size))
}

/// Probes the source server and runs the cheap format checks (reading through `view`, the
/// source or a snapshot of it) on the source inventory.
fn source_facts(m: &Migration, view: &crate::source::View, src: &Inventory) -> SourceFacts {
    use crate::tsdb::check;
    let never = std::sync::atomic::AtomicBool::new(false);
    // The probe and the version detection (over SSH, remote commands) run beside the checks.
    std::thread::scope(|s| {
        let state = s.spawn(|| view.probe());
        let version =
            s.spawn(|| crate::promversion::detect_source_version(&m.src, &m.source_server));
        let problems = check::run(
            view,
            src,
            check::Depth::Cheap,
            m.parallelism,
            &crate::progress::Hidden,
            &never,
        );
        SourceFacts {
            scanned: view.clone(),
            state: state
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p)),
            version: version
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p)),
            problems,
            hashes: SourceHashes::default(),
        }
    })
}

/// Builds the plan of every target volume (one for `target:`, several for `targets:`), all
/// from a single scan of the source, comparing files as `compare` says. Reads only. Targets
/// that share a filesystem must fit on it together.
pub fn build(
    m: &Migration,
    compare: Compare,
    progress_for: ProgressFor,
) -> anyhow::Result<Vec<MigrationPlan>> {
    let (src, facts) = scan_and_check(m)?;
    let mut plans = Vec::with_capacity(m.targets.len());
    let mut devs = Vec::with_capacity(m.targets.len());
    for view in m.views() {
        devs.push(view.survey().device());
        plans.push(
            build_from(
                &view,
                src.clone(),
                &facts,
                inventory::Depth::Layout,
                compare,
                progress_for,
            )?
            .0,
        );
    }
    shared_filesystems(&mut plans, &devs);
    Ok(plans)
}

/// Targets on one filesystem share its free space: a blocker on each when together they
/// need more than there is.
fn shared_filesystems(plans: &mut [MigrationPlan], devs: &[Option<(String, u64)>]) {
    for i in 0..plans.len() {
        let Some(dev) = &devs[i] else { continue };
        let same: Vec<usize> = (0..plans.len())
            .filter(|j| devs[*j].as_ref() == Some(dev))
            .collect();
        if same.len() < 2 {
            continue;
        }
        let need: u64 = same.iter().map(|j| plans[*j].target_needs.bytes).sum();
        let inodes: u64 = same.iter().map(|j| plans[*j].target_needs.inodes).sum();
        let p = &mut plans[i];
        if need > p.target_free_bytes {
            p.write_blockers.push(format!(
                "{} share the filesystem of {}: together they need {} (with headroom) but {} is free; give each target its own volume or free space",
                crate::units::count(same.len() as u64, "target"),
                p.mount.display(),
                crate::units::bytes(need),
                crate::units::bytes(p.target_free_bytes)
            ));
        }
        if let Some(free) = p.target_free_inodes.filter(|f| inodes > *f) {
            p.write_blockers.push(format!(
                "{} share the filesystem of {}: together they create {inodes} files and directories but {free} inodes are free; give each target its own volume or free inodes",
                crate::units::count(same.len() as u64, "target"),
                p.mount.display(),
            ));
        }
        p.ok = p.blockers.is_empty() && p.write_blockers.is_empty();
    }
}

/// Builds the plan of one target from an already scanned source and what is known of it,
/// and returns the source and target inventories it was built from. The plan itself needs
/// no target meta.json (`Depth::Layout`); verify asks for them.
pub fn build_from(
    m: &Migration,
    src: Inventory,
    facts: &SourceFacts,
    target_depth: inventory::Depth,
    compare: Compare,
    progress_for: ProgressFor,
) -> anyhow::Result<(MigrationPlan, Inventory, Inventory)> {
    let survey = m.survey();
    let shown = survey.shown().to_path_buf();
    let tgt = survey.scan(target_depth)?;
    let mut warnings = Vec::new();
    let mut blockers = Vec::new();

    // Source and target must not contain each other: a copy would recurse or eat its source.
    let local = m.src.ssh().is_none();
    let overlap = |ct: &dyn std::fmt::Display| {
        format!(
            "source {} and target {ct} overlap (one is inside the other): choose a target outside the source",
            fsutil::canonical_lenient(&m.source).display(),
        )
    };
    match (local, survey.here()) {
        (true, Some(ct)) => {
            let cs = fsutil::canonical_lenient(&m.source);
            if fsutil::is_within(&ct, &cs) || fsutil::is_within(&cs, &ct) {
                blockers.push(overlap(&ct.display()));
            }
        }
        // A receiver on this host (this kernel): by device and inode, whatever the paths
        // look like in its mount namespace.
        (true, None) => {
            if let (Some(s), Some(t)) = (fsutil::Whereabouts::of(&m.source), survey.whereabouts())
                && s.overlaps(&t)
            {
                blockers.push(overlap(&shown.display()));
            }
        }
        (false, _) => {}
    }
    // Never write through a link, nor across a mount point (last, below).
    let layout = survey.layout();
    blockers.extend(layout.outside);
    for link in tgt
        .excluded
        .iter()
        .filter(|e| e.reason.starts_with("symlink"))
    {
        blockers.push(format!(
            "the target has a symbolic link at {}: promigrate never writes through links; remove it (or choose another target)",
            shown.join(&link.rel).display()
        ));
    }
    // A link on the way, not merely a path written otherwise (relative, `./`, `..`).
    let through_link = |p: &std::path::Path| {
        let p = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        p.ancestors()
            .any(|a| std::fs::symlink_metadata(a).is_ok_and(|m| m.file_type().is_symlink()))
    };
    if let Some(t) = m
        .targets
        .first()
        .filter(|t| t.mount_given != t.mount && through_link(&t.mount_given))
    {
        warnings.push(format!(
            "target.path {} is a symbolic link: promigrate works on the directory it resolves to, {}",
            t.mount_given.display(),
            t.mount.display()
        ));
    }
    blockers.extend(layout.path_links);
    if let Some(h) = survey.writer() {
        blockers.push(format!(
            "an apply is in progress on this target ({h}): wait for it to finish, then plan again"
        ));
    }
    let not_a_tsdb = src.blocks.is_empty() && !src.dirs.iter().any(|d| d == "wal");
    if not_a_tsdb {
        // Where the TSDB is, when it is near (a local source: below it, or wal/'s parent).
        let near = match &m.src {
            crate::source::Source::Local(root) => inventory::tsdb_near(root),
            _ => None,
        };
        blockers.push(format!(
            "source {} holds no blocks and no wal/: is source.path the Prometheus data directory (--storage.tsdb.path)?{}",
            m.source.display(),
            near.map_or(String::new(), |t| format!(" The TSDB is at {}: point source.path there", t.display()))
        ));
    }
    let source_state = facts.state.clone();
    match &source_state {
        crate::live::Liveness::Running(how) => warnings.push(format!(
            "the source Prometheus is running ({how}): `apply --phase presync` copies its blocks now; the final phase (and `all`) refuses until it is stopped"
        )),
        crate::live::Liveness::Unknown(why) => warnings.push(format!(
            "cannot tell whether the source Prometheus is stopped: {why}; the final phase then needs --source-stopped"
        )),
        crate::live::Liveness::Stopped { clean: false } => warnings.push(format!(
            "the source did not shut down cleanly ({}/lock is stale): Prometheus will repair a torn WAL tail at startup",
            m.source.display()
        )),
        crate::live::Liveness::Stopped { clean: true } => {}
    }

    if facts.scanned.times_over_sftp() {
        let late: Vec<&FileInfo> = src
            .data_files()
            .filter(|f| f.mtime.sec >= 1 << 31)
            .collect();
        if let Some(f) = late.first() {
            let at = jiff::Timestamp::from_second(f.mtime.sec)
                .map(|t| t.to_string())
                .unwrap_or_default();
            warnings.push(format!(
                "{} {} dated after 2038-01-19 by SFTP (e.g. {} at {at}): SFTP carries times as unsigned 32-bit seconds, so a file dated before 1970 on the host arrives so; it is copied with the time SFTP gives and compares identical on a rerun; with source.ssh.read: tar (GNU find and tar on the host) the true time is kept",
                crate::units::count(late.len() as u64, "source file"),
                crate::units::verb_for(late.len() as u64, "is", "are"),
                f.rel
            ));
        }
    }

    // Block selection.
    let mut skipped = src.excluded.clone();
    // Not a TSDB at all (/etc, a volume's root): its entries are not listed one by one as
    // "not TSDB data" before the blocker that says so.
    if !not_a_tsdb {
        skipped.extend(src.unknown.iter().map(|u| inventory::Skipped {
            rel: u.into(),
            reason: "not TSDB data".into(),
        }));
    }
    skipped.extend(src.leftovers.iter().map(|u| inventory::Skipped {
        rel: u.clone(),
        reason: "promigrate temp file".into(),
    }));
    let mut selected = Vec::new();
    for b in src.blocks.values() {
        match &b.meta {
            Err(e) => blockers.push(format!(
                "source block {} has an unreadable meta.json ({e}); Prometheus skips such a block: repair or move it out of the source first",
                b.dir
            )),
            Ok(meta) if meta.ulid.to_string() != b.dir => blockers.push(format!(
                "source block directory {} has meta.json ulid {}: Prometheus deletes blocks by ULID, so the name must match; fix the source first",
                b.dir, meta.ulid
            )),
            Ok(meta) if m.time_range.is_some_and(|tr| !tr.overlaps(meta.min_time, meta.max_time)) => {
                skipped.push(inventory::Skipped { rel: (&b.dir).into(), reason: "outside transfer.timeRange".into() })
            }
            Ok(_) if m.exclude_blocks.contains(&b.ulid) => skipped.push(inventory::Skipped {
                rel: (&b.dir).into(),
                reason: "excluded by transfer.excludeBlocks".into(),
            }),
            Ok(_) => selected.push(b),
        }
    }
    for u in &m.exclude_blocks {
        if !src.blocks.values().any(|b| b.ulid == *u) {
            warnings.push(format!(
                "transfer.excludeBlocks names {u}, which is not a block in the source"
            ));
        }
    }
    let selected_range =
        m.time_range
            .and(selected.iter().filter_map(|b| b.meta.as_ref().ok()).fold(
                None,
                |acc: Option<(i64, i64)>, meta| match acc {
                    None => Some((meta.min_time, meta.max_time)),
                    Some((a, z)) => Some((a.min(meta.min_time), z.max(meta.max_time))),
                },
            ));

    selected.sort_by_key(|b| b.meta.as_ref().map(|m| m.min_time).unwrap_or_default());

    // WAL, WBL, head chunks: the newest data. Left out only when the range ends before the
    // newest data (the newest block's end, or the head files' last write).
    let newest = newest_data(&src);
    let with_head = m
        .time_range
        .and_then(|tr| tr.max)
        .is_none_or(|max| newest.is_none_or(|n| max > n));

    // With a checksum: every file the quick check calls identical, compared by content.
    let mut same_size_and_mtime: Vec<&FileInfo> = Vec::new();
    if compare.blocks() {
        for b in &selected {
            let Some(tb) = tgt.blocks.get(&b.dir) else {
                continue;
            };
            same_size_and_mtime.extend(
                b.files
                    .values()
                    .filter(|f| diff::file(f, tb.files.get(&f.rel)) == State::Identical),
            );
        }
    }
    if compare.head() && with_head {
        same_size_and_mtime.extend(
            src.files
                .values()
                .filter(|f| diff::file(f, tgt.files.get(&f.rel)) == State::Identical),
        );
    }
    // Hashed from the source itself, never from the scan's snapshot.
    let content = content_differs(
        facts.scanned.live(),
        survey.as_ref(),
        &same_size_and_mtime,
        m.parallelism,
        &facts.hashes,
        progress_for,
    );
    let compared: BTreeSet<&str> = same_size_and_mtime.iter().map(|f| f.rel.as_str()).collect();
    for (rel, why) in &content.unreadable {
        warnings.push(format!(
            "cannot compare the content of {rel} ({why}): apply copies it again"
        ));
    }

    let mut stats = PlanStats {
        checksum_compared_files: compared.len() as u64,
        ..PlanStats::default()
    };
    // meta.json and tombstones are rewritten in place on a live source (compaction marks,
    // deletions): compare their bytes, not only size and mtime. They are small; all of them
    // in one request to the target (a receiver answers it in one round trip). With a
    // checksum every file's content was compared already.
    let small_differ = small_files_differ(
        survey.as_ref(),
        &facts.scanned,
        selected
            .iter()
            .filter_map(|b| tgt.blocks.get(&b.dir).map(|tb| (b, tb)))
            .flat_map(|(b, tb)| {
                b.files.values().filter(|f| {
                    compared_by_bytes(&f.rel)
                        && !compared.contains(f.rel.as_str())
                        && diff::file(f, tb.files.get(&f.rel)) == diff::State::Identical
                })
            })
            .map(|f| f.rel.clone())
            .collect(),
        m.parallelism,
    );
    let mut blocks = Vec::new();
    for b in &selected {
        let meta = b.meta.as_ref().expect("selected blocks have a meta");
        let tb = tgt.blocks.get(&b.dir);
        let state = |f: &FileInfo| match diff::file(f, tb.and_then(|t| t.files.get(&f.rel))) {
            diff::State::Identical if compared.contains(f.rel.as_str()) => {
                if content.differ.contains(&f.rel) {
                    diff::State::Differs
                } else {
                    diff::State::Identical
                }
            }
            diff::State::Identical if small_differ.contains(&f.rel) => diff::State::Differs,
            s => s,
        };
        let mut d = diff::block(b, tb);
        if tb.is_some() {
            d.to_copy = b
                .files
                .values()
                .filter(|f| state(f) != diff::State::Identical)
                .map(|f| f.rel.clone())
                .collect();
            if !d.to_copy.is_empty() {
                d.state = diff::State::Differs;
            }
        }
        let copy_bytes: u64 = d.to_copy.iter().map(|r| b.files[r.as_str()].size).sum();
        count(&mut stats, b.files.values(), state);
        blocks.push(BlockPlan {
            ulid: b.dir.clone(),
            min_time: meta.min_time,
            max_time: meta.max_time,
            level: meta.compaction.level,
            num_samples: meta.stats.num_samples,
            num_series: meta.stats.num_series,
            size: b.size(),
            files: b.files.len(),
            state: d.state,
            copy: d.to_copy,
            copy_bytes,
        });
    }

    let (files, dirs): (Vec<FilePlan>, Vec<RelPath>) = if with_head {
        let state = |f: &FileInfo| match diff::file(f, tgt.files.get(&f.rel)) {
            diff::State::Identical if content.differ.contains(&f.rel) => diff::State::Differs,
            s => s,
        };
        let files = src
            .files
            .values()
            .map(|f| FilePlan {
                rel: f.rel.clone(),
                size: f.size,
                state: state(f),
            })
            .collect();
        count(&mut stats, src.files.values(), state);
        (files, src.dirs.clone())
    } else {
        let why = format!(
            "head data; transfer.timeRange.max {} is before the newest data ({})",
            m.time_range
                .and_then(|tr| tr.max)
                .map_or("-".into(), units::ms_utc),
            newest.map_or("-".into(), units::ms_utc)
        );
        skipped.extend(src.files.keys().map(|r| inventory::Skipped {
            rel: r.clone(),
            reason: why.clone(),
        }));
        (Vec::new(), Vec::new())
    };

    // Cheap format checks of what is selected (meta, numbering, headers, TOC, tombstones):
    // a damaged source copies faithfully into a damaged target.
    let (files, repairs) = source_checks(
        m,
        &src,
        &facts.problems,
        &selected,
        files,
        &mut stats,
        &mut blockers,
        &mut skipped,
    )?;

    // A file dropped by a repair is not copied, whatever its content.
    let checksum_differing: Vec<RelPath> = content
        .differ
        .iter()
        .filter(|r| files.iter().any(|f| &f.rel == *r) || blocks.iter().any(|b| b.copy.contains(r)))
        .cloned()
        .collect();
    stats.checksum_differing_files = checksum_differing.len() as u64;

    let selection = Selection {
        blocks_selected: selected.len(),
        blocks_total: src.blocks.len(),
        bytes_selected: selected.iter().map(|b| b.size()).sum::<u64>()
            + files.iter().map(|f| f.size).sum::<u64>(),
        bytes_total: src.blocks.values().map(|b| b.size()).sum::<u64>()
            + src.files.values().map(|f| f.size).sum::<u64>(),
        head: with_head,
    };
    if let Some(text) = left_out(m, &src, &selected, with_head, newest) {
        if m.accept_partial_selection {
            warnings.push(format!(
                "{text} (accepted: transfer.acceptPartialSelection)"
            ));
        } else {
            blockers.push(format!(
                "{text}. If that is what you want, set transfer.acceptPartialSelection: true; otherwise correct or remove the selection"
            ));
        }
    }

    // What the source blocks were compacted from: a target block whose data they hold was
    // compacted away in the source (parents name the direct ones; sources the level-1 ones).
    // Only the selected blocks count (they are what the target will hold): if the block that
    // replaced some target blocks is excluded, those target blocks still hold its data.
    let mut ancestry = std::collections::BTreeSet::new();
    for meta in selected.iter().filter_map(|b| b.meta.as_ref().ok()) {
        ancestry.extend(meta.compaction.parents.iter().map(|p| p.ulid));
        ancestry.extend(
            meta.compaction
                .sources
                .iter()
                .copied()
                .filter(|s| *s != meta.ulid),
        );
    }
    let in_source: std::collections::BTreeSet<&str> =
        src.blocks.keys().map(String::as_str).collect();
    let extraneous = extraneous(
        m,
        survey.as_ref(),
        &selected,
        &files,
        &dirs,
        with_head,
        &tgt,
        &in_source,
        &ancestry,
    );
    let kept = extraneous
        .iter()
        .filter(|e| !e.quarantined(m.delete_extraneous))
        .count();
    if kept > 0 {
        warnings.push(format!(
            "the target has {} the source selection lacks; {}, and Prometheus will load {} with the copy (set transfer.deleteExtraneous: true to quarantine {})",
            crate::units::count(kept as u64, "block entry"),
            crate::units::verb_for(kept as u64, "it stays", "they stay"),
            crate::units::verb_for(kept as u64, "it", "them"),
            crate::units::verb_for(kept as u64, "it", "them")
        ));
    }
    // A filesystem's lost+found at the volume's root is normal there: no warning.
    let unknown: Vec<&str> = tgt
        .unknown
        .iter()
        .map(String::as_str)
        .filter(|u| *u != "lost+found")
        .collect();
    if !unknown.is_empty() {
        warnings.push(format!(
            "the target holds entries that are not TSDB data; they are left alone: {}",
            unknown.join(", ")
        ));
    }

    let space = {
        let written = blocks
            .iter()
            .flat_map(|b| {
                let sb = &src.blocks[&b.ulid];
                b.copy
                    .iter()
                    .map(move |r| (r.clone(), sb.files[r.as_str()].size))
            })
            .chain(
                files
                    .iter()
                    .filter(|f| f.state != State::Identical)
                    .map(|f| (f.rel.clone(), f.size)),
            )
            .collect();
        let staged = blocks.iter().any(|b| b.state == State::Copy)
            || dirs
                .iter()
                .any(|d| tsdb::staged_as_a_whole(d) && !tgt.dirs.contains(d));
        let writes = preflight::Writes {
            files: written,
            dirs: dirs.clone(),
            quarantined: extraneous
                .iter()
                .filter(|e| e.quarantined(m.delete_extraneous))
                .map(|e| e.rel.clone())
                .collect(),
            staged,
            marked: blocks.iter().filter(|b| b.state == State::Copy).count() as u64,
        };
        survey.space(&writes)?
    };
    let (fs, target_needs) = (space.fs, space.needs);
    if fs.is_nfs {
        warnings.push(format!(
            "the target {} is on NFS: Prometheus does not support NFS for its TSDB (corruption and slow compaction are known); prefer a block volume",
            m.target_mount.display()
        ));
    }

    let limit = |r: Option<u64>, from: &str| {
        r.map(|r| crate::plan::policy::Rate {
            bytes_per_second: r,
            from: from.into(),
            limit: true,
        })
    };
    let phases = phases(
        &blocks,
        &files,
        limit(m.bwlimit, "transfer.bwlimit"),
        limit(m.final_bwlimit, "transfer.finalBwlimit"),
    );
    // All of it in one run (`--phase all`) is with the source stopped: at the final rate.
    stats.eta_seconds = phases
        .final_
        .rate
        .as_ref()
        .map(|r| stats.copy_bytes as f64 / r.bytes_per_second.max(1) as f64);
    let mut plan = MigrationPlan {
        phases,
        ok: false, // set below, with the write preflight
        name: m.name.clone(),
        source: m.source.clone(),
        source_host: m.src.ssh().map(|s| s.describe()),
        source_jumps: m
            .src
            .ssh()
            .map(|s| s.jumps.iter().map(|j| j.describe()).collect())
            .unwrap_or_default(),
        source_ssh_config: m.src.ssh().and_then(|s| {
            s.config.clone().map(|file| super::model::SshConfigUse {
                file,
                keys: s.from_config.clone(),
            })
        }),
        src: m.src.clone(),
        target: shown.clone(),
        mount: m.target_mount.clone(),
        owner: m.owner,
        bwlimit: m.bwlimit,
        final_bwlimit: m.final_bwlimit,
        parallelism: m.parallelism,
        delete_extraneous: m.delete_extraneous,
        time_range: m.time_range,
        selected_range,
        selection,
        blocks,
        files,
        dirs,
        extraneous,
        leftovers: tgt.leftovers.clone(),
        ownership: tgt
            .attrs
            .iter()
            .filter(|a| crate::perms::problem_of(a.uid, a.gid, a.mode, m.owner).is_some())
            .map(|a| a.rel.clone())
            .collect(),
        skipped,
        stats,
        source_state,
        source_version: facts.version.clone(),
        target_free_bytes: fs.free_bytes,
        target_free_inodes: fs.free_inodes,
        target_needs,
        warnings,
        blockers,
        write_blockers: Vec::new(),
        repairs,
        compare,
        checksum_differing,
        kubernetes: None,
        reach: m.targets.first().and_then(|t| t.remote.clone()),
    };
    let fixes = tgt
        .attrs
        .iter()
        .filter(|a| crate::perms::problem_of(a.uid, a.gid, a.mode, m.owner).is_some())
        .map(|a| (a.rel.clone(), a.uid, a.gid))
        .collect();
    let (write_blockers, write_warnings) = survey.write_check(&super::survey::WritePlan {
        copy_bytes: plan.stats.copy_bytes,
        needs: plan.target_needs,
        writes: plan.target_needs.inodes > 0 || !plan.writes_nothing(),
        fixes,
    })?;
    plan.write_blockers = write_blockers;
    plan.warnings.extend(write_warnings);
    plan.blockers.extend(layout.crossings);
    plan.ok = plan.blockers.is_empty() && plan.write_blockers.is_empty();
    Ok((plan, src, tgt))
}

/// Runs the cheap format checks on the selected source data. Damaged selected blocks and
/// damaged WAL/head files become blockers; a broken head/WAL sequence is repaired instead
/// when `transfer.headRepair: dropUnsequential` allows it (the dropped files leave `files`,
/// and the returned repairs say what is lost).
#[allow(clippy::too_many_arguments)]
fn source_checks(
    m: &Migration,
    src: &Inventory,
    problems: &[crate::tsdb::check::Problem],
    selected: &[&inventory::Block],
    mut files: Vec<FilePlan>,
    stats: &mut PlanStats,
    blockers: &mut Vec<String>,
    skipped: &mut Vec<inventory::Skipped>,
) -> anyhow::Result<(Vec<FilePlan>, Vec<String>)> {
    use crate::plan::file::HeadRepair;
    use crate::tsdb::check;
    let mut repairs = Vec::new();
    let copied = |rel: &str| {
        files
            .iter()
            .any(|f| f.rel == rel || crate::relpath::is_below(rel, f.rel.top()))
    };
    let mut drop: Vec<RelPath> = Vec::new();
    for dir in ["chunks_head", "wal"] {
        let gap = problems
            .iter()
            .any(|p| p.path == format!("{dir}/") && p.location == "file numbering");
        if !gap || !files.iter().any(|f| f.rel.is_below(dir)) {
            continue;
        }
        let plan = check::repair::drop_before_last_gap(&m.src, src, dir)?;
        match (m.head_repair, plan) {
            (HeadRepair::DropUnsequential, Ok(r)) => {
                repairs.push(r.describe);
                drop.extend(r.dropped.into_iter().map(RelPath::from));
            }
            (HeadRepair::DropUnsequential, Err(why)) => blockers.push(format!("{dir}/ has a gap in its file numbering and cannot be repaired: {why}")),
            (HeadRepair::None, _) => blockers.push(format!(
                "{dir}/ has a gap in its file numbering: Prometheus fails to start on it ({}); set transfer.headRepair: dropUnsequential to copy only the files after the last gap (the plan then lists what is lost)",
                if dir == "wal" { "segments are not sequential" } else { "found unsequential head chunk files" }
            )),
        }
    }
    for p in problems {
        let top = p.path.split('/').next().unwrap_or("");
        let in_selected_block = selected.iter().any(|b| b.dir == top);
        // Selected blocks have a readable meta.json whose ulid matches (else they were not
        // selected), so every problem found in one is new.
        if in_selected_block {
            blockers.push(format!(
                "source block {top} is damaged: {}. Repair the source, or leave the block out with transfer.excludeBlocks: [{top}]",
                p.line()
            ));
        } else if !in_selected_block && copied(&p.path) {
            // Gaps in chunks_head/ and wal/ were handled above (blocker or repair); a gap
            // anywhere else (wbl/, a checkpoint) has no repair.
            let handled =
                p.location == "file numbering" && (p.path == "chunks_head/" || p.path == "wal/");
            if !handled {
                blockers.push(format!("source {} is damaged: {}", p.path, p.line()));
            }
        }
    }
    if !drop.is_empty() {
        for f in files.iter().filter(|f| drop.contains(&f.rel)) {
            if f.state != State::Identical {
                stats.copy_bytes -= f.size;
                stats.copy_files -= 1;
            } else {
                stats.identical_files -= 1;
            }
            stats.source_bytes -= f.size;
            stats.source_files -= 1;
        }
        files.retain(|f| !drop.contains(&f.rel));
        skipped.extend(drop.iter().map(|r| inventory::Skipped {
            rel: r.clone(),
            reason: "dropped by transfer.headRepair".into(),
        }));
    }
    Ok((files, repairs))
}

/// The newest time the source holds data for (ms): the newest block's end or the head
/// files' last write, whichever is later.
fn newest_data(src: &Inventory) -> Option<i64> {
    let blocks = src
        .blocks
        .values()
        .filter_map(|b| b.meta.as_ref().ok())
        .map(|m| m.max_time);
    let head = src.files.values().map(|f| f.mtime.sec.saturating_mul(1000));
    blocks.chain(head).max()
}

/// What the content comparison found.
#[derive(Debug, Default)]
struct Content {
    /// Files whose content differs, or that could not be read on a side.
    differ: BTreeSet<RelPath>,
    /// Those that could not be read, and why.
    unreadable: Vec<(RelPath, String)>,
}

/// Which of `files` (on the target with the source's size and mtime) differ in content:
/// each is hashed (xxh3-128) on both sides, `parallelism` at a time. Source hashes already
/// in `hashes` are not computed again. A file that cannot be read counts as differing:
/// apply copies it again (and a source that cannot be read fails that copy, naming it).
fn content_differs(
    source: &crate::source::Source,
    target: &dyn Survey,
    files: &[&FileInfo],
    parallelism: usize,
    hashes: &SourceHashes,
    progress_for: ProgressFor,
) -> Content {
    if files.is_empty() {
        return Content::default();
    }
    let t = std::time::Instant::now();
    let bytes: u64 = files.iter().map(|f| f.size).sum();
    tracing::info!(
        files = files.len(),
        bytes,
        "comparing content (--checksum) of the files with equal size and mtime"
    );
    let progress = progress_for(2 * bytes);
    // The target's side where the target is (in its receiver, for a volume elsewhere), at
    // the same time as the source's side here.
    let rels: Vec<RelPath> = files.iter().map(|f| f.rel.clone()).collect();
    let never = std::sync::atomic::AtomicBool::new(false);
    let (theirs, ours) = std::thread::scope(|sc| {
        let theirs = sc.spawn(|| target.hashes(&rels, parallelism, progress.as_ref(), &never));
        let ours = crate::par::map_with(
            files,
            parallelism,
            || vec![0u8; crate::hash::BUF_SIZE],
            |buf, f| source_hash(hashes, source, f, buf, progress.as_ref(), &never).map(|(h, _)| h),
        );
        let theirs = theirs
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        (theirs, ours)
    });
    let results = ours.into_iter().zip(&theirs).map(|(a, b)| match (a, b) {
        (Ok(x), Ok(y)) => Ok(x != *y),
        (Err(e), _) => Err(format!("the source: {e}")),
        (_, Err(e)) => Err(format!("the target: {e}")),
    });
    progress.finish(true);
    let mut out = Content::default();
    for (f, r) in files.iter().zip(results) {
        match r {
            Ok(false) => {}
            Ok(true) => {
                out.differ.insert(f.rel.clone());
            }
            Err(why) => {
                out.differ.insert(f.rel.clone());
                out.unreadable.push((f.rel.clone(), why));
            }
        }
    }
    tracing::info!(
        files = files.len(),
        differ = out.differ.len(),
        seconds = t.elapsed().as_secs_f64(),
        "content compared"
    );
    out
}

/// Whether the quick check compares this file's bytes too: a block's meta.json and
/// tombstones, which a live source rewrites in place.
pub fn compared_by_bytes(rel: &str) -> bool {
    rel.ends_with("/meta.json") || rel.ends_with("/tombstones")
}

/// Which of `rels` (a block's meta.json and tombstones, equal in size and mtime) differ in
/// content between source and target: the source's bytes here, the target's hashed where it
/// is (xxh3-128, one request for all). One that cannot be read on either side counts as
/// differing: apply copies it again.
fn small_files_differ(
    target: &dyn Survey,
    source: &dyn crate::source::Tree,
    rels: Vec<RelPath>,
    parallelism: usize,
) -> BTreeSet<RelPath> {
    if rels.is_empty() {
        return BTreeSet::new();
    }
    let never = std::sync::atomic::AtomicBool::new(false);
    let theirs = target.hashes(&rels, parallelism, &crate::progress::Hidden, &never);
    rels.into_iter()
        .zip(theirs)
        .filter(|(rel, theirs)| {
            let ours = source.read(rel).map(|b| xxhash_rust::xxh3::xxh3_128(&b));
            !matches!((ours, theirs), (Ok(a), Ok(b)) if a == *b)
        })
        .map(|(rel, _)| rel)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(root: &std::path::Path, rel: &str) -> FileInfo {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(root.join(rel)).unwrap();
        FileInfo {
            rel: rel.into(),
            size: md.len(),
            mtime: fsutil::MTime {
                sec: md.mtime(),
                nsec: md.mtime_nsec(),
            },
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
        }
    }

    #[test]
    fn checksum_finds_other_content_and_unreadable_files_and_hashes_the_source_once() {
        let (src, tgt) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for root in [src.path(), tgt.path()] {
            std::fs::create_dir_all(root.join("B/chunks")).unwrap();
            std::fs::write(root.join("B/index"), b"same").unwrap();
            std::fs::write(root.join("B/chunks/000001"), b"abcd").unwrap();
        }
        std::fs::write(tgt.path().join("B/chunks/000001"), b"abXd").unwrap();
        std::fs::write(src.path().join("B/gone"), b"only on the source").unwrap();
        let files: Vec<FileInfo> = ["B/index", "B/chunks/000001", "B/gone"]
            .iter()
            .map(|r| info(src.path(), r))
            .collect();
        let refs: Vec<&FileInfo> = files.iter().collect();
        let source = crate::source::Source::Local(src.path().to_path_buf());
        let hashes = SourceHashes::default();
        let hidden = |_| Box::new(crate::progress::Hidden) as Box<dyn Progress>;
        let target = crate::plan::LocalSurvey {
            mount: tgt.path().to_path_buf(),
            root: tgt.path().to_path_buf(),
            owner: crate::perms::Owner { uid: 0, gid: 0 },
            mounted_read_only: false,
        };
        let found = content_differs(&source, &target, &refs, 2, &hashes, &hidden);
        assert_eq!(
            found.differ.iter().map(RelPath::as_str).collect::<Vec<_>>(),
            ["B/chunks/000001", "B/gone"]
        );
        assert_eq!(found.unreadable.len(), 1);
        assert!(
            found.unreadable[0].0 == "B/gone" && found.unreadable[0].1.starts_with("the target:"),
            "{:?}",
            found.unreadable
        );
        // Source hashes are kept for the next target: a source file that changed since is
        // not read again.
        assert_eq!(hashes.lock().unwrap().len(), 3);
        std::fs::write(src.path().join("B/index"), b"SAME").unwrap();
        let again = content_differs(&source, &target, &refs[..1], 1, &hashes, &hidden);
        assert!(again.differ.is_empty());
    }

    #[test]
    fn each_comparison_hashes_its_scope() {
        assert!(!Compare::Quick.blocks() && !Compare::Quick.head());
        assert!(Compare::ChecksumBlocks.blocks() && !Compare::ChecksumBlocks.head());
        assert!(Compare::Checksum.blocks() && Compare::Checksum.head());
    }
}
