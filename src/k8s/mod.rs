//! The Kubernetes objects behind a target volume (kube-rs): a read-only preflight for `plan`,
//! and the changes `apply` makes: scale the StatefulSet to 0 before writing, recover a
//! `Released` PV so its claim can bind again, scale back after a successful verify.
//!
//! Rules:
//! - A PV with reclaimPolicy `Delete` is never modified (its provisioner may destroy the disk).
//! - Recovery is a JSON patch that *tests* the old `claimRef.uid` and *removes* it (and
//!   `claimRef.resourceVersion`): the PV becomes Available but stays reserved for the same
//!   namespace/name. `claimRef: null` (any claim could take it) is never sent.
//! - The replica count before the scale-down is kept in an annotation on the StatefulSet
//!   ([`REPLICAS_ANNOTATION`]), so a rerun after any interruption finds it again.
//! - Every wait watches the one object it waits for and has a timeout; every API error names
//!   the object.

pub mod exec;
pub mod forward;
pub mod handshake;
pub mod preflight;
pub mod receiver;
pub mod server;
pub mod spdy;

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{DynamicObject, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait;
use kube::{Api, Client, Config};
use serde::Serialize;
use serde_json::json;

use crate::plan::file::KubeTarget;

pub use preflight::{KubeReport, KubeState, assess, inspect, unreachable};

/// Where the replica count before promigrate's scale-down is kept.
pub const REPLICAS_ANNOTATION: &str = "promigrate.io/replicas-before-migration";

/// The field manager named in every write.
const MANAGER: &str = "promigrate";

/// A connection to one cluster, and how to name it in messages.
#[derive(Clone)]
pub struct Cluster {
    /// The client.
    pub client: Client,
    /// The kubeconfig context used (or "in-cluster"/"default").
    pub context: String,
    /// The API server URL.
    pub server: String,
}

impl Cluster {
    /// "context X (server Y)", for messages.
    pub fn describe(&self) -> String {
        format!("context `{}` (server {})", self.context, self.server)
    }
}

/// One change made to a cluster object, for the run record.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// `kind/namespace/name` or `kind/name`.
    pub object: String,
    /// The field changed.
    pub field: String,
    /// Its value before.
    pub before: String,
    /// Its value after.
    pub after: String,
}

/// Connects using the plan's kubeconfig and context (or the standard resolution). Fails
/// fast (10 s) on an unreachable server.
pub async fn connect(k: &KubeTarget) -> anyhow::Result<Cluster> {
    let options = KubeConfigOptions {
        context: k.context.clone(),
        ..Default::default()
    };
    let (mut config, context) = match &k.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| {
                anyhow!(
                    "cannot read kubeconfig {} (target.kubernetes.kubeconfig): {e}",
                    path.display()
                )
            })?;
            let context = k
                .context
                .clone()
                .or_else(|| kc.current_context.clone())
                .unwrap_or_default();
            let config = Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| {
                    anyhow!(
                        "kubeconfig {}: context `{context}`: {e}; list the contexts with `kubectl config get-contexts --kubeconfig {}`",
                        path.display(),
                        path.display()
                    )
                })?;
            (config, context)
        }
        None if k.context.is_some() => {
            let context = k.context.clone().unwrap_or_default();
            let config = Config::from_kubeconfig(&options).await.map_err(|e| {
                anyhow!(
                    "kubeconfig context `{context}`: {e}; list the contexts with `kubectl config get-contexts`"
                )
            })?;
            (config, context)
        }
        None => {
            let config = Config::infer().await.map_err(|e| {
                anyhow!(
                    "no Kubernetes configuration found ({e}): set target.kubernetes.kubeconfig, $KUBECONFIG or ~/.kube/config"
                )
            })?;
            let context = Kubeconfig::read()
                .ok()
                .and_then(|kc| kc.current_context)
                .unwrap_or_else(|| "in-cluster".into());
            (config, context)
        }
    };
    config.connect_timeout = Some(Duration::from_secs(10));
    config.read_timeout = Some(Duration::from_secs(30));
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config)
        .with_context(|| format!("cannot make a Kubernetes client for context `{context}`"))?;
    Ok(Cluster {
        client,
        context,
        server,
    })
}

