//! `verify`: prove the target equals the source for everything the plan selects. Every
//! selected block must be on the target with an equal meta.json (compared field by field),
//! the same file set and sizes and, at level `checksum`, equal content hashes (xxh3-128 of
//! both sides); WAL/head files likewise; every owned entry must have the plan's owner and mode.
//! It reads only. Differences use rclone `check` sigils: `-` missing on the target,
//! `+` extra on the target, `*` differs, `!` error.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;

use crate::perms;
use crate::plan::inventory::{self, FileInfo, Inventory};
use crate::plan::{self, Migration};
use crate::progress::Progress;
use crate::relpath::RelPath;
use crate::tsdb::{check, meta};
use crate::units;

/// How deep `verify` looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyLevel {
    /// meta.json field by field, file sets, sizes, ownership and modes.
    Meta,
    /// Everything in `meta`, plus a content hash (xxh3-128) of every file on both sides.
    #[default]
    Checksum,
    /// Everything in `checksum`, plus format validation of the target: that Prometheus will
    /// open and read it (chunk, index, tombstone, head chunk and WAL CRCs, numbering).
    Deep,
}

/// One difference between source and target.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Difference {
    /// Path relative to the TSDB root.
    pub path: RelPath,
    /// `-` missing on target, `+` extra on target, `*` differs, `!` error.
    pub sigil: char,
    /// What differs.
    pub detail: String,
}

/// The result of a verify run.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// `true` when no difference was found.
    pub ok: bool,
    /// How deep it looked.
    pub level: VerifyLevel,
    /// Source TSDB directory.
    pub source: PathBuf,
    /// Target TSDB directory.
    pub target: PathBuf,
    /// How much of the source the plan selects (and so what this verify proves); `None` when
    /// verify compared nothing (an apply was writing the target).
    pub selection: Option<plan::Selection>,
    /// Source files compared.
    pub checked_files: u64,
    /// Bytes of those files.
    pub checked_bytes: u64,
    /// Bytes this verify read and hashed, both sides (a source file whose hash was taken
    /// from the copy, [`VerifyReport::hashed_while_copied`], is not read: only its target).
    pub hashed_bytes: u64,
    /// Source files compared whose hash was taken from the bytes an apply copied (the one
    /// this verify ends, or for block files an earlier one: [`crate::hash::Sent`]), not
    /// read a second time. Their targets are read back like every other.
    pub hashed_while_copied: u64,
    /// Everything that differs, sorted by path.
    pub differences: Vec<Difference>,
    /// What the target Prometheus server would do wrong with the data (its owner, subPath,
    /// retention, version, GitOps), from the cluster: each stops the go.
    pub cluster_blockers: Vec<String>,
    /// What to know about the target server.
    pub cluster_warnings: Vec<String>,
    /// The plan this verify compared against (not in the report: its parts are).
    #[serde(skip)]
    pub plan: Option<Box<plan::MigrationPlan>>,
    /// Wall time (s).
    pub duration_seconds: f64,
}

/// Verifies every target volume of the migration (one for `target:`, several for
/// `targets:`), one report each, scanning and hashing the source once. `progress_for` makes
/// the progress sink once the number of bytes to read is known. `sent`: the hashes of the
/// source bytes applies copied (this run's, and block files' kept from earlier ones); a
/// source file that still has the size and mtime it had then is not read again (its
/// target is).
pub fn run(
    m: &Migration,
    level: VerifyLevel,
    progress_for: &dyn Fn(u64) -> Box<dyn Progress>,
    cancel: &AtomicBool,
    sent: Option<&crate::hash::Sent>,
) -> anyhow::Result<Vec<VerifyReport>> {
    let (src, facts) = plan::scan_and_check(m)?;
    let from_copy = sent
        .map(|sent| seed(&facts.hashes, &src, sent))
        .unwrap_or_default();
    let mut reports = Vec::new();
    for view in m.views() {
        reports.push(run_one(
            &view,
            src.clone(),
            &facts,
            &from_copy,
            level,
            progress_for,
            cancel,
        )?);
    }
    Ok(reports)
}

