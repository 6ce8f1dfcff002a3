//! Read-only preflight of the cluster objects behind a target: what they look like, what
//! stops a migration (blockers), and what apply will do to each.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume};
use kube::Api;
use serde::Serialize;

use super::{Cluster, api_error, pods_mounting, recorded_replicas};
use crate::plan::file::KubeTarget;

/// The state of the objects, as read.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KubeState {
    /// Kubeconfig context.
    pub context: String,
    /// API server URL.
    pub server: String,
    /// Whether the namespace exists.
    pub namespace_exists: bool,
    /// The PV, if it exists.
    pub persistent_volume: Option<PvState>,
    /// The claim, if it exists.
    pub persistent_volume_claim: Option<PvcState>,
    /// The StatefulSet, if named and it exists.
    pub stateful_set: Option<StsState>,
    /// Pods in the namespace that mount the claim.
    pub pods_mounting: Vec<String>,
    /// What the target server runs with (the StatefulSet's pod template, the operator's
    /// resource), if they exist.
    pub prometheus_server: Option<super::server::TargetServer>,
}

/// What matters of a PV.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PvState {
    /// `status.phase`.
    pub phase: String,
    /// `spec.persistentVolumeReclaimPolicy`.
    pub reclaim_policy: String,
    /// `spec.capacity.storage` in bytes, if parseable.
    pub capacity_bytes: Option<u64>,
    /// `spec.capacity.storage` as written.
    pub capacity: String,
    /// `spec.claimRef` as `namespace/name`, if set.
    pub claim: Option<String>,
    /// `spec.claimRef.uid`, if set.
    pub claim_uid: Option<String>,
    /// `spec.claimRef.resourceVersion` is set.
    pub claim_resource_version: bool,
    /// `spec.accessModes`.
    pub access_modes: Vec<String>,
    /// `spec.storageClassName`.
    pub storage_class: String,
    /// hostPath / local / nfs / csi / …
    pub source: String,
    /// The CSI driver, for a csi volume.
    pub csi_driver: Option<String>,
}

/// What matters of a claim.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PvcState {
    /// `status.phase`.
    pub phase: String,
    /// `spec.volumeName`.
    pub volume_name: Option<String>,
    /// `metadata.uid`.
    pub uid: String,
}

/// What matters of a StatefulSet.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StsState {
    /// `spec.replicas`.
    pub replicas: i32,
    /// `status.readyReplicas`.
    pub ready_replicas: i32,
    /// `spec.persistentVolumeClaimRetentionPolicy.whenScaled` (default Retain).
    pub when_scaled: String,
    /// `spec.persistentVolumeClaimRetentionPolicy.whenDeleted` (default Retain).
    pub when_deleted: String,
    /// Replicas recorded by an earlier, unfinished promigrate apply.
    pub recorded_replicas: Option<i32>,
}

/// The preflight of one target's objects.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KubeReport {
    /// The objects named in the plan.
    pub namespace: String,
    /// PV name.
    pub persistent_volume_name: String,
    /// Claim name.
    pub persistent_volume_claim_name: String,
    /// StatefulSet name, if any.
    pub stateful_set_name: Option<String>,
    /// The operator's Prometheus resource, if the plan names one.
    pub prometheus_name: Option<String>,
    /// What the plan left out and was taken from the cluster.
    pub derived: Vec<String>,
    /// What was read; `None` when the cluster could not be read.
    pub state: Option<KubeState>,
    /// What stops apply.
    pub blockers: Vec<String>,
    /// What to know.
    pub warnings: Vec<String>,
    /// What apply will do to each object.
    pub actions: Vec<String>,
}