/// Says which object an API error is about, and what the usual fix is.
pub fn api_error(cluster: &Cluster, object: &str, e: kube::Error) -> anyhow::Error {
    let hint = match &e {
        kube::Error::Api(s) if s.code == 403 => {
            "; the credentials of this context lack permission: see docs/kubernetes.md, RBAC, for what promigrate needs"
        }
        kube::Error::Api(s) if s.code == 404 => "; check the name and the namespace",
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            "; is the API server reachable from here (VPN, kubeconfig server address)?"
        }
        _ => "",
    };
    anyhow!("{object} via {}: {e}{hint}", cluster.describe())
}

/// The JSON patch that recovers a Released PV: test the old claim UID, remove it and the
/// claim's resourceVersion. Keeps `claimRef.namespace/name`, so only that claim can bind.
pub fn recovery_patch(old_uid: &str, has_resource_version: bool) -> json_patch::Patch {
    let mut ops = vec![
        // Refuse if the policy changed since it was read: under anything but Retain, a
        // released volume is deleted or scrubbed.
        json!({"op": "test", "path": "/spec/persistentVolumeReclaimPolicy", "value": "Retain"}),
        json!({"op": "test", "path": "/spec/claimRef/uid", "value": old_uid}),
        json!({"op": "remove", "path": "/spec/claimRef/uid"}),
    ];
    if has_resource_version {
        ops.push(json!({"op": "remove", "path": "/spec/claimRef/resourceVersion"}));
    }
    serde_json::from_value(serde_json::Value::Array(ops)).unwrap_or_default()
}

/// The merge patch that sets (or, with `None`, removes) the replicas annotation.
pub fn annotation_patch(value: Option<i32>) -> serde_json::Value {
    json!({"metadata": {"annotations": {REPLICAS_ANNOTATION: value.map(|v| v.to_string())}}})
}

/// The merge patch of the `scale` subresource.
pub fn scale_patch(replicas: i32) -> serde_json::Value {
    json!({"spec": {"replicas": replicas}})
}

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    }
}

