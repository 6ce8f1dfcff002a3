//! The receiver pod (issue 17): a target with `kubernetes` and no `path` is written by
//! promigrate itself, run as `promigrate receive` in a pod that mounts the claim. This
//! checks the access first (nothing is created without it), removes a receiver pod that a
//! killed run left, creates the pod under the `restricted` Pod Security profile, uploads a
//! static promigrate into it through exec stdin, starts `promigrate receive --listen` with a
//! second exec and connects to it through a port-forward (or that exec's stdin/stdout:
//! [`crate::remote::listen`]). The pod is deleted when the returned [`PodGuard`] is dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{PersistentVolume, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait;
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Cluster;
use super::forward::{Forward, Protocol};
use super::handshake;
use crate::perms::Owner;
use crate::plan::file::{KubeTarget, POD_MOUNT};

/// The binary to upload into the pod (a static build); else this one, if it is static.
pub const BINARY_ENV: &str = "PROMIGRATE_RECEIVER_BINARY";
/// Where the pod keeps the uploaded binary (an emptyDir).
const BIN_DIR: &str = "/promigrate/bin";
/// The labels that find a receiver pod again (also one that a killed run left).
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "promigrate");
const ROLE: (&str, &str) = ("promigrate.io/role", "receiver");
const CLAIM: &str = "promigrate.io/claim";
const MIGRATION: &str = "promigrate.io/migration";
/// A counter the run that owns the pod moves every [`BEAT`]: a pod whose counter stays still
/// for [`STILL`] belongs to a run that is gone (killed). Watched for a change, not compared
/// with a clock: the two runs may be on hosts whose clocks differ.
const HEARTBEAT: &str = "promigrate.io/heartbeat";
/// Which process owns the pod (`pid N on HOST`), for messages.
const OWNER: &str = "promigrate.io/run";
const BEAT: Duration = Duration::from_secs(2);
/// Seven beats: a slow API server or a loaded host of the owner does not make its pod look
/// left behind.
const STILL: Duration = Duration::from_secs(15);

/// How to get a binary that runs in any image.
const STATIC_HINT: &str = "build a static promigrate with `make static` (it prints where it put it: target/x86_64-unknown-linux-gnu/release/promigrate-static) and run that one, or name it in PROMIGRATE_RECEIVER_BINARY";

/// The binary to upload: [`BINARY_ENV`], else this process's own when it is static.
pub fn binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(BINARY_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return match is_static(&p) {
            Ok(true) => Ok(p),
            Ok(false) => bail!(
                "{BINARY_ENV}={} is linked dynamically: the receiver pod's image may have no C library; {STATIC_HINT}",
                p.display()
            ),
            Err(e) => bail!("{BINARY_ENV}={}: {e:#}", p.display()),
        };
    }
    let me = PathBuf::from("/proc/self/exe");
    match is_static(&me) {
        Ok(true) => Ok(me),
        Ok(false) => bail!(
            "this promigrate is linked dynamically, and the receiver pod's image may have no C library to run it: {STATIC_HINT}"
        ),
        Err(e) => bail!("cannot read this promigrate's own binary: {e:#}; {STATIC_HINT}"),
    }
}

/// Whether the ELF file at `path` is static: no program interpreter (PT_INTERP).
pub fn is_static(path: &Path) -> anyhow::Result<bool> {
    use object::read::elf::{FileHeader, ProgramHeader};
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let header = object::elf::FileHeader64::<object::Endianness>::parse(&*data)
        .map_err(|e| anyhow!("{} is not a 64-bit ELF binary: {e}", path.display()))?;
    let endian = header
        .endian()
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let phs = header
        .program_headers(endian, &*data)
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(!phs
        .iter()
        .any(|ph| ph.p_type(endian) == object::elf::PT_INTERP))
}

/// Receiver pods about to be created or created, and not deleted yet, for a Ctrl-C that ends
/// the process before their [`PodGuard`]s are dropped (see [`delete_created`]); and whether
/// that has begun (no more pods then). Process-wide, as signals are.
static CREATED: std::sync::Mutex<Created> = std::sync::Mutex::new(Created {
    pods: Vec::new(),
    closing: false,
});

struct Created {
    /// Each pod, and whether its create call has returned (until then a delete can find
    /// nothing, and the pod be made right after).
    pods: Vec<(Api<Pod>, String, Arc<AtomicBool>)>,
    /// [`delete_created`] has begun.
    closing: bool,
}

/// Notes pod `name` before it is created (a Ctrl-C right after its creation still finds
/// it); false once [`delete_created`] has begun: create no pod then.
fn track(pods: &Api<Pod>, name: &str) -> Option<Arc<AtomicBool>> {
    match CREATED.lock() {
        Ok(mut c) if !c.closing => {
            let settled = Arc::new(AtomicBool::new(false));
            c.pods
                .push((pods.clone(), name.to_string(), settled.clone()));
            Some(settled)
        }
        _ => None,
    }
}

fn untrack(name: &str) {
    if let Ok(mut c) = CREATED.lock() {
        c.pods.retain(|(_, n, _)| n != name);
    }
}

/// Deletes every receiver pod this process created and has not deleted yet, and waits until
/// they are gone: for a command that ends at once on Ctrl-C.
pub async fn delete_created() {
    let all = CREATED
        .lock()
        .map(|mut c| {
            c.closing = true;
            std::mem::take(&mut c.pods)
        })
        .unwrap_or_default();
    for (pods, name, settled) in all {
        let ns = pods.namespace().unwrap_or_default().to_string();
        // A create call still on its way: deleted now, the pod could be made just after.
        // Its answer is waited for (at most 10 s; the API server answers in milliseconds).
        let asked = std::time::Instant::now();
        while !settled.load(Ordering::Acquire) && asked.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match delete_and_wait(&pods, &name).await {
            Ok(()) => tracing::info!("receiver pod {ns}/{name} deleted"),
            Err(e) => tracing::warn!(
                "cannot delete the receiver pod {ns}/{name}: {e:#}; delete it by hand (kubectl delete pod -n {ns} {name})"
            ),
        }
    }
}

/// The receiver pod of a run: deleted (and waited for) when dropped, on the runtime of
/// `handle`.
pub struct PodGuard {
    handle: tokio::runtime::Handle,
    pods: Api<Pod>,
    /// `namespace/name`.
    pub shown: String,
    name: String,
    /// The exec of `promigrate receive` and its port-forward, if any: the stream ends when
    /// this is dropped.
    process: Option<super::exec::Session>,
    /// Moves the pod's [`HEARTBEAT`] until the pod is deleted.
    beat: tokio::task::JoinHandle<()>,
}

