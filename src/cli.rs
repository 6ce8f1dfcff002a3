//! Command-line interface (clap). These types only parse and validate; `lib::run`
//! resolves them once into settings, and the core never sees clap types.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::logging::LogFormat;
use crate::plan::Phase;
use crate::units::Rate;
pub use crate::verify::VerifyLevel;

const ABOUT: &str =
    "Move a Prometheus TSDB onto a Kubernetes volume, and prove the copy is good before cutover.";

/// Top-level command line.
#[derive(Debug, Parser)]
#[command(name = "promigrate", version, about = ABOUT, after_help = crate::exit::HELP)]
pub struct Cli {
    /// Log format on stderr (`RUST_LOG` sets the level; default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// The phases of a migration, plus a read-only inspector.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inventory source and target and print what apply would do. Read-only.
    #[command(after_help = crate::exit::HELP)]
    Plan(PlanArgs),
    /// Execute the plan: copy (rate-limited, parallel, resumable), set ownership and modes.
    #[command(after_help = crate::exit::HELP)]
    Apply(ApplyArgs),
    /// Prove the target equals the source: meta.json, file sets, sizes, content hashes, ownership.
    #[command(after_help = crate::exit::HELP)]
    Verify(VerifyArgs),
    /// Summarise any TSDB data directory: blocks, time range, samples, WAL and head segments.
    #[command(after_help = crate::exit::HELP)]
    Inspect(InspectArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) of promigrate, or of one of its commands.
    Man {
        /// The command whose page to print (`plan`: the page promigrate-plan(1)); none: the
        /// page of promigrate itself.
        command: Option<String>,
    },
    /// Print the JSON Schema of the plan file (for editor validation).
    Schema,
    /// Serve a driving promigrate on stdin/stdout (run by promigrate in a receiver pod
    /// beside the target volume; not for use by hand).
    #[command(hide = true)]
    Receive {
        /// Listen on a loopback port for the driver's port-forward; say which on stdout
        /// (the stream is then that connection, or stdin/stdout if the driver says so).
        #[arg(long)]
        listen: bool,
    },
}

/// The command line as parsed: as `promigrate`, or as the kubectl plugin `kubectl-promigrate`
/// (`kubectl promigrate …`), whose help and usage then say `kubectl promigrate`.
pub fn parse() -> Cli {
    use clap::FromArgMatches;
    let matches = command_for_invocation(std::env::args_os().next()).get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// The clap command, named after how the binary was invoked.
pub fn command_for_invocation(argv0: Option<std::ffi::OsString>) -> clap::Command {
    use clap::CommandFactory;
    let invoked = argv0
        .as_deref()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut cmd = Cli::command();
    // Each command's help ends with a few examples, then the exit codes.
    for (name, examples) in EXAMPLES {
        cmd = cmd.mut_subcommand(*name, |c| {
            c.after_help(format!("Examples:\n{examples}\n{}", crate::exit::HELP))
        });
    }
    if invoked == "kubectl-promigrate" {
        cmd.name("kubectl-promigrate")
            .bin_name("kubectl promigrate")
    } else {
        cmd
    }
}

/// Examples ending each command's help (and its man page).
pub const EXAMPLES: &[(&str, &str)] = &[
    (
        "plan",
        "  # what apply would do; exit 1 on blockers:
  promigrate plan -f plan.yaml
  # the downtime estimate at 500 MiB/s:
  promigrate plan plan.yaml --bwlimit 500M --phase final
  # compare content too, as JSON:
  promigrate plan -f plan.yaml --checksum -o json
",
    ),
    (
        "apply",
        "  # blocks, while the source runs:
  promigrate apply -f plan.yaml --phase presync --bwlimit 200M --yes
  # the source stopped: the downtime:
  promigrate apply -f plan.yaml --phase final --yes
  # what it would change:
  promigrate apply -f plan.yaml --dry-run
",
    ),
    (
        "verify",
        "  # the go/no-go: exit 0 = cut over:
  promigrate verify -f plan.yaml --level deep
  # the differences, as JSON:
  promigrate verify -f plan.yaml -o json
",
    ),
    (
        "inspect",
        "  # blocks, time range, WAL and head:
  promigrate inspect /var/lib/prometheus/data
  # and read every file back:
  promigrate inspect /mnt/pv/prometheus-db --deep
",
    ),
];

/// Report format on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// A report for people.
    #[default]
    Text,
    /// One JSON document with a boolean top-level `ok`.
    Json,
}