/// Scales the StatefulSet to 0 (recording its replicas in an annotation first) and waits
/// until no pod in the namespace mounts the claim. Without a StatefulSet only the wait
/// runs: a pod still mounting the claim is an error.
pub async fn quiesce(
    cluster: &Cluster,
    k: &KubeTarget,
    changes: &mut Vec<Change>,
) -> anyhow::Result<()> {
    // The operator reconciles the StatefulSet's replicas: paused first, it leaves them be.
    if k.prometheus.is_some() {
        pause(cluster, k, changes).await?;
    }
    if let Some(name) = &k.stateful_set {
        let (api, object, sts) = stateful_set(cluster, k, name).await?;
        let replicas = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let recorded = recorded_replicas(&sts);
        if replicas > 0 {
            // Running now: what it runs with now is what it goes back to, whatever an older
            // annotation says (someone may have scaled it by hand since).
            if recorded != Some(replicas) {
                api.patch(
                    name,
                    &params(),
                    &Patch::Merge(annotation_patch(Some(replicas))),
                )
                .await
                .map_err(|e| api_error(cluster, &object, e))?;
                changes.push(Change {
                    object: object.clone(),
                    field: format!("metadata.annotations[{REPLICAS_ANNOTATION}]"),
                    before: recorded.map_or("(none)".into(), |r| r.to_string()),
                    after: replicas.to_string(),
                });
            }
            api.patch_scale(name, &params(), &Patch::Merge(scale_patch(0)))
                .await
                .map_err(|e| api_error(cluster, &object, e))?;
            changes.push(Change {
                object: object.clone(),
                field: "spec.replicas".into(),
                before: replicas.to_string(),
                after: "0".into(),
            });
            tracing::info!("scaled {object} from {replicas} to 0");
        }
    }
    let deadline = Instant::now() + k.wait_timeout;
    let pods_api: Api<Pod> = Api::namespaced(cluster.client.clone(), &k.namespace);
    loop {
        let pods = pods_mounting_with_uid(cluster, k).await?;
        if pods.is_empty() {
            return Ok(());
        }
        // Each one's deletion, watched; then the list again (a controller may have made
        // another meanwhile).
        tracing::info!(
            "waiting for {} {} to stop ({} claim {})",
            crate::units::noun_for(pods.len() as u64, "pod"),
            pods.iter()
                .map(|(p, _)| p.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            crate::units::verb_for(pods.len() as u64, "it mounts", "they mount"),
            k.persistent_volume_claim
        );
        let mut timed_out = false;
        for (pod, uid) in &pods {
            let left = deadline.saturating_duration_since(Instant::now());
            let object = format!("pod/{}/{pod}", k.namespace);
            // Gone, or another pod of the same name (kube-runtime's conditions::is_deleted).
            let uid = uid.clone();
            let deleted = move |p: Option<&Pod>| {
                p.is_none_or(|p| p.metadata.uid.as_deref() != Some(uid.as_str()))
            };
            if let Waited::TimedOut =
                wait_until(cluster, pods_api.clone(), pod, left, &object, deleted).await?
            {
                timed_out = true;
                break;
            }
        }
        if !timed_out {
            // A pod seen deleted may still be listed for a moment (the watch and the list
            // need not be served from the same cache): no busy loop.
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        // Named from a list taken now: those still there, not those seen go.
        let pods = pods_mounting(cluster, k).await?;
        if pods.is_empty() {
            return Ok(());
        }
        anyhow::bail!(
            "{} {} in namespace {} still {} claim {} after {}s; nothing was written. {}",
            crate::units::noun_for(pods.len() as u64, "pod"),
            pods.join(", "),
            k.namespace,
            crate::units::verb_for(pods.len() as u64, "mounts", "mount"),
            k.persistent_volume_claim,
            k.wait_timeout.as_secs(),
            match &k.stateful_set {
                Some(s) => format!(
                    "StatefulSet {s} is left at 0 replicas: find out why its pods do not stop, then rerun apply"
                ),
                None => format!(
                    "stop {} (or name {} StatefulSet in target.kubernetes.statefulSet), then rerun apply",
                    crate::units::verb_for(pods.len() as u64, "it", "them"),
                    crate::units::verb_for(pods.len() as u64, "its", "their")
                ),
            }
        );
    }
}

/// The operator's resource of a target: its API, its name for messages, and its state.
async fn prometheus_object(
    cluster: &Cluster,
    k: &KubeTarget,
) -> anyhow::Result<Option<(Api<DynamicObject>, String, String, DynamicObject)>> {
    let Some(name) = &k.prometheus else {
        return Ok(None);
    };
    let api: Api<DynamicObject> = Api::namespaced_with(
        cluster.client.clone(),
        &k.namespace,
        &server::prometheus_resource(),
    );
    let object = format!("prometheus/{}/{name}", k.namespace);
    let p = api
        .get(name)
        .await
        .map_err(|e| api_error(cluster, &object, e))?;
    Ok(Some((api, object, name.clone(), p)))
}

/// Pauses the operator's reconciliation of the target's `Prometheus` resource (the
/// operator's documented way to keep it from changing the StatefulSet), recording the
/// value before in an annotation, in the same patch, so a rerun after any interruption
/// finds it.
async fn pause(cluster: &Cluster, k: &KubeTarget, changes: &mut Vec<Change>) -> anyhow::Result<()> {
    let Some((api, object, name, p)) = prometheus_object(cluster, k).await? else {
        return Ok(());
    };
    let (now, recorded) = server::paused_state(&p);
    // Paused by an earlier, unfinished apply: no change, but the wait below all the same.
    let done_before = now == Some(true) && recorded.is_some();
    let before = recorded.unwrap_or(now);
    let mut patch = json!({"spec": {"paused": true}});
    if done_before {
        patch = json!({});
    } else if recorded.is_none() {
        patch["metadata"] =
            json!({"annotations": {server::PAUSED_ANNOTATION: server::paused_words(before)}});
        changes.push(Change {
            object: object.clone(),
            field: format!("metadata.annotations[{}]", server::PAUSED_ANNOTATION),
            before: "(none)".into(),
            after: server::paused_words(before).into(),
        });
    }
    if !done_before {
        api.patch(&name, &params(), &Patch::Merge(patch))
            .await
            .map_err(|e| api_error(cluster, &object, e))?;
    }
    if now != Some(true) {
        changes.push(Change {
            object: object.clone(),
            field: "spec.paused".into(),
            before: server::paused_words(now).into(),
            after: "true".into(),
        });
        tracing::info!("paused {object}");
    }
    // A reconcile that began before the pause could still undo the scale-down: the
    // operator says in status.paused when it has seen the pause.
    let seen = |p: Option<&DynamicObject>| {
        p.is_some_and(|p| p.data["status"]["paused"].as_bool() == Some(true))
    };
    wait_until(cluster, api, &name, k.wait_timeout, &object, seen)
        .await?
        .or_fail(
            k.wait_timeout,
            &object,
            "to report status.paused: true (is the operator running?); nothing was scaled yet, and the resource is left paused",
        )
}

/// Sets `spec.paused` back to the value recorded before the migration (removing the field
/// if it was not set) and removes the record. Does nothing without a record.
async fn unpause(
    cluster: &Cluster,
    k: &KubeTarget,
    changes: &mut Vec<Change>,
) -> anyhow::Result<()> {
    let Some((api, object, name, p)) = prometheus_object(cluster, k).await? else {
        return Ok(());
    };
    let (now, recorded) = server::paused_state(&p);
    let Some(want) = recorded else {
        return Ok(());
    };
    // A merge patch's null removes the field.
    let patch = json!({"spec": {"paused": want},
        "metadata": {"annotations": {server::PAUSED_ANNOTATION: null}}});
    api.patch(&name, &params(), &Patch::Merge(patch))
        .await
        .map_err(|e| api_error(cluster, &object, e))?;
    if now != want {
        changes.push(Change {
            object: object.clone(),
            field: "spec.paused".into(),
            before: server::paused_words(now).into(),
            after: server::paused_words(want).into(),
        });
        tracing::info!(
            "set {object} spec.paused back to {}",
            server::paused_words(want)
        );
    }
    changes.push(Change {
        object,
        field: format!("metadata.annotations[{}]", server::PAUSED_ANNOTATION),
        before: server::paused_words(want).into(),
        after: "(removed)".into(),
    });
    Ok(())
}

/// The claim's API (in its namespace) and its name for messages
/// (`persistentvolumeclaim/NS/NAME`).
pub(crate) fn claim(cluster: &Cluster, k: &KubeTarget) -> (Api<PersistentVolumeClaim>, String) {
    let api = Api::namespaced(cluster.client.clone(), &k.namespace);
    let object = format!(
        "persistentvolumeclaim/{}/{}",
        k.namespace, k.persistent_volume_claim
    );
    (api, object)
}

/// The StatefulSet's API, its name for messages, and its current state.
async fn stateful_set(
    cluster: &Cluster,
    k: &KubeTarget,
    name: &str,
) -> anyhow::Result<(Api<StatefulSet>, String, StatefulSet)> {
    let api: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), &k.namespace);
    let object = format!("statefulset/{}/{name}", k.namespace);
    let sts = api
        .get(name)
        .await
        .map_err(|e| api_error(cluster, &object, e))?;
    Ok((api, object, sts))
}