impl Drop for PodGuard {
    fn drop(&mut self) {
        self.beat.abort();
        // The receiver's stream ends first (it stops at once), then the pod goes.
        drop(self.process.take());
        let (pods, name, shown, handle) = (
            self.pods.clone(),
            self.name.clone(),
            self.shown.clone(),
            self.handle.clone(),
        );
        // On a thread of its own: this may be dropped inside the runtime's context.
        let done = std::thread::spawn(move || {
            handle.block_on(async {
                match delete_and_wait(&pods, &name).await {
                    Ok(()) => untrack(&name),
                    Err(e) => tracing::warn!(
                        "cannot delete the receiver pod {shown}: {e:#}; delete it by hand (kubectl delete pod -n {})",
                        shown.replace('/', " ")
                    ),
                }
            })
        });
        let _ = done.join();
    }
}

async fn delete_and_wait(pods: &Api<Pod>, name: &str) -> anyhow::Result<()> {
    // A graceful delete (the pod's own grace period, 1 s): the object goes only once the
    // kubelet has stopped the container and unmounted the volume, so "gone" means gone. A
    // grace period of 0 would remove the object at once, container still running.
    match pods.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    let gone = |limit| {
        let w = wait::await_condition(pods.clone(), name, |p: Option<&Pod>| p.is_none());
        tokio::time::timeout(Duration::from_secs(limit), w)
    };
    if let Ok(r) = gone(30).await {
        return r
            .map(|_| ())
            .map_err(|e| anyhow!("waiting for it to go: {e}"));
    }
    // No kubelet confirmed it in 30 s. A pod none of whose containers ever started (no node
    // for it: one that does not exist or does not answer) has run nothing that could write:
    // it goes now (grace 0). One that ran is waited for.
    let started = match pods.get_opt(name).await {
        Ok(Some(p)) => p
            .status
            .and_then(|s| s.container_statuses)
            .unwrap_or_default()
            .iter()
            .any(|c| {
                let ran = |s: &k8s_openapi::api::core::v1::ContainerState| {
                    s.running.is_some() || s.terminated.is_some()
                };
                c.state.as_ref().is_some_and(ran) || c.last_state.as_ref().is_some_and(ran)
            }),
        Ok(None) => return Ok(()),
        Err(_) => true,
    };
    if !started {
        tracing::warn!(
            "receiver pod {name}: no kubelet confirmed its deletion in 30 s and it never started a container; removing it at once"
        );
        match pods
            .delete(name, &DeleteParams::default().grace_period(0))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    match gone(30).await {
        Ok(r) => r
            .map(|_| ())
            .map_err(|e| anyhow!("waiting for it to go: {e}")),
        Err(_) => bail!("still there 60 s after its deletion"),
    }
}

/// What a run may do when a pod holds the claim so that a receiver pod cannot mount it
/// beside that pod (a `ReadWriteOncePod` claim the pod mounts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// A command that only reads (plan, verify, a dry run) changes nothing: it stops.
    Refuse,
    /// apply without `--yes`: it would have to scale down before it can show its plan.
    NeedsYes,
    /// `apply --yes`: the StatefulSet is scaled to 0 first, as apply does before it writes.
    Quiesce,
}

/// The pods (not receivers) that hold claim `k` when it is `ReadWriteOncePod`: scheduled
/// and not finished, they keep any other pod from mounting it. Empty for any other claim (a
/// `ReadWriteOnce` claim is mounted beside them on their node, where the receiver pod goes).
pub async fn holders(cluster: &Cluster, k: &KubeTarget) -> anyhow::Result<Vec<Pod>> {
    let (claims, object) = super::claim(cluster, k);
    let claim = claims
        .get(&k.persistent_volume_claim)
        .await
        .map_err(|e| super::api_error(cluster, &object, e))?;
    let exclusive = claim
        .spec
        .and_then(|s| s.access_modes)
        .unwrap_or_default()
        .iter()
        .any(|m| m == "ReadWriteOncePod");
    if !exclusive {
        return Ok(Vec::new());
    }
    Ok(claim_pods(cluster, k)
        .await?
        .into_iter()
        .filter(|p| {
            let scheduled = p.spec.as_ref().is_some_and(|s| s.node_name.is_some());
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            scheduled && !matches!(phase, Some("Succeeded" | "Failed"))
        })
        .collect())
}

/// The pods in `k`'s namespace (but receivers) whose volumes use its claim.
async fn claim_pods(cluster: &Cluster, k: &KubeTarget) -> anyhow::Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &k.namespace);
    let list = pods
        .list(&ListParams::default())
        .await
        .map_err(|e| super::api_error(cluster, &format!("pods in {}", k.namespace), e))?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| !is_receiver_pod(p))
        .filter(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.volumes.as_ref())
                .is_some_and(|vs| {
                    vs.iter().any(|v| {
                        v.persistent_volume_claim
                            .as_ref()
                            .is_some_and(|c| c.claim_name == k.persistent_volume_claim)
                    })
                })
        })
        .collect())
}

/// Targets whose StatefulSets this process began to scale down so that a receiver could
/// mount a claim a pod held, and has not scaled back or handed to apply's own flow yet:
/// for a Ctrl-C that ends the process before that (see [`give_back_early`]).
static EARLY: std::sync::Mutex<Vec<KubeTarget>> = std::sync::Mutex::new(Vec::new());

/// Notes that `k`'s StatefulSet is about to be scaled down early (before it is, so a scale-
/// down that fails part-way is given back too).
pub fn note_early(k: &KubeTarget) {
    if let Ok(mut e) = EARLY.lock() {
        e.push(k.clone());
    }
}

/// Forgets what [`note_early`] noted: scaled back, or now apply's own to scale back.
pub fn forget_early() {
    if let Ok(mut e) = EARLY.lock() {
        e.clear();
    }
}

/// Scales back what was scaled down early ([`note_early`]), for a process that ends on a
/// signal before it wrote anything; logs what it did.
pub async fn give_back_early() {
    let all = EARLY
        .lock()
        .map(|mut e| std::mem::take(&mut *e))
        .unwrap_or_default();
    for note in scale_back(all, &mut Vec::new()).await {
        tracing::warn!("{note}");
    }
}

/// Scales back the StatefulSets of `quiesced`, scaled to 0 for their receivers, recording
/// what it changed in `changes`; says what it did, one line a target.
pub async fn scale_back(
    quiesced: Vec<KubeTarget>,
    changes: &mut Vec<super::Change>,
) -> Vec<String> {
    let mut notes = Vec::new();
    for k in quiesced {
        let sts = match (&k.stateful_set, &k.prometheus) {
            (Some(s), _) => format!("statefulset/{}/{s}", k.namespace),
            (None, Some(p)) => format!("the StatefulSet of prometheus/{}/{p}", k.namespace),
            (None, None) => "its StatefulSet".into(),
        };
        let before = changes.len();
        let restored = async {
            let cluster = super::connect(&k).await?;
            super::restore(&cluster, &k, changes).await
        }
        .await;
        // What the restore did before it failed, if it failed: its changes say.
        let scaled_back = changes[before..]
            .iter()
            .any(|c| c.field == "spec.replicas" && c.after != "0");
        notes.push(match (restored, scaled_back) {
            (Ok(()), _) => format!("{sts}, scaled to 0 for the receiver, was scaled back"),
            (Err(r), true) => format!(
                "{sts}, scaled to 0 for the receiver, was scaled back, but its restore did not finish: {r:#} (see kubernetes_changes)"
            ),
            (Err(r), false) => format!(
                "{sts} is left as it was scaled down for the receiver (scaling it back failed: {r:#}; see kubernetes_changes): rerun apply, or scale it back by hand"
            ),
        });
    }
    notes
}

