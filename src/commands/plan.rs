//! `promigrate plan`: what an apply would do to each target, read-only, with its cluster's
//! preflight.

use serde::Serialize;

use super::{
    Outcome, Report, build_plans, compare_of, kube_preflight, load, render_plans, report, runtime,
};
use crate::cli::PlanArgs;
use crate::exit::Code;
use crate::plan::MigrationPlan;
use crate::sync;

/// Every target volume's plan, in plan-file order (one for `target:`), as `plan` reports them.
#[derive(Serialize)]
struct PlanEach {
    ok: bool,
    targets: Vec<MigrationPlan>,
}

/// Runs `plan`: exit 0 without blockers, else 1.
pub fn run(args: &PlanArgs) -> Outcome {
    Outcome::of(plan(args))
}

fn plan(args: &PlanArgs) -> anyhow::Result<(Box<dyn Report>, Code)> {
    let a = &args.common;
    let rt = runtime()?;
    let (m, _receivers) = load(&rt, a.file(), false, crate::k8s::receiver::Held::Refuse)?;
    let mut plans = build_plans(&m, compare_of(args.checksum, sync::Phase::All))?;
    let records = args.state_dir().join(&m.name);
    for p in &mut plans {
        super::set_rates(p, args.bwlimit, args.phase_arg.map(Into::into), &records);
    }
    if m.targets.iter().any(|t| t.kubernetes.is_some()) {
        kube_preflight(&rt, &m, &mut plans, sync::Phase::All);
    }
    let ok = plans.iter().all(|p| p.ok);
    let code = if ok { Code::Ok } else { Code::Findings };
    let each = PlanEach { ok, targets: plans };
    let text = |e: &PlanEach| render_plans(&e.targets.iter().collect::<Vec<_>>());
    Ok((report(each, text), code))
}