/// A target for unit tests: PV `pv-a`, claim `monitoring/data-prom-0`, StatefulSet `prom`.
#[cfg(test)]
pub(crate) fn test_target() -> KubeTarget {
    KubeTarget {
        kubeconfig: None,
        context: None,
        namespace: "monitoring".into(),
        persistent_volume: "pv-a".into(),
        persistent_volume_claim: "data-prom-0".into(),
        stateful_set: Some("prom".into()),
        prometheus: None,
        shard: 0,
        replica: 0,
        accept_git_ops: false,
        derived: Vec::new(),
        wait_timeout: Duration::from_secs(5),
        headroom_percent: 10,
        receiver_pod: None,
    }
}

/// The replicas recorded before promigrate scaled the StatefulSet down, if any.
pub fn recorded_replicas(sts: &StatefulSet) -> Option<i32> {
    sts.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REPLICAS_ANNOTATION))
        .and_then(|v| v.parse().ok())
}

/// Names of the pods in the namespace whose volumes use the claim, but promigrate's
/// receiver pods.
pub async fn pods_mounting(cluster: &Cluster, k: &KubeTarget) -> anyhow::Result<Vec<String>> {
    Ok(pods_mounting_with_uid(cluster, k)
        .await?
        .into_iter()
        .map(|(name, _)| name)
        .collect())
}