/// Reads the objects (read-only).
pub async fn inspect(cluster: &Cluster, k: &KubeTarget) -> anyhow::Result<KubeState> {
    let c = &cluster.client;
    let ns_api: Api<Namespace> = Api::all(c.clone());
    let namespace_exists = ns_api
        .get_opt(&k.namespace)
        .await
        .map_err(|e| api_error(cluster, &format!("namespace/{}", k.namespace), e))?
        .is_some();
    let pv_api: Api<PersistentVolume> = Api::all(c.clone());
    let pv = pv_api
        .get_opt(&k.persistent_volume)
        .await
        .map_err(|e| {
            api_error(
                cluster,
                &format!("persistentvolume/{}", k.persistent_volume),
                e,
            )
        })?
        .map(pv_state);
    let mut state = KubeState {
        context: cluster.context.clone(),
        server: cluster.server.clone(),
        namespace_exists,
        persistent_volume: pv,
        ..Default::default()
    };
    if !namespace_exists {
        return Ok(state);
    }
    let (pvc_api, object) = super::claim(cluster, k);
    state.persistent_volume_claim = pvc_api
        .get_opt(&k.persistent_volume_claim)
        .await
        .map_err(|e| api_error(cluster, &object, e))?
        .map(|pvc| PvcState {
            phase: pvc
                .status
                .and_then(|s| s.phase)
                .unwrap_or_else(|| "Unknown".into()),
            volume_name: pvc.spec.and_then(|s| s.volume_name),
            uid: pvc.metadata.uid.unwrap_or_default(),
        });
    if let Some(name) = &k.stateful_set {
        let sts_api: Api<StatefulSet> = Api::namespaced(c.clone(), &k.namespace);
        state.stateful_set = sts_api
            .get_opt(name)
            .await
            .map_err(|e| api_error(cluster, &format!("statefulset/{}/{name}", k.namespace), e))?
            .map(|s| sts_state(&s));
    }
    state.pods_mounting = pods_mounting(cluster, k).await?;
    state.prometheus_server = super::server::read(cluster, k).await?;
    Ok(state)
}

fn pv_state(pv: PersistentVolume) -> PvState {
    let spec = pv.spec.unwrap_or_default();
    let capacity = spec
        .capacity
        .as_ref()
        .and_then(|c| c.get("storage"))
        .map(|q| q.0.clone())
        .unwrap_or_default();
    let source = [
        (spec.host_path.is_some(), "hostPath"),
        (spec.local.is_some(), "local"),
        (spec.nfs.is_some(), "nfs"),
        (spec.csi.is_some(), "csi"),
    ]
    .iter()
    .find(|(yes, _)| *yes)
    .map_or("other", |(_, n)| n)
    .to_string();
    let claim = spec.claim_ref.as_ref();
    PvState {
        phase: pv
            .status
            .and_then(|s| s.phase)
            .unwrap_or_else(|| "Unknown".into()),
        reclaim_policy: spec
            .persistent_volume_reclaim_policy
            .clone()
            .unwrap_or_else(|| "Retain".into()),
        capacity_bytes: quantity_bytes(&capacity),
        capacity,
        claim: claim.map(|c| {
            format!(
                "{}/{}",
                c.namespace.as_deref().unwrap_or(""),
                c.name.as_deref().unwrap_or("")
            )
        }),
        claim_uid: claim.and_then(|c| c.uid.clone()),
        claim_resource_version: claim.is_some_and(|c| c.resource_version.is_some()),
        access_modes: spec.access_modes.clone().unwrap_or_default(),
        storage_class: spec.storage_class_name.clone().unwrap_or_default(),
        csi_driver: spec.csi.as_ref().map(|c| c.driver.clone()),
        source,
    }
}

fn sts_state(s: &StatefulSet) -> StsState {
    let spec = s.spec.as_ref();
    let policy = spec.and_then(|s| s.persistent_volume_claim_retention_policy.as_ref());
    StsState {
        replicas: spec.and_then(|s| s.replicas).unwrap_or(1),
        ready_replicas: s
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0),
        when_scaled: policy
            .and_then(|p| p.when_scaled.clone())
            .unwrap_or_else(|| "Retain".into()),
        when_deleted: policy
            .and_then(|p| p.when_deleted.clone())
            .unwrap_or_else(|| "Retain".into()),
        recorded_replicas: recorded_replicas(s),
    }
}