/// Takes into `hashes` the hash of every file of the source inventory `src` that `sent`
/// has for its present size and mtime; which files.
fn seed(
    hashes: &plan::SourceHashes,
    src: &Inventory,
    sent: &crate::hash::Sent,
) -> HashSet<RelPath> {
    let mut seeded = HashSet::new();
    let Ok(mut hashes) = hashes.lock() else {
        return seeded;
    };
    for f in src.data_files() {
        if let Some(h) = sent.get(&f.rel, f.size, f.mtime) {
            hashes.insert(f.rel.clone(), h);
            seeded.insert(f.rel.clone());
        }
    }
    seeded
}

/// Verifies one target. Source hashes are kept in `facts`, so that with several targets each
/// source file is read once.
fn run_one(
    m: &Migration,
    src: Inventory,
    facts: &plan::SourceFacts,
    from_copy: &HashSet<RelPath>,
    level: VerifyLevel,
    progress_for: &dyn Fn(u64) -> Box<dyn Progress>,
    cancel: &AtomicBool,
) -> anyhow::Result<VerifyReport> {
    let start = Instant::now();
    // Read the target only while no apply writes it (an apply is refused meanwhile).
    let survey = m.survey();
    let _reading = match survey.read_lock() {
        Err(plan::survey::Busy(h)) => return Ok(busy(m, level, h, start)),
        Ok(held) => held,
    };
    // Verify compares content itself, below: the plan's quick check is enough here.
    let (plan, src, tgt) = plan::build_from(
        m,
        src,
        facts,
        inventory::Depth::WithMeta,
        plan::Compare::Quick,
        &|_| Box::new(crate::progress::Hidden),
    )?;
    tracing::debug!(
        seconds = start.elapsed().as_secs_f64(),
        "verify: target surveyed and compared by metadata"
    );
    let mut diffs = Vec::new();
    let d = |sigil: char, path: &str, detail: String| Difference {
        path: path.into(),
        sigil,
        detail,
    };

    for b in &plan.blockers {
        diffs.push(d('!', "", format!("plan blocker: {b}")));
    }
    if !tgt.exists {
        diffs.push(d(
            '-',
            "",
            format!("target {} does not exist", survey.shown().display()),
        ));
    }
    let mut pairs: Vec<(&FileInfo, &FileInfo)> = Vec::new();
    let mut checked = (0u64, 0u64);
    for bp in &plan.blocks {
        let sb = &src.blocks[&bp.ulid];
        let Some(tb) = tgt.blocks.get(&bp.ulid) else {
            diffs.push(d(
                '-',
                &format!("{}/", bp.ulid),
                "block missing on the target".into(),
            ));
            continue;
        };
        match (&sb.meta_json, &tb.meta_json, &tb.meta) {
            (Some(a), Some(b), _) => {
                let fields = meta::diff_fields(a, b);
                if !fields.is_empty() {
                    diffs.push(d(
                        '*',
                        &format!("{}/meta.json", bp.ulid),
                        format!("fields differ: {}", fields.join("; ")),
                    ));
                }
            }
            (_, _, Err(e)) => diffs.push(d(
                '!',
                &format!("{}/meta.json", bp.ulid),
                format!("target meta.json unusable: {e}"),
            )),
            _ => {}
        }
        for f in sb.files.values() {
            checked = (checked.0 + 1, checked.1 + f.size);
            compare_file(f, tb.files.get(&f.rel), &mut diffs, &mut pairs);
        }
        for rel in tb.files.keys().filter(|k| !sb.files.contains_key(*k)) {
            diffs.push(d('+', rel, "only on the target".into()));
        }
    }
    for fp in &plan.files {
        let f = &src.files[&fp.rel];
        checked = (checked.0 + 1, checked.1 + f.size);
        compare_file(f, tgt.files.get(&fp.rel), &mut diffs, &mut pairs);
    }
    for e in &plan.extraneous {
        if !e.rel.contains('/')
            || !tgt
                .blocks
                .contains_key(e.rel.split('/').next().unwrap_or(""))
        {
            let fate = if e.quarantined(m.delete_extraneous) {
                "the final phase moves it to the quarantine"
            } else {
                "left in place (transfer.deleteExtraneous: true quarantines it)"
            };
            diffs.push(d(
                '+',
                &e.rel,
                format!(
                    "on the target but not in the source selection: {}; {fate}",
                    plan::extra_reason(e.kind)
                ),
            ));
        }
    }
    for l in &plan.leftovers {
        diffs.push(d(
            '!',
            l,
            "leftover of an interrupted apply: rerun apply".into(),
        ));
    }
    ownership(&tgt, m, &mut diffs);
    if checked.0 == 0 && !(src.blocks.is_empty() && src.files.is_empty()) {
        diffs.push(d(
            '!',
            "",
            format!(
                "no source file was checked: the selection is empty, while the source holds {} and {}; nothing proves the target holds its data",
                units::count(src.blocks.len() as u64, "block"),
                units::count(src.files.len() as u64, "head file")
            ),
        ));
    }

    let target_bytes: u64 = tgt.blocks.values().map(|b| b.size()).sum::<u64>()
        + tgt.files.values().map(|f| f.size).sum::<u64>();
    let to_read = match level {
        VerifyLevel::Meta => 0,
        VerifyLevel::Checksum => pairs.iter().map(|(s, t)| s.size + t.size).sum(),
        VerifyLevel::Deep => pairs.iter().map(|(s, t)| s.size + t.size).sum::<u64>() + target_bytes,
    };
    let progress_box = progress_for(to_read);
    let progress = progress_box.as_ref();
    let mut hashed = 0;
    let mut hashed_while_copied = 0;
    if level != VerifyLevel::Meta {
        hashed_while_copied = pairs
            .iter()
            .filter(|(s, _)| from_copy.contains(&s.rel))
            .count() as u64;
        hashed = hash_pairs(
            m,
            survey.as_ref(),
            &pairs,
            progress,
            cancel,
            &facts.hashes,
            &mut diffs,
        )?;
        tracing::debug!(
            seconds = start.elapsed().as_secs_f64(),
            hashed,
            "verify: content hashed"
        );
    }
    if level == VerifyLevel::Deep && tgt.exists {
        let found = survey.check(&tgt, check::Depth::Deep, m.parallelism, progress, cancel);
        if cancel.load(Ordering::Relaxed) {
            anyhow::bail!("verify interrupted during the format checks; the result is incomplete");
        }
        diffs.extend(found.into_iter().map(|p| {
            let loc = if p.location.is_empty() {
                String::new()
            } else {
                format!(" ({})", p.location)
            };
            Difference {
                path: p.path,
                sigil: '!',
                detail: format!("format{loc}: {}; {}", p.problem, p.effect.describe()),
            }
        }));
    }
    progress.finish(true);
    diffs.sort();
    diffs.dedup();
    Ok(VerifyReport {
        ok: diffs.is_empty(),
        level,
        source: m.source.clone(),
        target: survey.shown().to_path_buf(),
        selection: Some(plan.selection),
        checked_files: checked.0,
        checked_bytes: checked.1,
        hashed_bytes: hashed,
        hashed_while_copied,
        differences: diffs,
        cluster_blockers: Vec::new(),
        cluster_warnings: Vec::new(),
        duration_seconds: start.elapsed().as_secs_f64(),
        plan: Some(Box::new(plan)),
    })
}

