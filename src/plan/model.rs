//! What a plan is: per target volume, what apply would do (blocks, files, extraneous
//! entries, phases), with its cost, warnings and blockers.

use std::path::PathBuf;

use serde::Serialize;

use super::diff::State;
use super::policy::{Extraneous, Phases};
use super::{file, inventory, preflight};
use crate::perms::Owner;
use crate::relpath::RelPath;
use crate::units;

/// How a plan tells that a target file is already the source's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Compare {
    /// The quick check, like rsync: same size and modification time (meta.json and
    /// tombstones, which a live source rewrites, by their bytes).
    #[default]
    Quick,
    /// The quick check, then, for block files it calls identical, a content hash (xxh3-128)
    /// of both sides, like `rsync -c`. For a presync, which copies no WAL/head file.
    ChecksumBlocks,
    /// The same for block files and WAL/head files.
    Checksum,
}

impl Compare {
    /// Whether block files are compared by content.
    pub fn blocks(self) -> bool {
        self != Compare::Quick
    }

    /// Whether WAL/head files are compared by content.
    pub fn head(self) -> bool {
        self == Compare::Checksum
    }
}

/// The parts of a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Blocks only; safe while the source Prometheus runs. A block that vanishes (compacted
    /// away) or changes while it is copied is left for the final phase.
    Presync,
    /// With the source stopped: new and changed blocks, meta.json and tombstones, blocks
    /// compacted away to quarantine, and an exact mirror of wal/, wbl/, chunks_head/.
    Final,
    /// Presync then final, in one run (the source must be stopped).
    #[default]
    All,
}

impl Phase {
    /// Its name, as `--phase` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Presync => "presync",
            Phase::Final => "final",
            Phase::All => "all",
        }
    }
}

/// What `apply` will do, as data. Serialised for `--output json`.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationPlan {
    /// `true` when there are no blockers.
    pub ok: bool,
    /// `metadata.name`.
    pub name: String,
    /// Source TSDB directory (on `source_host` for an SSH source).
    pub source: PathBuf,
    /// `user@host:port` of an SSH source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_host: Option<String>,
    /// The jump hosts to it, in order (`user@host:port`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_jumps: Vec<String>,
    /// The ssh config file that supplied some of `source_host`'s settings, and which.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_ssh_config: Option<SshConfigUse>,
    /// How the source is read.
    #[serde(skip)]
    pub src: crate::source::Source,
    /// Target TSDB directory (`target.path/subPath`).
    pub target: PathBuf,
    /// Where the target volume is mounted (`target.path`).
    pub mount: PathBuf,
    /// Owner every target entry gets.
    pub owner: Owner,
    /// Bandwidth limit of the presync in bytes/s, if any.
    pub bwlimit: Option<u64>,
    /// Bandwidth limit of the final phase (and `--phase all`) in bytes/s, if any.
    pub final_bwlimit: Option<u64>,
    /// Parallel copy workers.
    pub parallelism: usize,
    /// Whether extraneous target entries are quarantined.
    pub delete_extraneous: bool,
    /// The requested time range (ms), if any.
    pub time_range: Option<file::TimeRange>,
    /// The range the selected whole blocks actually cover (ms), when a time range is set.
    pub selected_range: Option<(i64, i64)>,
    /// How much of the source the selection holds.
    pub selection: Selection,
    /// Selected source blocks and their state on the target.
    pub blocks: Vec<BlockPlan>,
    /// Non-block data files (WAL, WBL, head chunks) and their state.
    pub files: Vec<FilePlan>,
    /// Non-block directories the target needs.
    pub dirs: Vec<RelPath>,
    /// Target entries the plan owns but the source lacks.
    pub extraneous: Vec<Extraneous>,
    /// promigrate temp files and staging dirs from an interrupted run (removed or reused).
    pub leftovers: Vec<RelPath>,
    /// Existing target entries whose owner or mode is wrong (apply fixes them).
    pub ownership: Vec<RelPath>,
    /// Source entries not copied, and why.
    pub skipped: Vec<inventory::Skipped>,
    /// Totals.
    pub stats: PlanStats,
    /// Whether the source Prometheus runs (the final phase needs it stopped).
    pub source_state: crate::live::Liveness,
    /// Which Prometheus version wrote the source data, and how that was learned.
    pub source_version: crate::promversion::SourceVersion,
    /// Cost of `apply --phase presync` (blocks, while the source runs) and of the final
    /// phase (WAL/head; with the source stopped, so this is the expected downtime).
    pub phases: Phases,
    /// Free space on the target filesystem.
    pub target_free_bytes: u64,
    /// Free inodes on the target filesystem (`None`: it has no fixed number of them).
    pub target_free_inodes: Option<u64>,
    /// What apply takes of the target filesystem: bytes with headroom, and inodes.
    pub target_needs: preflight::Needs,
    /// Things to know; they do not stop apply.
    pub warnings: Vec<String>,
    /// Things that stop apply (exit 1), and that verify reports as differences.
    pub blockers: Vec<String>,
    /// What apply would hit at its first writes to the target (a read-only mount, no
    /// permission to write, an owner this process cannot give, too few inodes, too little
    /// space): they stop apply (exit 1) like blockers, but verify, which only reads,
    /// ignores them.
    pub write_blockers: Vec<String>,
    /// Opt-in repairs this plan makes (`transfer.headRepair`), and what they cost.
    pub repairs: Vec<String>,
    /// How files were compared with the target.
    pub compare: Compare,
    /// Files (relative to the TSDB root) with the size and mtime of the source's but other
    /// content: found by a checksum comparison only; apply replaces them.
    pub checksum_differing: Vec<RelPath>,
    /// The cluster objects behind the target (`target.kubernetes`), as read by the preflight.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<crate::k8s::KubeReport>,
    /// How the target is reached when it is not mounted here (its receiver).
    #[serde(skip)]
    pub reach: Option<super::file::Reach>,
}