/// Options shared by the commands that read a plan file.
#[derive(Debug, Args)]
pub struct PlanFileArgs {
    /// The migration plan (YAML, `kind: Migration`).
    #[arg(
        short = 'f',
        long = "file",
        value_name = "PLAN",
        required_unless_present = "plan"
    )]
    file: Option<PathBuf>,
    /// The plan file, given without -f (`promigrate plan PLAN` is `promigrate plan -f PLAN`).
    #[arg(value_name = "PLAN", conflicts_with = "file")]
    plan: Option<PathBuf>,
    /// Report format on stdout.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

impl PlanFileArgs {
    /// The plan file: -f, or the one given without it.
    pub fn file(&self) -> &std::path::Path {
        self.file
            .as_deref()
            .or(self.plan.as_deref())
            .unwrap_or(std::path::Path::new(""))
    }

    /// The run-record directory: `--state-dir` (`given`), else `migrations/` beside the
    /// plan file, so that it does not depend on where promigrate runs from.
    pub fn state_dir(&self, given: Option<&std::path::Path>) -> PathBuf {
        match given {
            Some(d) => d.to_path_buf(),
            None => default_state_dir(self.file()),
        }
    }
}

/// `migrations/` in the plan file's directory.
pub fn default_state_dir(plan: &std::path::Path) -> PathBuf {
    match plan.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => dir.join("migrations"),
        // A plan named without a directory: `migrations`, as `--state-dir migrations` is.
        None => PathBuf::from("migrations"),
    }
}

/// `promigrate plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub common: PlanFileArgs,
    /// Also compare the content (xxh3-128 of both sides) of every file whose size and mtime
    /// match, like `rsync -c`: shows what the quick check cannot see. Reads those files whole.
    #[arg(long)]
    pub checksum: bool,
    /// Estimate at this bandwidth limit, as `apply --bwlimit RATE` would run (rsync units;
    /// 0 = none), instead of the plan's `transfer.bwlimit` / `transfer.finalBwlimit`.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub bwlimit: Option<Rate>,
    /// The phase `--bwlimit` is for (default: both; `all` is the final phase's rate, as
    /// apply runs it with the source stopped); the estimates of the others stay.
    #[arg(long = "phase", id = "phase", value_enum, requires = "bwlimit")]
    pub phase_arg: Option<PhaseArg>,
    /// Where apply keeps its run records (default: `migrations/` beside the plan file): a
    /// phase without a limit is estimated at the rate the latest apply measured there.
    #[arg(long = "state-dir", id = "state_dir", value_name = "DIR")]
    pub state_dir_arg: Option<PathBuf>,
}