/// The report of a verify that found an apply writing the target: it compares nothing.
fn busy(m: &Migration, level: VerifyLevel, h: String, start: Instant) -> VerifyReport {
    VerifyReport {
        ok: false,
        level,
        source: m.source.clone(),
        target: m.survey().shown().to_path_buf(),
        selection: None,
        checked_files: 0,
        checked_bytes: 0,
        hashed_bytes: 0,
        hashed_while_copied: 0,
        cluster_blockers: Vec::new(),
        cluster_warnings: Vec::new(),
        plan: None,
        differences: vec![Difference {
            path: RelPath::default(),
            sigil: '!',
            detail: format!(
                "an apply is in progress on this target ({h}): its state is not a result; verify again once it has finished"
            ),
        }],
        duration_seconds: start.elapsed().as_secs_f64(),
    }
}

fn compare_file<'a>(
    s: &'a FileInfo,
    t: Option<&'a FileInfo>,
    diffs: &mut Vec<Difference>,
    pairs: &mut Vec<(&'a FileInfo, &'a FileInfo)>,
) {
    match t {
        None => diffs.push(Difference {
            path: s.rel.clone(),
            sigil: '-',
            detail: "missing on the target".into(),
        }),
        Some(t) if t.size != s.size => diffs.push(Difference {
            path: s.rel.clone(),
            sigil: '*',
            detail: format!("size {} on the source, {} on the target", s.size, t.size),
        }),
        Some(t) => pairs.push((s, t)),
    }
}