/// A Kubernetes quantity (`100Gi`, `500G`, `1e9`, `1E`, `2Ei`, `1073741824`) in bytes,
/// parsed by `kube_quantity` and rounded up as Kubernetes' `Value()` does (`500m` is 1);
/// `None` for what is not a quantity, a negative one, or one beyond `u64`.
pub fn quantity_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    // kube_quantity reads a missing number as 0 (`Gi`); Kubernetes refuses it.
    if !q
        .trim_start_matches('+')
        .starts_with(|c: char| c.is_ascii_digit() || c == '.')
    {
        return None;
    }
    // kube_quantity 0.9 takes the `E` of the exa suffixes for an exponent and fails (`1E`,
    // `2Ei`): those are read as peta, times 1000 or 1024.
    let exa = q
        .strip_suffix("Ei")
        .map(|n| (n, "Pi", 1024.0))
        .or_else(|| q.strip_suffix('E').map(|n| (n, "P", 1000.0)));
    let (text, times) = match exa {
        Some((num, peta, times)) if !num.contains(['e', 'E']) => (format!("{num}{peta}"), times),
        _ => (q.to_string(), 1.0),
    };
    let parsed = kube_quantity::ParsedQuantity::try_from(text.as_str()).ok()?;
    let bytes = parsed.to_bytes_f64()? * times;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then(|| bytes.ceil() as u64)
}