/// Whether claim `k` must be freed before a receiver pod can mount it: a pod holds it
/// ([`holders`]). As `held` says, that is an error with what to do, or (`Quiesce`) true once
/// the StatefulSet is known to be the holder and safe to scale to 0 (the checks plan makes
/// of it: no blockers); nothing is changed here.
pub async fn must_free(cluster: &Cluster, k: &KubeTarget, held: Held) -> anyhow::Result<bool> {
    let pods = holders(cluster, k).await?;
    if pods.is_empty() {
        return Ok(false);
    }
    let ns = &k.namespace;
    let listed = pods
        .iter()
        .map(|p| format!("{ns}/{}", p.name_any()))
        .collect::<Vec<_>>()
        .join(", ");
    let why = format!(
        "claim {ns}/{} is ReadWriteOncePod and pod {listed} mounts it: no receiver pod can mount it beside",
        k.persistent_volume_claim
    );
    let sts = k
        .stateful_set
        .as_ref()
        .map(|s| format!("statefulset/{ns}/{s}"))
        .or_else(|| {
            k.prometheus
                .as_ref()
                .map(|p| format!("the StatefulSet of prometheus/{ns}/{p}"))
        });
    let finding = |s: String| -> anyhow::Error { crate::exit::Finding(s).into() };
    match held {
        Held::Refuse => Err(finding(format!(
            "{why}. A command that only reads (plan, verify, apply --dry-run) does not stop it: scale its StatefulSet to 0 first (kubectl scale statefulset -n {ns} NAME --replicas=0) and back afterwards, or let `apply --yes` do it. Nothing was changed"
        ))),
        Held::NeedsYes => Err(finding(format!(
            "{why}. apply must scale {} to 0 before its receiver can read the volume, so before it can show the plan: rerun with --yes to let it (it scales it back once the final phase verifies, or as soon as the run stops before writing), or scale it to 0 yourself. This claim was not changed",
            sts.as_deref().unwrap_or("its StatefulSet")
        ))),
        Held::Quiesce => {
            let Some(sts) = sts else {
                return Err(finding(format!(
                    "{why}, and the plan names no StatefulSet to scale down: set target.kubernetes.statefulSet (or prometheus), or stop that pod. This claim was not changed"
                )));
            };
            // Only the StatefulSet's own pods go when it is scaled down.
            if let Some(name) = &k.stateful_set {
                let foreign: Vec<String> = pods
                    .iter()
                    .filter(|p| {
                        !p.owner_references()
                            .iter()
                            .any(|o| o.kind == "StatefulSet" && &o.name == name)
                    })
                    .map(|p| format!("{ns}/{}", p.name_any()))
                    .collect();
                if !foreign.is_empty() {
                    return Err(finding(format!(
                        "{why}; pod {} is not a pod of {sts}, so scaling that down would not free the claim: stop it first. This claim was not changed",
                        foreign.join(", ")
                    )));
                }
            }
            // What plan would block before any scale-down (a whenScaled: Delete retention
            // policy deletes the claim at 0, GitOps, a missing object), judged now: the
            // scale-down comes before the plan.
            let state = super::preflight::inspect(cluster, k).await?;
            let report = super::preflight::assess(k, &state, 0, true);
            if !report.blockers.is_empty() {
                return Err(finding(format!(
                    "{why}, and apply would have to scale {sts} to 0 before the plan, but: {}. This claim was not changed",
                    report.blockers.join("; ")
                )));
            }
            tracing::warn!(
                "{why}: scaling {sts} to 0 before the receiver starts, so before the plan is read (apply scales it back once the final phase verifies, or as soon as the run stops before writing)"
            );
            Ok(true)
        }
    }
}

/// What is asked of the cluster, for the access check and the RBAC docs.
pub const NEEDED: &[(&str, &str, &str)] = &[
    ("create", "pods", ""),
    ("get", "pods", ""),
    ("list", "pods", ""),
    ("watch", "pods", ""),
    ("delete", "pods", ""),
    // The heartbeat that tells a live run's pod from one that a killed run left.
    ("patch", "pods", ""),
    // kube-client opens exec as a WebSocket upgrade of a GET: Kubernetes authorizes it as
    // `get pods/exec`, and from 1.35 also as `create`.
    ("get", "pods", "exec"),
    ("create", "pods", "exec"),
];

/// What the port-forward to the receiver asks (a WebSocket upgrade of a GET, as exec's),
/// when it may: without it the stream goes through the exec.
pub const FORWARD: &[(&str, &str, &str)] = &[
    ("get", "pods", "portforward"),
    ("create", "pods", "portforward"),
];

/// The permissions of `asked` that `cluster`'s credentials lack in `ns` (a
/// SelfSubjectAccessReview each), as `verb resource[/subresource]`.
async fn lacking(
    cluster: &Cluster,
    ns: &str,
    asked: &[(&str, &str, &str)],
) -> anyhow::Result<Vec<String>> {
    let api: Api<SelfSubjectAccessReview> = Api::all(cluster.client.clone());
    let mut missing = Vec::new();
    for (verb, resource, sub) in asked {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(ns.to_string()),
                    verb: Some(verb.to_string()),
                    resource: Some(resource.to_string()),
                    subresource: (!sub.is_empty()).then(|| sub.to_string()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let r = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| super::api_error(cluster, "a selfsubjectaccessreview", e))?;
        if !r.status.is_some_and(|s| s.allowed) {
            let what = if sub.is_empty() {
                resource.to_string()
            } else {
                format!("{resource}/{sub}")
            };
            missing.push(format!("{verb} {what}"));
        }
    }
    Ok(missing)
}

/// Each permission the receiver pod needs in `ns`; the missing ones are an error naming
/// verb and resource.
pub async fn check_access(cluster: &Cluster, ns: &str) -> anyhow::Result<()> {
    let missing = lacking(cluster, ns, NEEDED).await?;
    if !missing.is_empty() {
        bail!(
            "the credentials of {} may not {} in namespace {ns}, which the receiver pod needs (a target without `path`): grant them (docs/kubernetes.md, RBAC) or mount the volume and give the target's `path`. Nothing was created",
            cluster.describe(),
            missing.join(", ")
        );
    }
    Ok(())
}

/// The environment variable that chooses the receiver's stream: `port-forward` (the
/// default), `port-forward-websocket` or `exec`.
pub const STREAM_ENV: &str = "PROMIGRATE_RECEIVER_STREAM";

