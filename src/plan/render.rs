//! The plan as text for people; `--output json` serialises the same data.

use std::fmt::Write as _;

use super::*;
use crate::units;

impl MigrationPlan {
    /// The report for people.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "Migration plan: {}", self.name);
        let _ = writeln!(s, "  source  {}", self.src.describe());
        if let Some(route) = self.src.ssh().map(|h| h.route()).filter(|r| !r.is_empty()) {
            let _ = writeln!(s, "          {}", route.join("; "));
        }
        let _ = writeln!(
            s,
            "  target  {}  ({} free{})",
            self.target.display(),
            units::bytes(self.target_free_bytes),
            if self.target_needs.inodes > 0 {
                format!(
                    "; apply needs {} and {}",
                    units::bytes(self.target_needs.bytes),
                    units::count(self.target_needs.inodes, "inode")
                )
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            s,
            "  owner   {}:{}, dirs g+rwx,setgid, files g+rw",
            self.owner.uid, self.owner.gid
        );
        if let Some(tr) = self.time_range {
            let f = |v: Option<i64>| v.map_or("-".to_string(), units::ms_utc);
            let _ = writeln!(s, "  range   requested [{}, {})", f(tr.min), f(tr.max));
            match self.selected_range {
                Some((a, z)) => {
                    let _ = writeln!(
                        s,
                        "          whole blocks selected cover [{}, {}) UTC",
                        units::ms_utc(a),
                        units::ms_utc(z)
                    );
                }
                None => {
                    let _ = writeln!(s, "          no block overlaps it");
                }
            }
        }
        let _ = writeln!(s, "  select  {}", self.selection.line());
        let _ = writeln!(
            s,
            "\nBlocks (= identical, - to copy, * differs, + extraneous):"
        );
        for b in &self.blocks {
            let _ = writeln!(
                s,
                "  {} {}  {} .. {}  L{}  {:>10}  {} series  {} samples{}",
                b.state.sigil(),
                b.ulid,
                units::ms_utc(b.min_time),
                units::ms_utc(b.max_time),
                b.level,
                units::bytes(b.size),
                b.num_series,
                b.num_samples,
                if b.state == State::Differs {
                    format!(
                        "  [{} to update]",
                        units::count(b.copy.len() as u64, "file")
                    )
                } else {
                    String::new()
                }
            );
        }
        if self.blocks.is_empty() {
            let _ = writeln!(s, "  (none selected)");
        }
        let _ = writeln!(s, "\nWAL and head:");
        let mut dirs: Vec<&str> = self.files.iter().map(|f| f.rel.top()).collect();
        dirs.dedup();
        for d in &dirs {
            let of: Vec<&FilePlan> = self.files.iter().filter(|f| f.rel.top() == *d).collect();
            let todo: Vec<&&FilePlan> = of.iter().filter(|f| f.state != State::Identical).collect();
            let _ = writeln!(
                s,
                "  {d}/: {}, {}; {} to copy",
                units::count(of.len() as u64, "file"),
                units::bytes(of.iter().map(|f| f.size).sum()),
                todo.len()
            );
            for f in todo.iter().filter(|f| f.state == State::Differs) {
                let _ = writeln!(s, "    * {}", f.rel);
            }
        }
        if dirs.is_empty() {
            let _ = writeln!(s, "  (none)");
        }
        if !self.extraneous.is_empty() {
            let _ = writeln!(s, "\nExtraneous on the target:");
            for e in &self.extraneous {
                let fate = if e.quarantined(self.delete_extraneous) {
                    "moved to quarantine by the final phase"
                } else {
                    "left in place"
                };
                let _ = writeln!(
                    s,
                    "  + {}  {}  ({}: {fate})",
                    e.rel,
                    units::bytes(e.size),
                    extra_reason(e.kind)
                );
            }
        }
        if !self.skipped.is_empty() {
            let _ = writeln!(s, "\nNot copied from the source:");
            for k in &self.skipped {
                let _ = writeln!(s, "  {}  ({})", k.rel, k.reason);
            }
        }
        if let Some(line) = self.checksum_line() {
            let _ = writeln!(s, "\n{line}");
            for rel in &self.checksum_differing {
                let _ = writeln!(s, "  * {rel}");
            }
        }
        let st = &self.stats;
        let _ = writeln!(
            s,
            "\nTo copy: {} in {} ({} identical, {} differing) of {} in {}",
            units::bytes(st.copy_bytes),
            units::count(st.copy_files, "file"),
            st.identical_files,
            st.differing_files,
            units::bytes(st.source_bytes),
            units::count(st.source_files, "file")
        );
        let eta = |p: &PhaseCost| {
            match (&p.rate, p.eta_seconds) {
            (Some(r), Some(eta)) if r.limit => format!(
                "{} at {}/s ({})",
                units::duration(eta),
                units::bytes(r.bytes_per_second),
                r.from
            ),
            (Some(r), Some(eta)) => format!(
                "about {} at {}/s ({}; no limit set)",
                units::duration(eta),
                units::bytes(r.bytes_per_second),
                r.from
            ),
            _ => "no estimate: no limit set and no earlier apply measured (plan --bwlimit RATE estimates at a rate)".to_string(),
        }
        };
        let _ = writeln!(
            s,
            "Phases: presync (blocks; the source may run) {} in {}, {}; final (WAL/head; source stopped: the downtime) {} in {}, {}",
            units::bytes(self.phases.presync.bytes),
            units::count(self.phases.presync.files, "file"),
            eta(&self.phases.presync),
            units::bytes(self.phases.final_.bytes),
            units::count(self.phases.final_.files, "file"),
            eta(&self.phases.final_)
        );
        let source = match &self.source_state {
            crate::live::Liveness::Running(how) => format!("running ({how})"),
            crate::live::Liveness::Stopped { clean: true } => "stopped".to_string(),
            crate::live::Liveness::Stopped { clean: false } => {
                "stopped, not cleanly (stale lock file)".to_string()
            }
            crate::live::Liveness::Unknown(why) => format!("unknown ({why})"),
        };
        let _ = writeln!(s, "Source Prometheus: {source}");
        let _ = writeln!(s, "Source version: {}", self.source_version.line());
        // The runbook notes this one: how long the source stays stopped for the copy.
        let pending = if self.phases.presync.bytes > 0 {
            format!(
                ", after a presync: {} of blocks is still to presync, which a final phase without one copies in the downtime too",
                units::bytes(self.phases.presync.bytes)
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "Downtime (the final phase's copy): {}{pending}",
            eta(&self.phases.final_)
        );
        if let Some(k) = &self.kubernetes {
            render_kubernetes(&mut s, k);
        }
        for r in &self.repairs {
            let _ = writeln!(s, "REPAIR: {r}");
        }
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        for b in self.blockers.iter().chain(&self.write_blockers) {
            let _ = writeln!(s, "BLOCKER: {b}");
        }
        let _ = writeln!(
            s,
            "{}",
            if self.ok {
                "Plan OK."
            } else {
                "Plan has blockers: apply will refuse."
            }
        );
        s
    }
}

/// The Kubernetes part of the plan text: each object, its state, and what apply does to it.
fn render_kubernetes(s: &mut String, k: &crate::k8s::KubeReport) {
    let _ = writeln!(s, "\nKubernetes:");
    let Some(st) = &k.state else {
        let _ = writeln!(
            s,
            "  (the cluster could not be read; see the blocker below)"
        );
        return;
    };
    let _ = writeln!(s, "  context {}  server {}", st.context, st.server);
    let _ = writeln!(
        s,
        "  namespace/{}: {}",
        k.namespace,
        if st.namespace_exists {
            "exists"
        } else {
            "MISSING"
        }
    );
    match &st.persistent_volume {
        Some(pv) => {
            let _ = writeln!(
                s,
                "  persistentvolume/{}: {}, reclaimPolicy {}, capacity {}, claimRef {}{}, accessModes {}, storageClass {}, {}",
                k.persistent_volume_name,
                pv.phase,
                pv.reclaim_policy,
                pv.capacity,
                pv.claim.as_deref().unwrap_or("(none)"),
                pv.claim_uid
                    .as_deref()
                    .map_or(String::new(), |u| format!(" (uid {u})")),
                pv.access_modes.join(","),
                if pv.storage_class.is_empty() {
                    "(none)"
                } else {
                    &pv.storage_class
                },
                pv.source
            );
        }
        None => {
            let _ = writeln!(
                s,
                "  persistentvolume/{}: MISSING",
                k.persistent_volume_name
            );
        }
    }
    match &st.persistent_volume_claim {
        Some(c) => {
            let _ = writeln!(
                s,
                "  persistentvolumeclaim/{}/{}: {}, volumeName {}",
                k.namespace,
                k.persistent_volume_claim_name,
                c.phase,
                c.volume_name.as_deref().unwrap_or("(none)")
            );
        }
        None => {
            let _ = writeln!(
                s,
                "  persistentvolumeclaim/{}/{}: does not exist",
                k.namespace, k.persistent_volume_claim_name
            );
        }
    }
    if let Some(name) = &k.stateful_set_name {
        match &st.stateful_set {
            Some(sts) => {
                let _ = writeln!(
                    s,
                    "  statefulset/{}/{name}: {} ({} ready), PVC retention whenScaled {} / whenDeleted {}{}",
                    k.namespace,
                    crate::units::count(sts.replicas as u64, "replica"),
                    sts.ready_replicas,
                    sts.when_scaled,
                    sts.when_deleted,
                    sts.recorded_replicas.map_or(String::new(), |n| format!(
                        ", scaled down from {n} by an earlier apply"
                    ))
                );
            }
            None => {
                let _ = writeln!(s, "  statefulset/{}/{name}: MISSING", k.namespace);
            }
        }
    }
    if let Some(t) = &st.prometheus_server {
        let _ = writeln!(
            s,
            "  target Prometheus ({}): version {}{}, runs as {}:{}, subPath {}, retention {}",
            t.from,
            t.version
                .as_ref()
                .map_or_else(|| "unknown".to_string(), |v| v.to_string()),
            t.image
                .as_deref()
                .map_or(String::new(), |i| format!(" (image {i})")),
            t.owner.uid.map_or("?".into(), |u| u.to_string()),
            t.owner.gid.map_or("?".into(), |g| g.to_string()),
            match t.sub_path.as_deref() {
                None => "unknown".to_string(),
                Some("") => "none".to_string(),
                Some(p) => p.to_string(),
            },
            {
                let r = &t.retention;
                let mut parts = Vec::new();
                if let Some(x) = &r.time {
                    parts.push(format!("time {x}"));
                }
                match (r.percentage, &r.size) {
                    (Some(p), _) => parts.push(format!("{p}% of the volume")),
                    (None, Some(z)) => parts.push(format!("size {z}")),
                    _ => {}
                }
                match (parts.is_empty(), r.default_time.is_empty()) {
                    (false, _) => parts.join(", "),
                    (true, false) => format!("{} (default)", r.default_time),
                    (true, true) => "no limit".to_string(),
                }
            }
        );
    }
    for d in &k.derived {
        let _ = writeln!(s, "  taken from the cluster: {d}");
    }
    if !st.pods_mounting.is_empty() {
        let _ = writeln!(
            s,
            "  pods mounting the claim: {}",
            st.pods_mounting.join(", ")
        );
    }
    for a in &k.actions {
        let _ = writeln!(s, "  apply will: {a}");
    }
}