/// Blockers, warnings and actions for one target's objects, given the bytes the TSDB will
/// occupy on the volume and whether apply has anything to write. Pure: the same state
/// always gives the same verdict.
pub fn assess(k: &KubeTarget, state: &KubeState, data_bytes: u64, writes: bool) -> KubeReport {
    let mut r = KubeReport {
        namespace: k.namespace.clone(),
        persistent_volume_name: k.persistent_volume.clone(),
        persistent_volume_claim_name: k.persistent_volume_claim.clone(),
        stateful_set_name: k.stateful_set.clone(),
        prometheus_name: k.prometheus.clone(),
        derived: k.derived.clone(),
        state: Some(state.clone()),
        ..Default::default()
    };
    let ns = &k.namespace;
    let pv_name = &k.persistent_volume;
    let pvc_name = &k.persistent_volume_claim;
    if !state.namespace_exists {
        r.blockers.push(format!(
            "namespace {ns} does not exist in context `{}`: check target.kubernetes.namespace and .context",
            state.context
        ));
    }
    match &state.persistent_volume {
        None => r.blockers.push(format!(
            "persistentvolume/{pv_name} does not exist in context `{}`: check target.kubernetes.persistentVolume (kubectl get pv)",
            state.context
        )),
        Some(pv) => {
            if pv.reclaim_policy != "Retain" {
                r.blockers.push(format!(
                    "persistentvolume/{pv_name} has reclaimPolicy {}: releasing its claim would {} the volume, and promigrate modifies only Retain PVs. Change it first: kubectl patch pv {pv_name} -p '{{\"spec\":{{\"persistentVolumeReclaimPolicy\":\"Retain\"}}}}'",
                    pv.reclaim_policy,
                    if pv.reclaim_policy == "Recycle" { "scrub" } else { "destroy" }
                ));
            }
            if pv.phase == "Failed" {
                r.blockers.push(format!(
                    "persistentvolume/{pv_name} is Failed (its reclaim failed): inspect it with kubectl describe pv {pv_name} and fix it by hand"
                ));
            }
            let need = data_bytes + data_bytes / 100 * u64::from(k.headroom_percent);
            match pv.capacity_bytes {
                Some(cap) if cap < need => r.blockers.push(format!(
                    "persistentvolume/{pv_name} has capacity {} ({}), less than the data plus {}% headroom ({}): use a bigger volume",
                    pv.capacity,
                    crate::units::bytes(cap),
                    k.headroom_percent,
                    crate::units::bytes(need)
                )),
                None => r.warnings.push(format!(
                    "persistentvolume/{pv_name} capacity `{}` could not be read; capacity not checked",
                    pv.capacity
                )),
                _ => {}
            }
            if let Some(claim) = &pv.claim
                && claim != &format!("{ns}/{pvc_name}")
            {
                r.blockers.push(format!(
                    "persistentvolume/{pv_name} is claimed by {claim}, not {ns}/{pvc_name}: check target.kubernetes.persistentVolumeClaim, or free the PV by hand"
                ));
            }
            if pv.phase == "Released" && pv.reclaim_policy == "Retain" {
                match &pv.claim_uid {
                    Some(uid) => r.actions.push(format!(
                        "persistentvolume/{pv_name}: after a successful verify, recover it from Released with a JSON patch that tests claimRef.uid == {uid} and removes it{}; it stays reserved for {ns}/{pvc_name}",
                        if pv.claim_resource_version { " and claimRef.resourceVersion" } else { "" }
                    )),
                    None => r.actions.push(format!(
                        "persistentvolume/{pv_name}: Released without a claim UID; wait for the PV controller to make it Available"
                    )),
                }
            }
            if let Some(kind) = nfs_kind(pv) {
                r.warnings.push(format!(
                    "persistentvolume/{pv_name} is {kind}: Prometheus does not support NFS-like file systems for its TSDB (corruption and lock failures are known); use a block volume (storage class `{}` is not one)",
                    pv.storage_class
                ));
            }
        }
    }
    match &state.persistent_volume_claim {
        Some(pvc) => {
            if let Some(v) = &pvc.volume_name
                && v != pv_name
            {
                r.blockers.push(format!(
                    "persistentvolumeclaim/{ns}/{pvc_name} is bound to persistentvolume/{v}, not {pv_name}: the pod would not see the migrated data. Check target.kubernetes.persistentVolume"
                ));
            }
            if pvc.phase == "Pending" {
                r.warnings.push(format!(
                    "persistentvolumeclaim/{ns}/{pvc_name} is Pending: it binds once persistentvolume/{pv_name} is Available for it{}",
                    if state.persistent_volume.as_ref().is_some_and(|p| p.phase == "Released") { " (apply recovers the Released PV)" } else { "" }
                ));
            }
        }
        None if state.namespace_exists => r.warnings.push(format!(
            "persistentvolumeclaim/{ns}/{pvc_name} does not exist yet: {}",
            if k.stateful_set.is_some() {
                "the StatefulSet's volumeClaimTemplate creates it when it scales up"
            } else {
                "create it (or the StatefulSet) after apply; it will bind the reserved PV"
            }
        )),
        None => {}
    }
    match (&k.stateful_set, &state.stateful_set) {
        (Some(name), None) if state.namespace_exists => r.blockers.push(format!(
            "statefulset/{ns}/{name} does not exist: check target.kubernetes.statefulSet (or remove it from the plan if the StatefulSet is created after the migration)"
        )),
        (Some(name), Some(sts)) => {
            if sts.when_scaled == "Delete" {
                r.blockers.push(format!(
                    "statefulset/{ns}/{name} has persistentVolumeClaimRetentionPolicy.whenScaled: Delete, so scaling it to 0 deletes its claims. Set it to Retain first: kubectl patch sts {name} -n {ns} -p '{{\"spec\":{{\"persistentVolumeClaimRetentionPolicy\":{{\"whenScaled\":\"Retain\"}}}}}}'"
                ));
            }
            if sts.when_deleted == "Delete" {
                r.warnings.push(format!(
                    "statefulset/{ns}/{name} has persistentVolumeClaimRetentionPolicy.whenDeleted: Delete: deleting the StatefulSet deletes its claims"
                ));
            }
            match (sts.replicas, sts.recorded_replicas) {
                (0, Some(n)) => r.actions.push(format!(
                    "statefulset/{ns}/{name}: stays at 0 (an earlier apply scaled it down from {n}); scaled back to {n} after a successful verify"
                )),
                (0, None) => r.actions.push(format!(
                    "statefulset/{ns}/{name}: has 0 replicas and is left so"
                )),
                (n, _) if !writes => r.actions.push(format!(
                    "statefulset/{ns}/{name}: {}, left running: apply has nothing to write",
                    crate::units::count(n as u64, "replica")
                )),
                (n, _) => r.actions.push(format!(
                    "statefulset/{ns}/{name}: record {n} replicas in annotation {}, scale to 0 and wait (up to {}s) for its pods to go before writing; scale back to {n} after a successful verify and wait for the claim to bind",
                    super::REPLICAS_ANNOTATION,
                    k.wait_timeout.as_secs()
                )),
            }
        }
        _ => {}
    }
    if let Some(name) = &k.prometheus {
        let object = format!("prometheus/{ns}/{name}");
        match state.prometheus_server.as_ref().and_then(|s| s.paused.clone()) {
            None if state.namespace_exists => r.blockers.push(format!(
                "{object} does not exist: check target.kubernetes.prometheus (kubectl get prometheus -n {ns})"
            )),
            Some(_) if !writes => {}
            Some(paused) => {
                let recorded = state
                    .prometheus_server
                    .as_ref()
                    .and_then(|s| s.recorded_paused.clone());
                // Before the StatefulSet's scale-down: the pause is what keeps it at 0.
                let at = r
                    .actions
                    .iter()
                    .position(|a| a.starts_with("statefulset/"))
                    .unwrap_or(r.actions.len());
                r.actions.insert(at, match recorded {
                    Some(before) => format!(
                        "{object}: stays paused (an earlier apply paused it; spec.paused was {before}); set back to {before} after a successful verify"
                    ),
                    None => format!(
                        "{object}: record spec.paused ({paused}) in annotation {}, set spec.paused: true so the operator leaves the StatefulSet at 0; set back to {paused} after a successful verify",
                        super::server::PAUSED_ANNOTATION
                    ),
                });
            }
            None => {}
        }
    }
    if !state.pods_mounting.is_empty() && k.stateful_set.is_none() && !writes {
        r.warnings.push(format!(
            "{} {} {} persistentvolumeclaim/{ns}/{pvc_name}; apply has nothing to write, so {} left running",
            crate::units::noun_for(state.pods_mounting.len() as u64, "pod"),
            state.pods_mounting.join(", "),
            crate::units::verb_for(state.pods_mounting.len() as u64, "mounts", "mount"),
            crate::units::verb_for(state.pods_mounting.len() as u64, "it is", "they are")
        ));
    } else if !state.pods_mounting.is_empty() && k.stateful_set.is_none() {
        r.blockers.push(format!(
            "{} {} {} persistentvolumeclaim/{ns}/{pvc_name} and would write while data is copied: stop {}, or name their StatefulSet in target.kubernetes.statefulSet",
            crate::units::noun_for(state.pods_mounting.len() as u64, "pod"),
            state.pods_mounting.join(", "),
            crate::units::verb_for(state.pods_mounting.len() as u64, "mounts", "mount"),
            crate::units::verb_for(state.pods_mounting.len() as u64, "it", "them")
        ));
    }
    r
}