/// How the receiver's stream is to go through a port-forward: SPDY through the tunnel
/// first (the WebSocket protocol when the API server does not open the tunnel), or the
/// WebSocket protocol only; `Err` says why not at all (the stream then goes through the
/// exec).
async fn forward_or_why(cluster: &Cluster, ns: &str) -> anyhow::Result<Result<Protocol, String>> {
    let bad = |v: &dyn std::fmt::Debug| -> anyhow::Error {
        crate::exit::InvalidInput(format!(
            "{STREAM_ENV}={v:?} is not a stream: `port-forward` (the default), `port-forward-websocket` or `exec`. Nothing was created"
        ))
        .into()
    };
    let protocol = match std::env::var(STREAM_ENV) {
        Err(std::env::VarError::NotPresent) => Protocol::Spdy,
        Err(std::env::VarError::NotUnicode(v)) => return Err(bad(&v)),
        Ok(v) => match v.as_str() {
            "" | "port-forward" => Protocol::Spdy,
            "port-forward-websocket" => Protocol::WebSocket,
            "exec" => return Ok(Err(format!("{STREAM_ENV}=exec"))),
            _ => return Err(bad(&v)),
        },
    };
    let missing = lacking(cluster, ns, FORWARD).await?;
    Ok(if missing.is_empty() {
        Ok(protocol)
    } else {
        Err(format!(
            "the credentials of {} may not {} in namespace {ns}",
            cluster.describe(),
            missing.join(", ")
        ))
    })
}

/// A label value naming `s`: `s` itself when it is one (at most 63 of `[A-Za-z0-9._-]`,
/// alphanumeric at both ends); else a prefix of it and a hash of all of it, so that two long
/// names that share their first 63 characters (the claims of an HA pair) stay apart.
fn label_value(s: &str) -> String {
    let clean: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let ends_ok = |v: &str| {
        v.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && v.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())
    };
    if clean == s && clean.len() <= 63 && ends_ok(&clean) {
        return clean;
    }
    let hash = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(s.as_bytes()));
    let prefix: String = clean.chars().take(46).collect();
    let prefix = prefix.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if prefix.is_empty() {
        hash
    } else {
        format!("{prefix}-{hash}")
    }
}

/// Whether `p` is a receiver pod of promigrate (by its labels).
pub fn is_receiver_pod(p: &Pod) -> bool {
    let labels = p.labels();
    [MANAGED_BY, ROLE]
        .iter()
        .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
}

fn selector(migration: &str, claim: &str) -> String {
    format!(
        "{}={},{}={},{CLAIM}={},{MIGRATION}={}",
        MANAGED_BY.0,
        MANAGED_BY.1,
        ROLE.0,
        ROLE.1,
        label_value(claim),
        label_value(migration)
    )
}

/// The image: the plan's, else the Prometheus container's of the StatefulSet.
async fn image_of(cluster: &Cluster, k: &KubeTarget) -> anyhow::Result<String> {
    if let Some(i) = k.receiver_pod.as_ref().and_then(|r| r.image.clone()) {
        return Ok(i);
    }
    let Some(sts) = &k.stateful_set else {
        bail!(
            "no image for the receiver pod: set target.kubernetes.receiver.image (an image with sh and cat, e.g. busybox, that the cluster can pull), or name the StatefulSet (target.kubernetes.statefulSet) whose Prometheus image to use"
        );
    };
    let api: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), &k.namespace);
    let object = format!("statefulset {}/{sts}", k.namespace);
    let s = api
        .get(sts)
        .await
        .map_err(|e| super::api_error(cluster, &object, e))?;
    s.spec
        .and_then(|s| s.template.spec)
        .and_then(|spec| super::server::prometheus_container(&spec).and_then(|c| c.image.clone()))
        .ok_or_else(|| {
            anyhow!(
                "{object} has no Prometheus container image: set target.kubernetes.receiver.image"
            )
        })
}

/// The node: the plan's, else the local PV's node affinity (one hostname), else the node
/// of a pod that mounts the claim; `None`: the scheduler's choice.
async fn node_of(cluster: &Cluster, k: &KubeTarget) -> anyhow::Result<Option<String>> {
    if let Some(n) = k.receiver_pod.as_ref().and_then(|r| r.node_name.clone()) {
        return Ok(Some(n));
    }
    let pvs: Api<PersistentVolume> = Api::all(cluster.client.clone());
    let object = format!("persistentvolume/{}", k.persistent_volume);
    let pv = pvs
        .get(&k.persistent_volume)
        .await
        .map_err(|e| super::api_error(cluster, &object, e))?;
    let terms = pv
        .spec
        .and_then(|s| s.node_affinity)
        .and_then(|a| a.required)
        .map(|r| r.node_selector_terms)
        .unwrap_or_default();
    if let [term] = terms.as_slice() {
        let host = term.match_expressions.iter().flatten().find_map(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            (e.key == "kubernetes.io/hostname" && e.operator == "In" && values.len() == 1)
                .then(|| values[0].clone())
        });
        if host.is_some() {
            return Ok(host);
        }
    }
    Ok(claim_pods(cluster, k)
        .await?
        .into_iter()
        .find_map(|p| p.spec?.node_name))
}

/// The pod, as the `restricted` Pod Security profile wants it. With `read_only` the claim
/// is mounted read-only: the kubelet then leaves the volume's ownership alone (it applies
/// fsGroup to read-write mounts only), and nothing in the pod can write it.
fn pod_spec(
    k: &KubeTarget,
    migration: &str,
    name: &str,
    image: &str,
    node: Option<&str>,
    owner: Owner,
    read_only: bool,
) -> anyhow::Result<Pod> {
    let labels: BTreeMap<String, String> = [
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (ROLE.0.to_string(), ROLE.1.to_string()),
        (CLAIM.to_string(), label_value(&k.persistent_volume_claim)),
        (MIGRATION.to_string(), label_value(migration)),
    ]
    .into();
    let annotations: BTreeMap<String, String> = [
        (HEARTBEAT.to_string(), "0".to_string()),
        (
            OWNER.to_string(),
            format!(
                "pid {} on {}",
                std::process::id(),
                crate::record::hostname()
            ),
        ),
    ]
    .into();
    let mut spec = json!({
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 1,
        "automountServiceAccountToken": false,
        "securityContext": {
            "runAsNonRoot": owner.uid != 0,
            "runAsUser": owner.uid,
            "runAsGroup": owner.gid,
            "fsGroup": owner.gid,
            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "receiver",
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"],
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": [
                {"name": "volume", "mountPath": POD_MOUNT, "readOnly": read_only},
                {"name": "bin", "mountPath": BIN_DIR}]}],
        "volumes": [
            {"name": "volume", "persistentVolumeClaim": {
                "claimName": k.persistent_volume_claim, "readOnly": read_only}},
            {"name": "bin", "emptyDir": {}}]});
    if let Some(n) = node {
        spec["nodeName"] = json!(n);
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels,
                     "annotations": annotations},
        "spec": spec}))
    .context("the receiver pod's spec")
}

