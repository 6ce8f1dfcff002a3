//! `plan`: inventory source and target, compare them, and describe what `apply` would do,
//! with the cost (bytes, files, ETA), warnings and blockers. Building a plan changes nothing:
//! it only reads directories and meta.json files (and, with [`Compare`] set to a checksum,
//! every file the quick check calls identical, on both sides).

mod build;
pub mod diff;
pub mod file;
pub mod inventory;
mod model;
pub mod policy;
pub mod preflight;
mod render;
pub mod survey;

pub use build::{
    ProgressFor, SourceFacts, SourceHashes, build, build_from, compared_by_bytes, scan_and_check,
    source_hash,
};
pub use diff::State;
pub use file::Migration;
pub use model::*;
pub use policy::{ExtraKind, Extraneous, PhaseCost, Phases, extra_reason, phases};
pub use survey::{LocalSurvey, Survey};