/// Whether a PV is NFS or an NFS-like network file system (EFS, Azure Files, CephFS,
/// Filestore), in words.
fn nfs_kind(pv: &PvState) -> Option<String> {
    if pv.source == "nfs" {
        return Some("an NFS volume".into());
    }
    let d = pv.csi_driver.as_deref()?;
    [
        "nfs",
        "efs.csi.aws.com",
        "file.csi.azure.com",
        "cephfs",
        "filestore",
    ]
    .iter()
    .any(|n| d.contains(n))
    .then(|| format!("a network file system (CSI driver {d})"))
}

/// The report when the cluster could not be read at all.
pub fn unreachable(k: &KubeTarget, err: &anyhow::Error) -> KubeReport {
    KubeReport {
        namespace: k.namespace.clone(),
        persistent_volume_name: k.persistent_volume.clone(),
        persistent_volume_claim_name: k.persistent_volume_claim.clone(),
        stateful_set_name: k.stateful_set.clone(),
        prometheus_name: k.prometheus.clone(),
        derived: k.derived.clone(),
        state: None,
        blockers: vec![format!("cannot read the Kubernetes objects: {err:#}")],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(quantity_bytes("100Gi"), Some(100 << 30));
        assert_eq!(quantity_bytes("500G"), Some(500_000_000_000));
        assert_eq!(quantity_bytes("1073741824"), Some(1 << 30));
        assert_eq!(quantity_bytes("1e3"), Some(1000));
        assert_eq!(quantity_bytes("1.5Ki"), Some(1536));
        assert_eq!(quantity_bytes("lots"), None);
        assert_eq!(quantity_bytes("-1Gi"), None);
    }

    /// Issue 13: the exa suffixes (`E` reads like an exponent), milli, fractions, and what
    /// is not a quantity.
    #[test]
    fn quantities_with_exa_suffixes_and_fractions() {
        assert_eq!(quantity_bytes("1E"), Some(1_000_000_000_000_000_000));
        assert_eq!(quantity_bytes("2Ei"), Some(2 << 60));
        assert_eq!(quantity_bytes("1.5E"), Some(1_500_000_000_000_000_000));
        assert_eq!(quantity_bytes("500m"), Some(1)); // rounded up, as Kubernetes' Value()
        assert_eq!(quantity_bytes("1.5Gi"), Some(1_610_612_736));
        assert_eq!(quantity_bytes("100M"), Some(100_000_000));
        assert_eq!(quantity_bytes("1e3"), Some(1000));
        assert_eq!(quantity_bytes("1E3"), Some(1000));
        for bad in ["1.5Xi", "1e3E", "Gi", "", "16Ei"] {
            assert_eq!(quantity_bytes(bad), None, "{bad:?}");
        }
    }

    fn healthy() -> KubeState {
        KubeState {
            context: "test".into(),
            namespace_exists: true,
            persistent_volume: Some(PvState {
                phase: "Bound".into(),
                reclaim_policy: "Retain".into(),
                capacity_bytes: Some(10 << 30),
                capacity: "10Gi".into(),
                claim: Some("monitoring/data-prom-0".into()),
                claim_uid: Some("u1".into()),
                ..Default::default()
            }),
            persistent_volume_claim: Some(PvcState {
                phase: "Bound".into(),
                volume_name: Some("pv-a".into()),
                uid: "u1".into(),
            }),
            stateful_set: Some(StsState {
                replicas: 1,
                when_scaled: "Retain".into(),
                when_deleted: "Retain".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn nfs_like_volumes_are_a_warning() {
        let k = crate::k8s::test_target();
        let with = |source: &str, driver: Option<&str>| {
            let mut st = healthy();
            let pv = st.persistent_volume.as_mut().unwrap();
            pv.source = source.into();
            pv.csi_driver = driver.map(String::from);
            let r = assess(&k, &st, 1 << 30, true);
            (
                r.blockers.len(),
                r.warnings
                    .iter()
                    .any(|w| w.contains("does not support NFS")),
            )
        };
        assert_eq!(with("nfs", None), (0, true));
        assert_eq!(with("csi", Some("efs.csi.aws.com")), (0, true));
        assert_eq!(with("csi", Some("nfs.csi.k8s.io")), (0, true));
        assert_eq!(with("csi", Some("ebs.csi.aws.com")), (0, false));
        assert_eq!(with("hostPath", None), (0, false));
    }

    #[test]
    fn each_dangerous_state_is_a_blocker_that_names_the_object() {
        let k = crate::k8s::test_target();
        assert!(assess(&k, &healthy(), 1 << 30, true).blockers.is_empty());
        type Change = Box<dyn Fn(&mut KubeState)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "reclaimPolicy Delete",
                Box::new(|s| {
                    s.persistent_volume.as_mut().unwrap().reclaim_policy = "Delete".into()
                }),
            ),
            (
                "reclaimPolicy Recycle: releasing its claim would scrub",
                Box::new(|s| {
                    s.persistent_volume.as_mut().unwrap().reclaim_policy = "Recycle".into()
                }),
            ),
            (
                "is Failed",
                Box::new(|s| s.persistent_volume.as_mut().unwrap().phase = "Failed".into()),
            ),
            (
                "less than the data",
                Box::new(|s| s.persistent_volume.as_mut().unwrap().capacity_bytes = Some(1 << 30)),
            ),
            (
                "is claimed by other/x",
                Box::new(|s| s.persistent_volume.as_mut().unwrap().claim = Some("other/x".into())),
            ),
            (
                "bound to persistentvolume/pv-b",
                Box::new(|s| {
                    s.persistent_volume_claim.as_mut().unwrap().volume_name = Some("pv-b".into())
                }),
            ),
            (
                "whenScaled: Delete",
                Box::new(|s| s.stateful_set.as_mut().unwrap().when_scaled = "Delete".into()),
            ),
            (
                "namespace monitoring does not exist",
                Box::new(|s| s.namespace_exists = false),
            ),
            (
                "persistentvolume/pv-a does not exist",
                Box::new(|s| s.persistent_volume = None),
            ),
            (
                "statefulset/monitoring/prom does not exist",
                Box::new(|s| s.stateful_set = None),
            ),
        ];
        for (want, change) in cases {
            let mut s = healthy();
            change(&mut s);
            let r = assess(&k, &s, 1 << 30, true);
            assert!(
                r.blockers.iter().any(|b| b.contains(want)),
                "{want}: {:?}",
                r.blockers
            );
        }
    }
}