/// [`pods_mounting`], each pod with its uid (a pod of the same name made later is another).
async fn pods_mounting_with_uid(
    cluster: &Cluster,
    k: &KubeTarget,
) -> anyhow::Result<Vec<(String, String)>> {
    let api: Api<Pod> = Api::namespaced(cluster.client.clone(), &k.namespace);
    let pods = api
        .list(&ListParams::default())
        .await
        .map_err(|e| api_error(cluster, &format!("pods in namespace {}", k.namespace), e))?;
    Ok(pods
        .items
        .iter()
        .filter(|p| {
            p.spec.as_ref().is_some_and(|s| {
                s.volumes.iter().flatten().any(|v| {
                    v.persistent_volume_claim
                        .as_ref()
                        .is_some_and(|c| c.claim_name == k.persistent_volume_claim)
                })
            })
        })
        // promigrate's own receiver pod writes through the directory lock, as apply does.
        .filter(|p| !receiver::is_receiver_pod(p))
        .filter_map(|p| {
            Some((
                p.metadata.name.clone()?,
                p.metadata.uid.clone().unwrap_or_default(),
            ))
        })
        .collect())
}

/// Recovers a `Released` PV (see the module docs). Does nothing to a PV in any other phase;
/// refuses one with reclaimPolicy `Delete`. Waits until the PV controller reports it
/// Available or Bound.
pub async fn recover_pv(
    cluster: &Cluster,
    k: &KubeTarget,
    changes: &mut Vec<Change>,
) -> anyhow::Result<()> {
    let api: Api<PersistentVolume> = Api::all(cluster.client.clone());
    let name = &k.persistent_volume;
    let object = format!("persistentvolume/{name}");
    let pv = api
        .get(name)
        .await
        .map_err(|e| api_error(cluster, &object, e))?;
    let phase = pv.status.as_ref().and_then(|s| s.phase.clone());
    if phase.as_deref() != Some("Released") {
        return Ok(());
    }
    let spec = pv.spec.clone().unwrap_or_default();
    let policy = spec
        .persistent_volume_reclaim_policy
        .clone()
        .unwrap_or_else(|| "Retain".into());
    if policy != "Retain" {
        anyhow::bail!(
            "{object} is Released with reclaimPolicy {policy}: promigrate modifies only Retain PVs (under Delete the provisioner may delete the disk, under Recycle the volume is scrubbed)"
        );
    }
    let Some(claim) = spec.claim_ref else {
        return Ok(()); // Released without a claim: the controller makes it Available itself
    };
    let Some(old_uid) = claim.uid.clone() else {
        return Ok(()); // already recovered; the controller will report Available
    };
    let patch = recovery_patch(&old_uid, claim.resource_version.is_some());
    api.patch(name, &params(), &Patch::Json::<()>(patch))
        .await
        .map_err(|e| api_error(cluster, &object, e))
        .with_context(|| {
            format!(
                "recovering {object}: the patch tests that claimRef.uid is still {old_uid}; if it changed, someone else touched the PV: rerun plan"
            )
        })?;
    changes.push(Change {
        object: object.clone(),
        field: "spec.claimRef.uid".into(),
        before: old_uid,
        after: format!(
            "(removed; still reserved for {}/{})",
            claim.namespace.unwrap_or_default(),
            claim.name.unwrap_or_default()
        ),
    });
    tracing::info!("recovered Released {object}");
    let available = |pv: Option<&PersistentVolume>| {
        let phase = pv.and_then(|pv| pv.status.as_ref()?.phase.as_deref());
        matches!(phase, Some("Available" | "Bound"))
    };
    wait_until(cluster, api, name, k.wait_timeout, &object, available)
        .await?
        .or_fail(k.wait_timeout, &object, "to become Available")
}