/// `promigrate apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub common: PlanFileArgs,
    /// Bandwidth limit across all workers, rsync units (200M = 200 MiB/s; bare number = KiB/s; 0 = none).
    /// Overrides the plan's limit of the phase this run copies: `transfer.bwlimit` for a
    /// presync, `transfer.finalBwlimit` for the final phase and `all` (the downtime).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub bwlimit: Option<Rate>,
    /// Do not ask for confirmation (it is only asked on a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Print the actions apply would take, and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also compare the content (xxh3-128 of both sides) of every file whose size and mtime
    /// match, like `rsync -c`, and replace those that differ (the `*` content differences of
    /// verify). Reads those files whole; a presync compares block files only.
    #[arg(long)]
    pub checksum: bool,
    /// Where run records are written (`<DIR>/<metadata.name>/`; default: `migrations/`
    /// beside the plan file, wherever promigrate runs from).
    #[arg(long = "state-dir", id = "state_dir", value_name = "DIR")]
    pub state_dir_arg: Option<PathBuf>,
    /// presync: blocks only, while the source runs; final: the rest, with the source stopped;
    /// all: both (the source must be stopped).
    #[arg(long = "phase", id = "phase", value_enum, default_value_t = PhaseArg::All)]
    pub phase_arg: PhaseArg,
    /// Stop cleanly at a block/file boundary before this time (RFC 3339) or after this long
    /// (e.g. 45m, 1h30m); the run is then incomplete (exit 1) and the next apply continues.
    #[arg(long, value_name = "TIME|DURATION", value_parser = parse_deadline)]
    pub deadline: Option<Deadline>,
    /// The final phase needs the source stopped; when that cannot be seen (no lock file and
    /// processes that cannot be inspected), say so with this flag.
    #[arg(long)]
    pub source_stopped: bool,
    /// With `target.kubernetes`: how deep the verify that gates the StatefulSet's scale-up
    /// (and the PV recovery) looks after the final phase.
    #[arg(long = "verify-level", id = "verify_level", value_enum, default_value_t = LevelArg::Checksum)]
    pub verify_level_arg: LevelArg,
    /// Push this run's metrics to a Pushgateway (overrides `report.pushgateway.url`; the
    /// plan's `caFile` and credentials still apply).
    #[arg(long, value_name = "URL")]
    pub pushgateway: Option<String>,
}

/// `--deadline`: a point in time or a duration from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// An absolute time.
    At(jiff::Timestamp),
    /// This long after the start.
    After(std::time::Duration),
}

/// A `--deadline` fixed at the start of a run: its time (UTC) and the instant it falls on.
#[derive(Debug, Clone, Copy)]
pub struct ResolvedDeadline {
    /// When it falls (UTC).
    pub at: jiff::Timestamp,
    /// The same, on the monotonic clock.
    pub instant: std::time::Instant,
}

impl ResolvedDeadline {
    /// Time left until it.
    pub fn left(&self) -> std::time::Duration {
        self.instant
            .saturating_duration_since(std::time::Instant::now())
    }
}

impl Deadline {
    /// Fixes the deadline for a run that starts at `now`; a time already past is refused
    /// (invalid input), showing the current time.
    pub fn resolve(self, now: jiff::Timestamp) -> anyhow::Result<ResolvedDeadline> {
        let instant = std::time::Instant::now();
        let fmt = |t: jiff::Timestamp| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        match self {
            Deadline::After(d) => Ok(ResolvedDeadline {
                at: now
                    .checked_add(jiff::SignedDuration::try_from(d).unwrap_or_default())
                    .map_err(|_| {
                        crate::exit::InvalidInput(format!(
                            "--deadline {}s is too far away: give a duration such as 45m or an RFC 3339 time",
                            d.as_secs()
                        ))
                    })?,
                instant: instant.checked_add(d).ok_or_else(|| {
                    crate::exit::InvalidInput(format!(
                        "--deadline {}s is too far away: give a duration such as 45m or an RFC 3339 time",
                        d.as_secs()
                    ))
                })?,
            }),
            Deadline::At(t) if t <= now => Err(crate::exit::InvalidInput(format!(
                "--deadline {} is already past: it is now {} UTC. Give a later time, or a duration such as 45m. Nothing was written",
                fmt(t),
                fmt(now)
            ))
            .into()),
            Deadline::At(t) => Ok(ResolvedDeadline {
                at: t,
                instant: instant
                    .checked_add(
                        std::time::Duration::try_from(now.duration_until(t)).unwrap_or_default(),
                    )
                    .ok_or_else(|| {
                        crate::exit::InvalidInput(format!(
                            "--deadline {} is too far away: give a time within the change window",
                            fmt(t)
                        ))
                    })?,
            }),
        }
    }
}