/// Checks owner and mode of every entry the plan owns on the target (as the scan saw them).
fn ownership(tgt: &Inventory, m: &Migration, diffs: &mut Vec<Difference>) {
    for a in &tgt.attrs {
        if let Some(problem) = perms::problem_of(a.uid, a.gid, a.mode, m.owner) {
            let path = if a.rel.is_empty() {
                "./".into()
            } else {
                a.rel.clone()
            };
            diffs.push(Difference {
                path,
                sigil: '*',
                detail: problem,
            });
        }
    }
}

/// What to do about a content difference between `s` and `t` (equal sizes): a plain apply
/// replaces a file whose mtime differs (or that it compares by its bytes anyway); one with
/// the source's size and mtime needs `apply --checksum`.
fn remedy(plan_path: &std::path::Path, s: &FileInfo, t: &FileInfo) -> String {
    let plan = if plan_path.as_os_str().is_empty() {
        "<plan>".to_string()
    } else {
        shell_word(plan_path)
    };
    if s.same_as(t) && !plan::compared_by_bytes(&s.rel) {
        format!(
            "the quick check (size+mtime) cannot see this: run `promigrate apply -f {plan} --checksum`"
        )
    } else {
        format!("`promigrate apply -f {plan}` replaces it")
    }
}

/// A path as one shell word: as it is when that is safe, else single-quoted.
fn shell_word(p: &std::path::Path) -> String {
    let text = p.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+,:=@%~".contains(c);
    if !text.is_empty() && text.chars().all(plain) && !text.starts_with('~') {
        text.into_owned()
    } else {
        crate::ssh::shell_quote(p)
    }
}

/// Hashes source and target of each pair in parallel; records content differences.
#[allow(clippy::too_many_arguments)]
fn hash_pairs(
    m: &Migration,
    survey: &dyn plan::Survey,
    pairs: &[(&FileInfo, &FileInfo)],
    progress: &dyn Progress,
    cancel: &AtomicBool,
    hashes: &plan::SourceHashes,
    diffs: &mut Vec<Difference>,
) -> anyhow::Result<u64> {
    let hashed = AtomicU64::new(0);
    // The target's side where the target is (in its receiver, for a volume elsewhere), at
    // the same time as the source's side here.
    let rels: Vec<RelPath> = pairs.iter().map(|(_, t)| t.rel.clone()).collect();
    let src_root = &m.src;
    let (theirs, ours) = std::thread::scope(|sc| {
        let theirs = sc.spawn(|| survey.hashes(&rels, m.parallelism, progress, cancel));
        let ours = crate::par::map_with(
            pairs,
            m.parallelism,
            || vec![0u8; crate::hash::BUF_SIZE],
            |buf, &(s, _)| {
                if cancel.load(Ordering::Relaxed) {
                    return None;
                }
                Some(
                    plan::source_hash(hashes, src_root, s, buf, progress, cancel).map(
                        |(h, read)| {
                            hashed.fetch_add(read, Ordering::Relaxed);
                            h
                        },
                    ),
                )
            },
        );
        let theirs = theirs
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        (theirs, ours)
    });
    let found = pairs
        .iter()
        .zip(ours)
        .zip(&theirs)
        .map(|((&(s, t), a), b)| {
            let a = a?;
            hashed.fetch_add(t.size, Ordering::Relaxed);
            let (sigil, detail) = match (a, b) {
                (Ok(x), Ok(y)) if x == *y => return None,
                (Ok(x), Ok(y)) => (
                    '*',
                    format!(
                        "content differs (xxh3-128 source {x:032x}, target {y:032x}); {}",
                        remedy(&m.plan_path, s, t)
                    ),
                ),
                (Err(e), _) => ('!', format!("cannot read the source: {e}")),
                (_, Err(e)) => ('!', format!("cannot read the target: {e}")),
            };
            Some(Difference {
                path: s.rel.clone(),
                sigil,
                detail,
            })
        });
    let found: Vec<Option<Difference>> = found.collect();
    if cancel.load(Ordering::Relaxed) {
        anyhow::bail!("verify interrupted before all files were hashed; the result is incomplete");
    }
    diffs.extend(found.into_iter().flatten());
    Ok(hashed.load(Ordering::Relaxed))
}