/// Why a pod is not going to run, if it says so: a waiting reason that is not the start,
/// a terminated container, phase Failed, or unschedulable.
fn stuck(p: &Pod) -> Option<String> {
    let st = p.status.as_ref()?;
    if st.phase.as_deref() == Some("Failed") {
        return Some(format!(
            "phase Failed: {}",
            st.message.clone().unwrap_or_default()
        ));
    }
    if let Some(c) = st.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    }) {
        return Some(format!(
            "Unschedulable: {}",
            c.message.clone().unwrap_or_default()
        ));
    }
    st.container_statuses.iter().flatten().find_map(|c| {
        let state = c.state.as_ref()?;
        if let Some(t) = &state.terminated {
            return Some(format!(
                "container ended ({}, exit code {}): {}",
                t.reason.clone().unwrap_or_default(),
                t.exit_code,
                t.message.clone().unwrap_or_default()
            ));
        }
        let w = state.waiting.as_ref()?;
        let reason = w.reason.clone().unwrap_or_default();
        (!matches!(
            reason.as_str(),
            "ContainerCreating" | "PodInitializing" | ""
        ))
        .then(|| format!("{reason}: {}", w.message.clone().unwrap_or_default()))
    })
}

fn running(p: &Pod) -> bool {
    p.status.as_ref().is_some_and(|s| {
        s.phase.as_deref() == Some("Running")
            && s.container_statuses
                .iter()
                .flatten()
                .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
    })
}

/// What to do about a receiver pod that the scheduler cannot place.
const UNPLACED_HINT: &str = "Make a node where the volume can attach able to take it (not cordoned, with room for it, without taints it does not tolerate), or name one in target.kubernetes.receiver.nodeName";

/// Whether [`stuck`]'s reason is the scheduler's "no node can take it".
fn unschedulable(why: &str) -> bool {
    why.starts_with("Unschedulable")
}

/// What a start failure means, with what to do when the image has no shell.
fn start_error(shown: &str, image: &str, why: &str) -> anyhow::Error {
    // A pull error first: its message may well say "no such file or directory" too.
    let no_image = [
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "ImageInspectError",
        "RegistryUnavailable",
    ]
    .iter()
    .any(|w| why.starts_with(w));
    let no_shell = !no_image
        && ["executable file not found", "no such file or directory"]
            .iter()
            .any(|w| why.contains(w));
    if no_shell {
        anyhow!(
            "the receiver pod {shown} cannot run image {image}, which has no `sh`: {why}. The receiver pod needs an image with sh and cat: set target.kubernetes.receiver.image to one the cluster can pull (e.g. busybox)"
        )
    } else if no_image {
        anyhow!(
            "the receiver pod {shown} cannot start: its node cannot pull image {image} ({why}). Set target.kubernetes.receiver.image to an image with sh and cat that the node has or can pull (the Prometheus StatefulSet's own image is taken when the plan names none)"
        )
    } else if unschedulable(why) {
        anyhow!("the receiver pod {shown} cannot be placed on any node ({why}). {UNPLACED_HINT}")
    } else {
        anyhow!("the receiver pod {shown} (image {image}) did not start: {why}")
    }
}

/// The stream to a `promigrate receive` running in a pod (a port-forward to it, or its
/// exec's stdout as `input` and stdin as `output`), named `name` in messages.
pub struct Stream {
    pub name: String,
    pub input: Box<dyn std::io::Read + Send>,
    pub output: Box<dyn std::io::Write + Send>,
}

/// The receiver pod of target `k`, running, with promigrate uploaded into it, and the
/// stream of its `promigrate receive`; with `read_only` it mounts the claim read-only.
pub async fn start(
    cluster: &Cluster,
    k: &KubeTarget,
    migration: &str,
    owner: Owner,
    binary: &Path,
    read_only: bool,
) -> anyhow::Result<(Stream, PodGuard)> {
    let ns = &k.namespace;
    // The access check ran before (attach: every target's, before any claim is read).
    let image = image_of(cluster, k).await?;
    let node = node_of(cluster, k).await?;
    let forward = forward_or_why(cluster, ns).await?;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
    // A receiver pod that a killed run of this migration left on this claim.
    let lp = ListParams::default().labels(&selector(migration, &k.persistent_volume_claim));
    let old = pods
        .list(&lp)
        .await
        .map_err(|e| super::api_error(cluster, &format!("pods in {ns}"), e))?;
    for p in old.items {
        let name = p.name_any();
        if let Some(owner) = live_owner(&pods, &p).await? {
            bail!(
                "claim {ns}/{} is in use by another promigrate run of migration {migration:?} right now: its receiver pod {ns}/{name} ({owner}) is live (its heartbeat moves). Run one promigrate at a time per claim: wait for that run to end. Nothing was changed",
                k.persistent_volume_claim
            );
        }
        tracing::warn!("removing the receiver pod {ns}/{name} that an earlier run left");
        delete_and_wait(&pods, &name)
            .await
            .with_context(|| format!("cannot remove the old receiver pod {ns}/{name}"))?;
    }
    // Named here, not by the API server: it is noted before it exists.
    let name = format!(
        "promigrate-receiver-{}",
        ulid::Ulid::new().to_string().to_lowercase()
    );
    let spec = pod_spec(
        k,
        migration,
        &name,
        &image,
        node.as_deref(),
        owner,
        read_only,
    )?;
    let Some(settled) = track(&pods, &name) else {
        bail!("interrupted: no receiver pod created");
    };
    let created = pods.create(&PostParams::default(), &spec).await;
    settled.store(true, Ordering::Release);
    if let Err(e) = created {
        untrack(&name);
        return Err(super::api_error(
            cluster,
            &format!("a receiver pod in {ns}"),
            e,
        ));
    }
    let shown = format!("{ns}/{name}");
    let beat = tokio::spawn(heartbeat(pods.clone(), name.clone(), shown.clone()));
    tracing::info!(
        "receiver pod {shown} created (image {image}, node {})",
        node.as_deref().unwrap_or("chosen by the scheduler")
    );
    let ready = async {
        wait_running(&pods, &name, &shown, &image, k.wait_timeout).await?;
        upload(&pods, &name, &shown, &image, binary).await?;
        connect(&pods, &name, &shown, forward).await
    };
    match ready.await {
        Ok((stream, process)) => Ok((
            stream,
            PodGuard {
                handle: tokio::runtime::Handle::current(),
                pods,
                shown,
                name,
                process: Some(process),
                beat,
            },
        )),
        Err(e) => {
            beat.abort();
            match delete_and_wait(&pods, &name).await {
                Ok(()) => untrack(&name),
                Err(d) => tracing::warn!(
                    "cannot delete the receiver pod {shown}: {d:#}; delete it by hand (kubectl delete pod -n {ns} {name})"
                ),
            }
            Err(e)
        }
    }
}