/// How much of the source the selection (timeRange, excludeBlocks) holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Selection {
    /// Source blocks selected.
    pub blocks_selected: usize,
    /// Source blocks in all.
    pub blocks_total: usize,
    /// Bytes of the selected blocks and head data.
    pub bytes_selected: u64,
    /// Bytes of every source block and all head data.
    pub bytes_total: u64,
    /// Whether the head data (wal/, chunks_head/, wbl/, chunk snapshots) is selected.
    pub head: bool,
}

impl Selection {
    /// "N of M source blocks selected (X of Y)", as every report says it.
    pub fn line(&self) -> String {
        format!(
            "{} of {} source blocks selected ({} of {}){}",
            self.blocks_selected,
            self.blocks_total,
            units::bytes(self.bytes_selected),
            units::bytes(self.bytes_total),
            if self.head {
                ""
            } else {
                "; head data (wal/, chunks_head/) not selected"
            }
        )
    }

    /// Whether the source has data and none of it is selected.
    pub fn is_empty_of_nonempty(&self) -> bool {
        self.bytes_total > 0 && self.bytes_selected == 0
    }
}

/// One selected source block.
#[derive(Debug, Clone, Serialize)]
pub struct BlockPlan {
    /// The block's ULID (its directory name).
    pub ulid: String,
    /// meta.json minTime (ms).
    pub min_time: i64,
    /// meta.json maxTime (ms).
    pub max_time: i64,
    /// Compaction level.
    pub level: u32,
    /// meta.json stats.numSamples.
    pub num_samples: u64,
    /// meta.json stats.numSeries.
    pub num_series: u64,
    /// Total bytes.
    pub size: u64,
    /// Number of files.
    pub files: usize,
    /// State on the target.
    pub state: State,
    /// Files (relative to the TSDB root) to copy.
    pub copy: Vec<RelPath>,
    /// Bytes to copy.
    pub copy_bytes: u64,
}

/// One non-block data file.
#[derive(Debug, Clone, Serialize)]
pub struct FilePlan {
    /// Path relative to the TSDB root.
    pub rel: RelPath,
    /// Size in bytes.
    pub size: u64,
    /// State on the target.
    pub state: State,
}

/// Totals of a plan.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PlanStats {
    /// Bytes of the selected source data.
    pub source_bytes: u64,
    /// Files of the selected source data.
    pub source_files: u64,
    /// Bytes to copy.
    pub copy_bytes: u64,
    /// Files to copy.
    pub copy_files: u64,
    /// Files already identical on the target.
    pub identical_files: u64,
    /// Files present on the target but different.
    pub differing_files: u64,
    /// Files compared by content (`--checksum`): those the quick check calls identical.
    pub checksum_compared_files: u64,
    /// Of those, the files whose content differs (included in `differing_files`).
    pub checksum_differing_files: u64,
    /// Estimated copy time at the bandwidth limit (seconds), if limited.
    pub eta_seconds: Option<f64>,
}

impl MigrationPlan {
    /// Adds the Kubernetes preflight: its blockers stop apply like any other.
    pub fn attach_kubernetes(&mut self, report: crate::k8s::KubeReport) {
        self.blockers.extend(report.blockers.iter().cloned());
        self.warnings.extend(report.warnings.iter().cloned());
        self.ok = self.blockers.is_empty() && self.write_blockers.is_empty();
        self.kubernetes = Some(report);
    }

    /// What the content comparison (`--checksum`) did, in a line; `None` without one.
    pub fn checksum_line(&self) -> Option<String> {
        let scope = match self.compare {
            Compare::Quick => return None,
            Compare::ChecksumBlocks => " (block files only: a presync copies no WAL/head file)",
            Compare::Checksum => "",
        };
        Some(format!(
            "Compared by content (--checksum): {} with equal size and mtime, {} {}{scope}",
            crate::units::count(self.stats.checksum_compared_files, "file"),
            self.stats.checksum_differing_files,
            crate::units::verb_for(self.stats.checksum_differing_files, "differs", "differ")
        ))
    }

    /// Whether applying this plan would change nothing on the target.
    pub fn writes_nothing(&self) -> bool {
        self.stats.copy_files == 0
            && self.leftovers.is_empty()
            && self.ownership.is_empty()
            && !self
                .extraneous
                .iter()
                .any(|e| e.quarantined(self.delete_extraneous))
    }

    /// Whether applying `phase` of this plan would change nothing on the target: a presync
    /// copies blocks only (WAL and head files wait for the final phase), removes leftovers
    /// and fixes ownership, and quarantines nothing.
    pub fn phase_writes_nothing(&self, phase: Phase) -> bool {
        match phase {
            Phase::Presync => {
                self.phases.presync.files == 0
                    && self.leftovers.is_empty()
                    && self.ownership.is_empty()
            }
            Phase::Final | Phase::All => self.writes_nothing(),
        }
    }
}

/// What an ssh config file supplied for an SSH source ([`MigrationPlan::source_ssh_config`]).
#[derive(Debug, Clone, Serialize)]
pub struct SshConfigUse {
    /// The file.
    pub file: PathBuf,
    /// Its keys that supplied something (`HostName`, `User`, `Port`, ...).
    pub keys: Vec<&'static str>,
}