impl VerifyReport {
    /// The report for people.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Verify ({}): {} -> {}",
            serde_json::to_value(self.level)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            self.source.display(),
            self.target.display()
        );
        if let Some(sel) = &self.selection {
            let _ = writeln!(s, "Selection: {}", sel.line());
        }
        for d in &self.differences {
            let path = if d.path.is_empty() { "(plan)" } else { &d.path };
            let _ = writeln!(s, "{} {}  {}", d.sigil, path, d.detail);
        }
        let _ = writeln!(
            s,
            "{}, {} checked; {} hashed in {}{}",
            units::count(self.checked_files, "source file"),
            units::bytes(self.checked_bytes),
            units::bytes(self.hashed_bytes),
            units::duration(self.duration_seconds),
            if self.hashed_while_copied > 0 {
                format!(
                    " (the source side of {} hashed when an apply copied {}, not read again; every target file read back)",
                    units::count(self.hashed_while_copied, "file"),
                    units::verb_for(self.hashed_while_copied, "it", "them")
                )
            } else {
                String::new()
            }
        );
        for w in &self.cluster_warnings {
            let _ = writeln!(s, "warning (target Prometheus): {w}");
        }
        for b in &self.cluster_blockers {
            let _ = writeln!(s, "BLOCKER (target Prometheus): {b}");
        }
        if self.ok {
            let _ = writeln!(
                s,
                "{}",
                if self.level == VerifyLevel::Deep {
                    "OK: the target matches the source, and its format checks pass (Prometheus will open and read it)."
                } else {
                    "OK: the target matches the source."
                }
            );
        } else {
            let _ = writeln!(
                s,
                "FAILED: {}. Do not cut over.",
                match (self.differences.len(), self.cluster_blockers.len()) {
                    (d, 0) => units::count(d as u64, "difference"),
                    (0, b) => format!(
                        "the data matches, but the target Prometheus would not run it as migrated ({})",
                        units::count(b as u64, "blocker")
                    ),
                    (d, b) => format!(
                        "{}, and {} in the target Prometheus",
                        units::count(d as u64, "difference"),
                        units::count(b as u64, "blocker")
                    ),
                }
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn fi(rel: &str, size: u64, sec: i64) -> FileInfo {
        FileInfo::for_test(rel, size, sec)
    }

    #[test]
    fn the_remedy_of_a_content_difference_is_the_apply_that_sees_it() {
        let plan = Path::new("plans/prod.yaml");
        let chunk = fi("B/chunks/000001", 10, 5);
        // Same size and mtime: only --checksum sees it.
        assert_eq!(
            remedy(plan, &chunk, &chunk.clone()),
            "the quick check (size+mtime) cannot see this: run `promigrate apply -f plans/prod.yaml --checksum`"
        );
        // Another mtime, or a file compared by its bytes anyway: a plain apply replaces it.
        assert_eq!(
            remedy(plan, &chunk, &fi("B/chunks/000001", 10, 6)),
            "`promigrate apply -f plans/prod.yaml` replaces it"
        );
        let meta = fi("B/meta.json", 10, 5);
        assert_eq!(
            remedy(plan, &meta, &meta.clone()),
            "`promigrate apply -f plans/prod.yaml` replaces it"
        );
        // Unknown plan path; a path the shell would split or expand is quoted.
        assert!(
            remedy(Path::new(""), &chunk, &chunk.clone()).contains("apply -f <plan> --checksum")
        );
        assert_eq!(
            shell_word(Path::new("/tmp/my plan.yaml")),
            "'/tmp/my plan.yaml'"
        );
        assert_eq!(shell_word(Path::new("it's.yaml")), r"'it'\''s.yaml'");
        assert_eq!(shell_word(Path::new("~/plan.yaml")), "'~/plan.yaml'");
        assert_eq!(shell_word(Path::new("a/b-c_d.yaml")), "a/b-c_d.yaml");
    }
}