/// Moves the pod's [`HEARTBEAT`] every [`BEAT`], for as long as this run lives.
async fn heartbeat(pods: Api<Pod>, name: String, shown: String) {
    let mut warned = false;
    for n in 1u64.. {
        tokio::time::sleep(BEAT).await;
        let patch = json!({"metadata": {"annotations": {HEARTBEAT: n.to_string()}}});
        let r = tokio::time::timeout(
            BEAT * 2,
            pods.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await;
        let why = match r {
            Ok(Ok(_)) => {
                warned = false;
                continue;
            }
            Ok(Err(kube::Error::Api(s))) if s.code == 404 => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {}s", (BEAT * 2).as_secs()),
        };
        if !warned {
            warned = true;
            tracing::warn!(
                "cannot move the heartbeat of the receiver pod {shown}: {why}; a second run started now may take this run's pod for one that a killed run left"
            );
        }
    }
}

/// Who owns receiver pod `p` when that run is alive: its [`HEARTBEAT`] moves within
/// [`STILL`]. `None`: a pod that a killed run left (it stood still, it ended, it is being
/// deleted, or it has no heartbeat: a pod of a promigrate older than the heartbeat). An
/// error when it cannot be told (the pod could not be read): then nothing is deleted.
async fn live_owner(pods: &Api<Pod>, p: &Pod) -> anyhow::Result<Option<String>> {
    let ended = p
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|ph| ph == "Succeeded" || ph == "Failed");
    let first = p.annotations().get(HEARTBEAT).cloned();
    if ended || p.metadata.deletion_timestamp.is_some() || first.is_none() {
        return Ok(None);
    }
    let name = p.name_any();
    let owner = p.annotations().get(OWNER).cloned().unwrap_or_default();
    tracing::info!(
        "receiver pod {name} ({owner}) is there already: watching its heartbeat for up to {}s to tell whether its run is alive",
        STILL.as_secs()
    );
    let watched = Instant::now();
    while watched.elapsed() < STILL {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let got = tokio::time::timeout(BEAT * 2, pods.get_opt(&name))
            .await
            .unwrap_or_else(|_| Err(kube::Error::Service("no answer within 4 s".into())));
        match got {
            Ok(None) => return Ok(None),
            Ok(Some(now)) if now.annotations().get(HEARTBEAT) != first.as_ref() => {
                return Ok(Some(owner));
            }
            Ok(Some(_)) => {}
            Err(e) => bail!(
                "cannot tell whether the receiver pod {name} ({owner}) belongs to a run that is alive: reading it failed ({e}); nothing was changed: rerun"
            ),
        }
    }
    Ok(None)
}

async fn wait_running(
    pods: &Api<Pod>,
    name: &str,
    shown: &str,
    image: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    // Unschedulable is not the end: a cluster autoscaler may add a node that can take the
    // pod. It is said at once, and the wait goes on.
    let warned = AtomicBool::new(false);
    let settled = |p: Option<&Pod>| {
        p.is_none_or(|p| {
            let why = stuck(p);
            match &why {
                Some(w) if unschedulable(w) => {
                    if !warned.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "the receiver pod {shown} cannot be placed yet ({w}); waiting up to {}s (target.kubernetes.waitTimeout) in case a node is added (a cluster autoscaler), or Ctrl-C. {UNPLACED_HINT}",
                            timeout.as_secs()
                        );
                    }
                    false
                }
                Some(_) => true,
                None => running(p),
            }
        })
    };
    let waited =
        tokio::time::timeout(timeout, wait::await_condition(pods.clone(), name, settled)).await;
    let p = match waited {
        Ok(Ok(Some(p))) => p,
        Ok(Ok(None)) => bail!("the receiver pod {shown} was deleted while it started"),
        Ok(Err(e)) => bail!("cannot watch the receiver pod {shown}: {e}"),
        Err(_) => {
            let now = pods.get(name).await.ok();
            let why = now
                .as_ref()
                .and_then(stuck)
                .or_else(|| now.and_then(|p| p.status?.phase))
                .unwrap_or_else(|| "no status".into());
            if unschedulable(&why) {
                bail!(
                    "{:#} (waited {}s: target.kubernetes.waitTimeout)",
                    start_error(shown, image, &why),
                    timeout.as_secs()
                );
            }
            bail!(
                "the receiver pod {shown} is not running after {}s (target.kubernetes.waitTimeout): {why}. A ReadWriteOnce claim that a pod on another node mounts cannot be attached to the receiver's node: scale that pod's StatefulSet to 0 first (kubectl describe pod -n {})",
                timeout.as_secs(),
                shown.replace('/', " ")
            );
        }
    };
    match stuck(&p) {
        Some(why) => Err(start_error(shown, image, &why)),
        None => Ok(()),
    }
}