fn parse_deadline(s: &str) -> Result<Deadline, String> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(Deadline::At(t));
    }
    match s.parse::<jiff::SignedDuration>() {
        Ok(d) if d.is_positive() => std::time::Duration::try_from(d)
            .map(Deadline::After)
            .map_err(|e| e.to_string()),
        _ => Err(format!(
            "`{s}` is neither an RFC 3339 time (2025-11-21T02:00:00Z) nor a duration (45m, 1h30m)"
        )),
    }
}

/// `--level`/`--verify-level`: how deep `verify` looks ([`VerifyLevel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LevelArg {
    /// meta.json field by field, file sets, sizes, ownership and modes.
    Meta,
    /// Everything in `meta`, plus a content hash (xxh3-128) of every file on both sides.
    Checksum,
    /// Everything in `checksum`, plus format validation of the target: that Prometheus will
    /// open and read it (chunk, index, tombstone, head chunk and WAL CRCs, numbering).
    Deep,
}

impl From<LevelArg> for VerifyLevel {
    fn from(a: LevelArg) -> Self {
        match a {
            LevelArg::Meta => VerifyLevel::Meta,
            LevelArg::Checksum => VerifyLevel::Checksum,
            LevelArg::Deep => VerifyLevel::Deep,
        }
    }
}

/// `--phase`: which part of the migration apply runs ([`Phase`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PhaseArg {
    /// Blocks only; safe while the source Prometheus runs. A block that vanishes (compacted
    /// away) or changes while it is copied is left for the final phase.
    Presync,
    /// With the source stopped: new and changed blocks, meta.json and tombstones, blocks
    /// compacted away to quarantine, and an exact mirror of wal/, wbl/, chunks_head/.
    Final,
    /// Presync then final, in one run (the source must be stopped).
    All,
}

impl From<PhaseArg> for Phase {
    fn from(a: PhaseArg) -> Self {
        match a {
            PhaseArg::Presync => Phase::Presync,
            PhaseArg::Final => Phase::Final,
            PhaseArg::All => Phase::All,
        }
    }
}

impl ApplyArgs {
    /// `--phase`.
    pub fn phase(&self) -> Phase {
        self.phase_arg.into()
    }

    /// `--verify-level`.
    pub fn verify_level(&self) -> VerifyLevel {
        self.verify_level_arg.into()
    }
}

impl VerifyArgs {
    /// `--level`.
    pub fn level(&self) -> VerifyLevel {
        self.level_arg.into()
    }
}

/// `promigrate verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub common: PlanFileArgs,
    /// How deep to compare.
    #[arg(long = "level", id = "level", value_enum, default_value_t = LevelArg::Checksum)]
    pub level_arg: LevelArg,
    /// Push this run's metrics to a Pushgateway (overrides `report.pushgateway.url`; the
    /// plan's `caFile` and credentials still apply).
    #[arg(long, value_name = "URL")]
    pub pushgateway: Option<String>,
    /// Where run records are written (`<DIR>/<metadata.name>/`; default: `migrations/`
    /// beside the plan file, wherever promigrate runs from).
    #[arg(long = "state-dir", id = "state_dir", value_name = "DIR")]
    pub state_dir_arg: Option<PathBuf>,
}

/// `promigrate inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A Prometheus data directory (the one holding `wal/` and the block directories).
    pub dir: PathBuf,
    /// Also validate the format of every file (chunk, index, tombstone, head chunk and WAL
    /// CRCs, numbering, references), and say what Prometheus would do about each problem.
    #[arg(long)]
    pub deep: bool,
    /// Files read at once with --deep.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallelism: u16,
    /// Report format on stdout.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

fn parse_rate(s: &str) -> Result<Rate, String> {
    s.parse()
}

macro_rules! state_dir_of {
    ($($args:ty),*) => {$(
        impl $args {
            /// The run-record directory: `--state-dir`, else `migrations/` beside the plan.
            pub fn state_dir(&self) -> PathBuf {
                self.common.state_dir(self.state_dir_arg.as_deref())
            }
        }
    )*};
}
state_dir_of!(PlanArgs, ApplyArgs, VerifyArgs);