/// Scales the StatefulSet back to the replicas recorded before the migration (only if it is
/// still at 0: one running already keeps its replicas, and a stale annotation is removed),
/// removes the annotation, and waits until the claim is Bound to this PV (when the claim
/// exists or the StatefulSet runs pods that will create it).
pub async fn restore(
    cluster: &Cluster,
    k: &KubeTarget,
    changes: &mut Vec<Change>,
) -> anyhow::Result<()> {
    let mut runs = false;
    if let Some(name) = &k.stateful_set {
        let (api, object, sts) = stateful_set(cluster, k, name).await?;
        let now = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        runs = now > 0;
        if let Some(want) = recorded_replicas(&sts) {
            if now == 0 && want > 0 {
                runs = true;
                api.patch_scale(name, &params(), &Patch::Merge(scale_patch(want)))
                    .await
                    .map_err(|e| api_error(cluster, &object, e))?;
                changes.push(Change {
                    object: object.clone(),
                    field: "spec.replicas".into(),
                    before: now.to_string(),
                    after: want.to_string(),
                });
                tracing::info!("scaled {object} back to {want}");
            }
            api.patch(name, &params(), &Patch::Merge(annotation_patch(None)))
                .await
                .map_err(|e| api_error(cluster, &object, e))?;
            changes.push(Change {
                object,
                field: format!("metadata.annotations[{REPLICAS_ANNOTATION}]"),
                before: want.to_string(),
                after: "(removed)".into(),
            });
        }
    }
    // The operator takes over again once the StatefulSet is as it was.
    unpause(cluster, k, changes).await?;
    // With a StatefulSet, or a claim that exists already: it must bind this PV.
    let (pvcs, object) = claim(cluster, k);
    let exists = pvcs
        .get_opt(&k.persistent_volume_claim)
        .await
        .map_err(|e| api_error(cluster, &object, e))?
        .is_some();
    if !exists && !runs {
        return Ok(()); // nothing will create the claim now; it binds the PV when it comes
    }
    let pv = k.persistent_volume.clone();
    let bound = move |c: Option<&PersistentVolumeClaim>| {
        c.is_some_and(|c| {
            c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
                && c.spec.as_ref().and_then(|s| s.volume_name.as_deref()) == Some(pv.as_str())
        })
    };
    let what = format!("to be Bound to persistentvolume/{}", k.persistent_volume);
    wait_until(
        cluster,
        pvcs,
        &k.persistent_volume_claim,
        k.wait_timeout,
        &object,
        bound,
    )
    .await?
    .or_fail(k.wait_timeout, &object, &what)
}

/// How a wait ended.
#[must_use]
enum Waited {
    Done,
    TimedOut,
}

impl Waited {
    /// A timeout as the error "timed out after Ns waiting for OBJECT WHAT".
    fn or_fail(self, timeout: Duration, object: &str, what: &str) -> anyhow::Result<()> {
        match self {
            Waited::Done => Ok(()),
            Waited::TimedOut => Err(anyhow!(
                "timed out after {}s waiting for {object} {what}",
                timeout.as_secs()
            )),
        }
    }
}