/// Uploads the binary through exec stdin (`sh` and `cat` in the image).
async fn upload(
    pods: &Api<Pod>,
    name: &str,
    shown: &str,
    image: &str,
    binary: &Path,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let data =
        std::fs::read(binary).with_context(|| format!("cannot read {}", binary.display()))?;
    // `echo ok` keeps stdout open until stdin is consumed (containerd ends an exec's stdin
    // once its stdout and stderr are closed).
    let script = format!(
        "cat > {BIN_DIR}/promigrate.part && chmod 0755 {BIN_DIR}/promigrate.part && mv {BIN_DIR}/promigrate.part {BIN_DIR}/promigrate && echo ok && wc -c < {BIN_DIR}/promigrate"
    );
    // promigrate's own exec (src/k8s/exec.rs): stdin in messages of 256 KiB, where
    // kube-client's sends one per 4 KiB (the upload took twice as long through it).
    let e = super::exec::exec(
        pods,
        name,
        &["sh", "-c", script.as_str()],
        shown,
        super::exec::Stderr::Keep,
    )
    .await
    .map_err(|e| start_error(shown, image, &format!("exec sh: {e}")))?;
    let super::exec::Exec {
        mut stdout,
        mut stdin,
        session,
        ended,
        ends_stdin,
    } = e;
    if !ends_stdin {
        // `cat` would wait for the end of a stdin that v4 cannot end.
        bail!(
            "the API server in front of {shown} speaks only the v4 exec protocol (Kubernetes before 1.30), which cannot end the upload's stdin and keep its output: the receiver pod needs v5.channel.k8s.io (Kubernetes 1.30 or later); write a volume such a cluster holds from its node, with a mounted target (target.path)"
        );
    }
    let data_len = data.len() as u64;
    let write = async move {
        stdin.write_all(&data).await?;
        stdin.shutdown().await
    };
    let mut out = Vec::new();
    // A stream that stops moving (an end of stdin lost on the way) must not hang the run: a
    // minute, and a second per MB of the binary.
    let limit = Duration::from_secs(60 + data_len / 1_000_000);
    let Ok((w, o)) = tokio::time::timeout(limit, async {
        tokio::join!(write, stdout.read_to_end(&mut out))
    })
    .await
    else {
        return Err(start_error(
            shown,
            image,
            &format!(
                "uploading promigrate into {BIN_DIR} did not end within {}s",
                limit.as_secs()
            ),
        ));
    };
    drop(session);
    let out = String::from_utf8_lossy(&out).into_owned();
    let err = ended.stderr();
    let status = ended.failed();
    let mut lines = out.lines();
    if lines.next() != Some("ok") {
        let why = format!(
            "{}{}{}",
            err.trim(),
            status.map(|m| format!(" ({m})")).unwrap_or_default(),
            w.err()
                .map(|e| format!(" (writing: {e})"))
                .unwrap_or_default()
        );
        return Err(start_error(
            shown,
            image,
            &format!("uploading promigrate into {BIN_DIR} failed: {why}"),
        ));
    }
    o?;
    let want = std::fs::metadata(binary)?.len();
    // The size, when the image has `wc`.
    if let Some(size) = lines.next().and_then(|l| l.trim().parse::<u64>().ok())
        && size != want
    {
        bail!("uploading promigrate into {shown}: {size} bytes arrived of {want}");
    }
    tracing::info!(
        "promigrate ({want} bytes) uploaded into {shown} in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A writer that ends its stream when dropped: the exec's stdin, or the whole port-forward
/// (which has no half-close).
struct Closing<W: tokio::io::AsyncWrite + Unpin>(tokio_util::io::SyncIoBridge<W>);

impl<W: tokio::io::AsyncWrite + Unpin> std::io::Write for Closing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl<W: tokio::io::AsyncWrite + Unpin> Drop for Closing<W> {
    fn drop(&mut self) {
        let _ = self.0.shutdown();
    }
}

/// How long the receiver has to say where it listens, the port-forward to open, and the
/// receiver to answer on it (the receiver waits [`super::handshake::CHOICE_WAIT`]).
const LISTEN_WAIT: Duration = Duration::from_secs(60);
/// Fault injection for the tests: the port to forward to instead of the receiver's.
const TEST_FORWARD_PORT_ENV: &str = "PROMIGRATE_TEST_FORWARD_PORT";

/// Starts `promigrate receive` in the pod (its stderr goes to the logs) and connects to it:
/// through a port-forward to the port it listens on, unless `forward` says why not or the
/// port-forward cannot be opened; then through the exec's stdin/stdout
/// ([`crate::remote::listen`]).
async fn connect(
    pods: &Api<Pod>,
    name: &str,
    shown: &str,
    forward: Result<Protocol, String>,
) -> anyhow::Result<(Stream, super::exec::Session)> {
    let bin = format!("{BIN_DIR}/promigrate");
    let mut command = vec![bin.as_str(), "receive"];
    if forward.is_ok() {
        command.push("--listen");
    }
    let mut e = super::exec::exec(pods, name, &command, shown, super::exec::Stderr::Log)
        .await
        .with_context(|| format!("cannot exec {bin} receive in {shown}"))?;
    match forward {
        Ok(protocol) => {
            if let Some(f) = through_forward(pods, name, shown, protocol, &mut e).await? {
                let stream = stream_of(shown, f.from_pod, f.to_pod);
                return Ok((stream, e.session.and(f.session)));
            }
        }
        Err(why) => tracing::info!(
            "receiver pod {shown}: the stream goes through the exec ({why}; a port-forward costs the API server less: docs/receiver.md, \"The stream\")"
        ),
    }
    Ok((stream_of(shown, e.stdout, e.stdin), e.session))
}

/// The stream of `promigrate receive` in pod `shown`: what it says comes from `from`, what
/// is written to it goes into `to` (ended when the stream is dropped).
fn stream_of(shown: &str, from: tokio::io::DuplexStream, to: tokio::io::DuplexStream) -> Stream {
    let handle = tokio::runtime::Handle::current();
    Stream {
        name: format!("receiver pod {shown}"),
        input: Box::new(tokio_util::io::SyncIoBridge::new_with_handle(
            from,
            handle.clone(),
        )),
        output: Box::new(Closing(tokio_util::io::SyncIoBridge::new_with_handle(
            to, handle,
        ))),
    }
}

/// The port-forward to `promigrate receive --listen` of exec `e`, accepted by the receiver;
/// `None` when it could not be opened, after telling the receiver to use the exec's
/// stdin/stdout instead.
async fn through_forward(
    pods: &Api<Pod>,
    name: &str,
    shown: &str,
    protocol: Protocol,
    e: &mut super::exec::Exec,
) -> anyhow::Result<Option<Forward>> {
    let Ok(line) = tokio::time::timeout(LISTEN_WAIT, first_line(&mut e.stdout)).await else {
        bail!(
            "receiver pod {shown} did not start the promigrate receiver: it said nothing within {} s (its messages, if any, are in the log)",
            LISTEN_WAIT.as_secs()
        );
    };
    let Some((port, token)) = handshake::parse_listening(&line) else {
        let failed = e
            .ended
            .failed()
            .map(|f| format!(" ({f})"))
            .unwrap_or_default();
        bail!(
            "receiver pod {shown} did not start the promigrate receiver: it said {:?}{failed}, not where it listens",
            line.trim_end()
        );
    };
    let port = test_forward_port(port)?;
    match open_forward(pods, name, port, &token, shown, protocol).await? {
        Ok(f) => {
            tracing::info!(
                "receiver pod {shown}: the stream goes through a port-forward to its port {port} ({})",
                f.protocol.describe()
            );
            Ok(Some(f))
        }
        Err(why) => {
            tracing::warn!(
                "receiver pod {shown}: no port-forward to it ({why}); the stream goes through the exec instead, which costs the API server more (docs/receiver.md, \"The stream\")"
            );
            e.stdin
                .write_all(handshake::USE_STDIO)
                .await
                .with_context(|| format!("the exec stream to {shown} broke"))?;
            Ok(None)
        }
    }
}

/// `port`, or for the tests (fault injection) the port [`TEST_FORWARD_PORT_ENV`] names: one
/// where nothing listens, as a runtime that cannot reach the receiver's would answer.
fn test_forward_port(port: u16) -> anyhow::Result<u16> {
    let Ok(v) = std::env::var(TEST_FORWARD_PORT_ENV) else {
        return Ok(port);
    };
    let Ok(p) = v.parse::<u16>() else {
        return Err(crate::exit::InvalidInput(format!(
            "{TEST_FORWARD_PORT_ENV}={v:?} is not a port (a test's setting: unset it)"
        ))
        .into());
    };
    tracing::warn!(
        "{TEST_FORWARD_PORT_ENV}={p}: forwarding to port {p} instead of the receiver's {port} (a test's setting: unset it)"
    );
    Ok(p)
}

/// The first line of `r` (at most 256 bytes; what came before its end if it ended), read
/// byte by byte: nothing after it is taken.
async fn first_line(r: &mut tokio::io::DuplexStream) -> String {
    let mut line = Vec::new();
    while line.len() < 256 {
        match r.read_u8().await {
            Ok(b) => {
                line.push(b);
                if b == b'\n' {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// A port-forward to the receiver's `port` that the receiver accepted (it brought
/// `token`); `Ok(Err(why))` when the port-forward could not be opened or the pod's side
/// refused it, so that the exec's stream can be used instead. SPDY through the tunnel that
/// the API server does not open is followed by the WebSocket protocol.
async fn open_forward(
    pods: &Api<Pod>,
    name: &str,
    port: u16,
    token: &str,
    shown: &str,
    protocol: Protocol,
) -> anyhow::Result<Result<Forward, String>> {
    // `Err((why, answered))`: `answered` when the attempt ended with an answer or an error
    // (a refusal, a failed connection), not a timeout (a timeout is not
    // followed by another attempt: a server that did not answer one upgrade would not
    // answer the next, and the receiver waits for the choice only so long).
    let open = |protocol| async move {
        match tokio::time::timeout(
            LISTEN_WAIT,
            super::forward::open(pods, name, port, shown, protocol),
        )
        .await
        {
            Ok(Ok(f)) => Ok(f),
            Ok(Err(e)) => Err((format!("{e:#}"), true)),
            Err(_) => Err((
                format!(
                    "the API server did not open it ({}) within {} s",
                    protocol.describe(),
                    LISTEN_WAIT.as_secs()
                ),
                false,
            )),
        }
    };
    let opened = match open(protocol).await {
        Err((why, true)) if protocol == Protocol::Spdy => {
            tracing::info!(
                "receiver pod {shown}: no port-forward through the API server's SPDY tunnel ({why}); trying the WebSocket port-forward"
            );
            open(Protocol::WebSocket).await
        }
        other => other,
    };
    let mut f = match opened {
        Ok(f) => f,
        Err((why, _)) => return Ok(Err(why)),
    };
    if f.to_pod
        .write_all(format!("{token}\n").as_bytes())
        .await
        .is_err()
    {
        return Ok(Err("the port-forward ended at once".into()));
    }
    let mut answer = [0u8; handshake::ACCEPTED.len()];
    match tokio::time::timeout(LISTEN_WAIT, f.from_pod.read_exact(&mut answer)).await {
        Ok(Ok(_)) if answer[..] == *handshake::ACCEPTED => Ok(Ok(f)),
        Ok(Ok(_)) => bail!(
            "the receiver's port {port} answered {:?}, not promigrate's receiver",
            String::from_utf8_lossy(&answer)
        ),
        Ok(Err(_)) => Ok(Err(f.ended.failed().unwrap_or_else(|| {
            "the port-forward ended before the receiver answered".into()
        }))),
        // Not the exec's stream now: the receiver may have taken this connection.
        Err(_) => {
            let instead = match f.protocol {
                Protocol::Spdy => "port-forward-websocket, or =exec",
                Protocol::WebSocket => "exec",
            };
            bail!(
                "the port-forward ({}) to the receiver's port {port} gave no answer within {} s; rerun with {STREAM_ENV}={instead} (docs/receiver.md, \"The stream\")",
                f.protocol.describe(),
                LISTEN_WAIT.as_secs()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_claims_of_an_ha_pair_get_different_labels() {
        // kube-prometheus-stack's default claim names: 92 characters, the same first 63.
        let a = "prometheus-kube-prometheus-stack-prometheus-db-prometheus-kube-prometheus-stack-prometheus-0";
        let b = "prometheus-kube-prometheus-stack-prometheus-db-prometheus-kube-prometheus-stack-prometheus-1";
        let (la, lb) = (label_value(a), label_value(b));
        assert_ne!(la, lb);
        for l in [&la, &lb] {
            assert!(l.len() <= 63 && l.starts_with("prometheus-kube"), "{l}");
        }
        // A name that is a label value stays itself; the same name, the same label.
        assert_eq!(
            label_value("prometheus-db-prometheus-0"),
            "prometheus-db-prometheus-0"
        );
        assert_eq!(label_value(a), la);
        assert_ne!(
            label_value("-x-"),
            "x",
            "a changed name is hashed, not merged"
        );
    }

    #[test]
    fn an_unschedulable_pod_is_explained_with_what_to_do() {
        let e = start_error(
            "monitoring/promigrate-receiver-x",
            "busybox",
            "Unschedulable: 0/1 nodes are available: 1 node(s) were unschedulable.",
        )
        .to_string();
        assert!(
            e.contains("cannot be placed on any node")
                && e.contains("1 node(s) were unschedulable")
                && e.contains("target.kubernetes.receiver.nodeName"),
            "{e}"
        );
    }

    #[test]
    fn a_binary_is_static_when_it_has_no_interpreter() {
        // This test binary is linked dynamically; Debian's ldconfig is static.
        assert!(!is_static(Path::new("/proc/self/exe")).unwrap());
        assert!(is_static(Path::new("/sbin/ldconfig")).unwrap());
        let d = tempfile::tempdir().unwrap();
        let text = d.path().join("script");
        std::fs::write(&text, "#!/bin/sh\n").unwrap();
        let e = is_static(&text).unwrap_err().to_string();
        assert!(e.contains("not a 64-bit ELF"), "{e}");
    }

    #[test]
    fn the_pod_is_restricted_labelled_and_mounts_the_whole_claim() {
        let mut k = super::super::test_target();
        k.persistent_volume_claim = "prometheus-db-prometheus-0".into();
        let owner = Owner {
            uid: 1000,
            gid: 2000,
        };
        let p = pod_spec(
            &k,
            "Prom ECS/2026",
            "promigrate-receiver-x",
            "busybox",
            Some("node-a"),
            owner,
            false,
        )
        .unwrap();
        let v = serde_json::to_value(&p).unwrap();
        let labels = &v["metadata"]["labels"];
        assert_eq!(labels[CLAIM], "prometheus-db-prometheus-0");
        // Not a label value as it is: made one, with a hash of the whole name.
        let m = labels[MIGRATION].as_str().unwrap();
        assert!(m.starts_with("Prom-ECS-2026-") && m.len() <= 63, "{m}");
        assert_eq!(labels[MANAGED_BY.0], MANAGED_BY.1);
        let spec = &v["spec"];
        assert_eq!(spec["nodeName"], "node-a");
        let sc = &spec["securityContext"];
        assert_eq!(
            (&sc["runAsNonRoot"], &sc["runAsUser"], &sc["fsGroup"]),
            (&json!(true), &json!(1000), &json!(2000))
        );
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
        let c = &spec["containers"][0];
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(c["volumeMounts"][0]["mountPath"], POD_MOUNT);
        assert!(c["volumeMounts"][0].get("subPath").is_none());
        assert_eq!(
            spec["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "prometheus-db-prometheus-0"
        );
        // The selector finds the pod by the same labels.
        assert_eq!(
            selector("Prom ECS/2026", "prometheus-db-prometheus-0"),
            format!(
                "app.kubernetes.io/managed-by=promigrate,promigrate.io/role=receiver,promigrate.io/claim=prometheus-db-prometheus-0,promigrate.io/migration={m}"
            )
        );
        assert_eq!(label_value(&"x".repeat(70)).len(), 63);
    }
}