/// Watches the object `name` (kube-runtime's `await_condition`: a list, then a watch, by
/// its name) until `done` holds for it (`None` while it does not exist), at most `timeout`.
/// A watch that breaks (a dropped connection, an expired resourceVersion) is started again
/// after a second, until the timeout; a refusal (403, 404) is an error naming the object.
async fn wait_until<K>(
    cluster: &Cluster,
    api: Api<K>,
    name: &str,
    timeout: Duration,
    object: &str,
    done: impl wait::Condition<K> + Clone,
) -> anyhow::Result<Waited>
where
    K: Clone + std::fmt::Debug + Send + serde::de::DeserializeOwned + kube::Resource + 'static,
{
    use kube::runtime::watcher::Error as W;
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let watched = wait::await_condition(api.clone(), name, done.clone());
        let e = match tokio::time::timeout(left, watched).await {
            Ok(Ok(_)) => return Ok(Waited::Done),
            Err(_) => return Ok(Waited::TimedOut),
            Ok(Err(wait::Error::ProbeFailed(e))) => e,
        };
        let refused =
            |e: &kube::Error| matches!(e, kube::Error::Api(s) if matches!(s.code, 401 | 403 | 404));
        match e {
            W::InitialListFailed(e) | W::WatchStartFailed(e) | W::WatchFailed(e) if refused(&e) => {
                return Err(api_error(cluster, object, e));
            }
            e => tracing::debug!("watching {object}: {e}; watching again"),
        }
        if Instant::now() + Duration::from_secs(1) >= deadline {
            return Ok(Waited::TimedOut);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    //! Request shapes, against kube-rs's mock service (tower-test). The real control plane
    //! tests are in tests/kube.rs.
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;
    use tower_test::mock::{Handle, SendResponse};

    type Mock = Handle<Request<Body>, Response<Body>>;

    fn mock() -> (Cluster, Mock) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let cluster = Cluster {
            client: Client::new(service, "default"),
            context: "mock".into(),
            server: "https://mock".into(),
        };
        (cluster, handle)
    }

    async fn next(
        h: &mut Mock,
    ) -> (
        http::Method,
        String,
        Option<String>,
        serde_json::Value,
        SendResponse<Response<Body>>,
    ) {
        let (req, send) = h.next_request().await.expect("a request");
        let method = req.method().clone();
        let uri = req.uri().to_string();
        let ctype = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (method, uri, ctype, body, send)
    }

    fn reply(send: SendResponse<Response<Body>>, v: serde_json::Value) {
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&v).unwrap()))
                .unwrap(),
        );
    }

    fn pv(phase: &str, policy: &str) -> serde_json::Value {
        json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": "pv-a", "resourceVersion": "7"},
            "spec": {
                "persistentVolumeReclaimPolicy": policy,
                "capacity": {"storage": "10Gi"},
                "accessModes": ["ReadWriteOnce"],
                "hostPath": {"path": "/data"},
                "claimRef": {"kind": "PersistentVolumeClaim", "namespace": "monitoring",
                    "name": "data-prom-0", "uid": "old-uid", "resourceVersion": "42"}
            },
            "status": {"phase": phase}
        })
    }

    #[tokio::test]
    async fn recovery_tests_the_old_uid_and_keeps_the_reservation() {
        let (cluster, mut h) = mock();
        let server = tokio::spawn(async move {
            let (m, uri, _, _, send) = next(&mut h).await;
            assert_eq!(
                (m, uri.as_str()),
                (http::Method::GET, "/api/v1/persistentvolumes/pv-a")
            );
            reply(send, pv("Released", "Retain"));
            let (m, uri, ctype, body, send) = next(&mut h).await;
            assert_eq!(m, http::Method::PATCH);
            assert!(uri.starts_with("/api/v1/persistentvolumes/pv-a?"), "{uri}");
            assert!(uri.contains("fieldManager=promigrate"), "{uri}");
            assert_eq!(ctype.as_deref(), Some("application/json-patch+json"));
            assert_eq!(
                body,
                json!([
                    {"op": "test", "path": "/spec/persistentVolumeReclaimPolicy", "value": "Retain"},
                    {"op": "test", "path": "/spec/claimRef/uid", "value": "old-uid"},
                    {"op": "remove", "path": "/spec/claimRef/uid"},
                    {"op": "remove", "path": "/spec/claimRef/resourceVersion"}
                ])
            );
            reply(send, pv("Released", "Retain"));
            // The wait watches the PV by its name (await_condition): a list first.
            let (m, uri, _, _, send) = next(&mut h).await;
            assert_eq!(m, http::Method::GET);
            assert!(uri.starts_with("/api/v1/persistentvolumes?"), "{uri}");
            assert!(uri.contains("fieldSelector=metadata.name%3Dpv-a"), "{uri}");
            reply(
                send,
                json!({
                    "apiVersion": "v1", "kind": "PersistentVolumeList",
                    "metadata": {"resourceVersion": "8"},
                    "items": [pv("Available", "Retain")]
                }),
            );
        });
        let mut changes = Vec::new();
        recover_pv(&cluster, &test_target(), &mut changes)
            .await
            .unwrap();
        server.await.unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].field, "spec.claimRef.uid");
        assert_eq!(changes[0].before, "old-uid");
    }

    #[tokio::test]
    async fn a_delete_policy_pv_is_never_patched() {
        let (cluster, mut h) = mock();
        let server = tokio::spawn(async move {
            let (m, _, _, _, send) = next(&mut h).await;
            assert_eq!(m, http::Method::GET);
            reply(send, pv("Released", "Delete"));
            // No second request may come.
            let more = tokio::time::timeout(Duration::from_millis(300), h.next_request()).await;
            assert!(
                more.is_err() || more.unwrap().is_none(),
                "a request followed the refusal"
            );
        });
        let err = recover_pv(&cluster, &test_target(), &mut Vec::new())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("reclaimPolicy Delete") && err.contains("persistentvolume/pv-a"),
            "{err}"
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn scale_down_records_replicas_first_then_scales_and_waits() {
        let (cluster, mut h) = mock();
        let server = tokio::spawn(async move {
            let (m, uri, _, _, send) = next(&mut h).await;
            assert_eq!(
                (m, uri.as_str()),
                (
                    http::Method::GET,
                    "/apis/apps/v1/namespaces/monitoring/statefulsets/prom"
                )
            );
            let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                "metadata": {"name": "prom", "namespace": "monitoring"},
                "spec": {"replicas": 2, "serviceName": "prom", "selector": {"matchLabels": {"app": "p"}},
                    "template": {"metadata": {"labels": {"app": "p"}}, "spec": {"containers": []}}}});
            reply(send, sts.clone());
            let (m, uri, ctype, body, send) = next(&mut h).await;
            assert_eq!(m, http::Method::PATCH);
            assert!(
                uri.starts_with("/apis/apps/v1/namespaces/monitoring/statefulsets/prom?"),
                "{uri}"
            );
            assert_eq!(ctype.as_deref(), Some("application/merge-patch+json"));
            assert_eq!(
                body,
                json!({"metadata": {"annotations": {REPLICAS_ANNOTATION: "2"}}})
            );
            reply(send, sts.clone());
            let (m, uri, _, body, send) = next(&mut h).await;
            assert_eq!(m, http::Method::PATCH);
            assert!(
                uri.starts_with("/apis/apps/v1/namespaces/monitoring/statefulsets/prom/scale?"),
                "{uri}"
            );
            assert_eq!(body, json!({"spec": {"replicas": 0}}));
            reply(
                send,
                json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
                "metadata": {"name": "prom"}, "spec": {"replicas": 0}}),
            );
            let (m, uri, _, _, send) = next(&mut h).await;
            assert_eq!(
                (m, uri.as_str()),
                (http::Method::GET, "/api/v1/namespaces/monitoring/pods?")
            );
            reply(
                send,
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}),
            );
        });
        let mut changes = Vec::new();
        quiesce(&cluster, &test_target(), &mut changes)
            .await
            .unwrap();
        server.await.unwrap();
        let fields: Vec<&str> = changes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                format!("metadata.annotations[{REPLICAS_ANNOTATION}]").as_str(),
                "spec.replicas"
            ]
        );
    }
}
