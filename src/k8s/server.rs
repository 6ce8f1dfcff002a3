//! What the target Prometheus will run with: read from its StatefulSet's pod template, and
//! for an operator-managed server from its `monitoring.coreos.com/v1` `Prometheus` resource.
//! `plan`, apply's gate and `verify` compare it with the plan and the data (see
//! [`cross_check`]); a plan may leave the owner and the subPath out and take them from here
//! ([`derive`]).
//!
//! The operator's naming (prometheus-operator `pkg/prometheus`): StatefulSet
//! `prometheus-<name>` (shard N > 0: `prometheus-<name>-shard-N`), volume
//! `storage.volumeClaimTemplate.metadata.name` or `prometheus-<name>-db`, so the claim of
//! replica R is `<volume>-<statefulset>-<R>` (the StatefulSet controller's naming), mounted
//! with `subPath: prometheus-db` unless `storage.disableMountSubPath`. Its retention default
//! is `24h` when neither `retention` nor `retentionSize` is set.

use std::path::PathBuf;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, PersistentVolumeClaim, PodSpec, Secret, Volume,
};
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde::Serialize;
use serde_json::Value;

use super::{Cluster, api_error};
use crate::perms::Owner;
use crate::plan::file::{ClusterFacts, KubeTarget, Wants};

/// The operator's `Prometheus` resource type.
pub fn prometheus_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "Prometheus"),
        "prometheuses",
    )
}

/// The StatefulSet the operator makes for shard `shard` of Prometheus `name`.
pub fn operator_stateful_set(name: &str, shard: u32) -> String {
    if shard == 0 {
        format!("prometheus-{name}")
    } else {
        format!("prometheus-{name}-shard-{shard}")
    }
}

/// The operator's retention when neither `retention` nor `retentionSize` is set.
pub const OPERATOR_DEFAULT_RETENTION: &str = "24h";
/// Prometheus's own when no limit is set.
pub const PROMETHEUS_DEFAULT_RETENTION: &str = "15d";

/// The retention the server will run with, and where each value is set.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Retention {
    /// Time limit as written (`None`: not set).
    pub time: Option<String>,
    /// Where the time limit is set (or where it would be), to name in messages.
    pub time_from: String,
    /// Size limit as written.
    pub size: Option<String>,
    /// Where the size limit is set.
    pub size_from: String,
    /// The time limit when neither is set (`15d` for Prometheus's flags, `24h` for the
    /// operator); empty when an unset limit means none (a `retention` section in the
    /// configuration file replaces the flags whole).
    pub default_time: String,
    /// `storage.tsdb.retention.percentage` of the configuration file (3.11+): the share of
    /// the volume's size the blocks and WAL may take; it replaces the size limit.
    pub percentage: Option<f64>,
    /// Why the retention could not be read completely (a warning), if so.
    pub unknown: Option<String>,
}

/// The owner the pod's Prometheus process has, and how it was learned.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PodOwner {
    /// Effective uid (container, pod, or the image's default), if known.
    pub uid: Option<u32>,
    /// Where the uid comes from.
    pub uid_from: String,
    /// The group the files must have: the pod's fsGroup, else the process's gid.
    pub gid: Option<u32>,
    /// Where the gid comes from.
    pub gid_from: String,
}

/// The GitOps controller that manages an object, if any.
#[derive(Debug, Clone, Serialize)]
pub struct GitOps {
    /// `statefulset/ns/name` or `prometheus/ns/name`.
    pub object: String,
    /// `Argo CD` or `Flux`.
    pub tool: String,
    /// The label or annotation that says so, `key=value`.
    pub marker: String,
    /// Whether the marker is the tool's own; `false` for Argo CD's older tracking label
    /// `app.kubernetes.io/instance`, which others set too (a warning, not a blocker).
    pub certain: bool,
}

/// What the target server will run with.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TargetServer {
    /// The object that says so: `statefulset/ns/name`, or `prometheus/ns/name`.
    pub from: String,
    /// The Prometheus container's name.
    pub container: String,
    /// Its image.
    pub image: Option<String>,
    /// The Prometheus version: the image tag, else the operator's `spec.version`.
    pub version: Option<crate::promversion::PromVersion>,
    /// Where the version comes from, or why it is not known.
    pub version_from: String,
    /// Who the process runs as.
    pub owner: PodOwner,
    /// The subPath of the data volume's mount (`Some("")`: the volume's root); `None` when
    /// the container does not mount the claim's volume.
    pub sub_path: Option<String>,
    /// Why `sub_path` is not known, if so.
    pub sub_path_unknown: Option<String>,
    /// The data directory is known not to be on the claim's volume (`sub_path_unknown` says
    /// where it is).
    pub data_off_volume: bool,
    /// The data volume's name in the pod (the volumeClaimTemplate's name).
    pub volume: Option<String>,
    /// The retention.
    pub retention: Retention,
    /// For an operator's server: the retention flags its StatefulSet runs with now, if
    /// any (they lag behind the resource while it is paused).
    pub running_retention: Option<Retention>,
    /// GitOps management of the StatefulSet or the Prometheus resource.
    pub git_ops: Vec<GitOps>,
    /// The operator's resource: `spec.paused` now, in words (`true`, `false`, `unset`).
    pub paused: Option<String>,
    /// The operator's resource: `spec.paused` recorded by an unfinished apply, in words.
    pub recorded_paused: Option<String>,
}

/// Where the operator's `spec.paused` before promigrate's pause is kept: `true`, `false`,
/// or `unset`.
pub const PAUSED_ANNOTATION: &str = "promigrate.io/paused-before-migration";

/// `spec.paused` of an operator resource (`None`: not set), and the value recorded before
/// promigrate paused it (`Some(None)`: it was not set).
#[allow(clippy::option_option)]
pub fn paused_state(p: &DynamicObject) -> (Option<bool>, Option<Option<bool>>) {
    let now = p.data["spec"]["paused"].as_bool();
    let recorded = p
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PAUSED_ANNOTATION))
        .and_then(|v| parse_paused(v));
    (now, recorded)
}

/// `spec.paused` in the words of [`PAUSED_ANNOTATION`].
pub fn paused_words(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "true",
        Some(false) => "false",
        None => "unset",
    }
}

/// The value a [`PAUSED_ANNOTATION`] records (`Some(None)`: not set); `None` for none
/// promigrate wrote.
#[allow(clippy::option_option)]
pub fn parse_paused(v: &str) -> Option<Option<bool>> {
    match v {
        "true" => Some(Some(true)),
        "false" => Some(Some(false)),
        "unset" => Some(None),
        _ => None,
    }
}

/// The Prometheus container of a pod spec: named `prometheus`, else the one with
/// `--storage.tsdb.*` arguments.
pub fn prometheus_container(spec: &PodSpec) -> Option<&Container> {
    let cs = &spec.containers;
    cs.iter()
        .find(|c| c.name == "prometheus")
        .or_else(|| {
            cs.iter()
                .find(|c| words(c).iter().any(|w| w.starts_with("--storage.tsdb.")))
        })
        .or_else(|| {
            cs.iter().find(|c| {
                c.image
                    .as_deref()
                    .is_some_and(|i| split_image(i).0.rsplit('/').next() == Some("prometheus"))
            })
        })
        .or_else(|| (cs.len() == 1).then(|| &cs[0]))
}

/// The container's command and args, word by word; a shell script's words too (`sh -c
/// "exec prometheus --storage.tsdb.retention.time=1d ..."`), split at white space.
fn words(c: &Container) -> Vec<String> {
    c.command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .flat_map(|a| {
            if a.contains(char::is_whitespace) {
                a.split_whitespace()
                    .map(|w| w.trim_matches(|c| c == '"' || c == '\'').to_string())
                    .collect()
            } else {
                vec![a.clone()]
            }
        })
        .collect()
}

/// The value of the last `--name=value` / `--name value` among `names` in the container's
/// command and args.
pub fn flag(c: &Container, names: &[&str]) -> Option<String> {
    let w = words(c);
    let mut found = None;
    for (i, a) in w.iter().enumerate() {
        for n in names {
            if let Some(v) = a.strip_prefix(&format!("{n}=")) {
                found = Some(v.to_string());
            } else if a == n {
                found = w.get(i + 1).cloned();
            }
        }
    }
    found
}

/// The uid and gid an image runs as when the pod does not say, for the images whose
/// default is known: the upstream Prometheus image runs as `nobody` (65534), its distroless
/// variant as 65532.
pub fn image_default_user(image: &str) -> Option<(u32, u32)> {
    let tag = split_image(image).1;
    // A digest alone does not say which variant (distroless runs as 65532) it is; no tag
    // at all is `latest`.
    let tag = match tag {
        Some(t) => t,
        None if image.contains('@') => return None,
        None => "latest",
    };
    if !upstream_image(Some(image)) {
        return None;
    }
    if tag.contains("distroless") {
        Some((65532, 65532))
    } else {
        Some((65534, 65534))
    }
}

/// Whether an image is the upstream Prometheus image (its WORKDIR is /prometheus, its CMD
/// `--config.file=/etc/prometheus/prometheus.yml --storage.tsdb.path=/prometheus`).
fn upstream_image(image: Option<&str>) -> bool {
    image.is_some_and(|i| {
        let repo = split_image(i).0;
        ["prom/prometheus", "prometheus/prometheus"]
            .iter()
            .any(|r| repo == *r || repo.ends_with(&format!("/{r}")))
    })
}

/// `registry:5000/a/b:tag@sha256:…` → (`registry:5000/a/b`, Some(`tag`)).
pub fn split_image(image: &str) -> (&str, Option<&str>) {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last_slash = no_digest.rfind('/').map_or(0, |i| i + 1);
    match no_digest[last_slash..].rfind(':') {
        Some(i) => (
            &no_digest[..last_slash + i],
            Some(&no_digest[last_slash + i + 1..]),
        ),
        None => (no_digest, None),
    }
}

/// The owner of a pod's Prometheus process.
fn pod_owner(spec: &PodSpec, c: &Container, image: Option<&str>) -> PodOwner {
    let pod = spec.security_context.as_ref();
    let ctr = c.security_context.as_ref();
    let default = image.and_then(image_default_user);
    let image_words =
        |what: &str| format!("the default {what} of image {}", image.unwrap_or("(none)"));
    let (uid, uid_from) = match (
        ctr.and_then(|s| s.run_as_user),
        pod.and_then(|s| s.run_as_user),
    ) {
        (Some(u), _) => (
            Some(u),
            format!("container {} securityContext.runAsUser", c.name),
        ),
        (None, Some(u)) => (Some(u), "pod securityContext.runAsUser".to_string()),
        (None, None) => (default.map(|d| i64::from(d.0)), image_words("user")),
    };
    // The image's group is its user's group: known only when the user is the image's too.
    let uid_is_image_default =
        ctr.and_then(|s| s.run_as_user).is_none() && pod.and_then(|s| s.run_as_user).is_none();
    let (gid, gid_from) = match (
        pod.and_then(|s| s.fs_group),
        ctr.and_then(|s| s.run_as_group),
        pod.and_then(|s| s.run_as_group),
    ) {
        (Some(g), _, _) => (Some(g), "pod securityContext.fsGroup".to_string()),
        (None, Some(g), _) => (
            Some(g),
            format!(
                "container {} securityContext.runAsGroup (no fsGroup)",
                c.name
            ),
        ),
        (None, None, Some(g)) => (
            Some(g),
            "pod securityContext.runAsGroup (no fsGroup)".to_string(),
        ),
        (None, None, None) if uid_is_image_default => {
            (default.map(|d| i64::from(d.1)), image_words("group"))
        }
        (None, None, None) => (
            None,
            "the primary group of the pod's runAsUser in the image (no fsGroup or runAsGroup)"
                .to_string(),
        ),
    };
    PodOwner {
        uid: uid.and_then(|u| u32::try_from(u).ok()),
        uid_from,
        gid: gid.and_then(|g| u32::try_from(g).ok()),
        gid_from,
    }
}

/// Whether the image's own ENTRYPOINT and CMD run (the container sets neither command nor
/// args).
fn image_cmd_runs(c: &Container) -> bool {
    c.command.as_ref().is_none_or(Vec::is_empty) && c.args.as_ref().is_none_or(Vec::is_empty)
}

/// A path as the container's process sees it: relative ones against its working directory
/// (the pod's `workingDir`, else the upstream image's `/prometheus`); `None` when that is
/// not known.
fn absolute_in(c: &Container, path: &str) -> Option<String> {
    if path.starts_with('/') {
        return Some(path.to_string());
    }
    let wd = c
        .working_dir
        .clone()
        .or_else(|| upstream_image(c.image.as_deref()).then(|| "/prometheus".to_string()))?;
    let rel = path.trim_start_matches("./");
    Some(format!("{}/{rel}", wd.trim_end_matches('/')))
}

/// Prometheus's `--storage.tsdb.path` as the process sees it: the flag, the upstream
/// image's CMD (`/prometheus`), or Prometheus's default `data/` in its working directory.
fn tsdb_path(c: &Container) -> Result<String, String> {
    let given = flag(c, &["--storage.tsdb.path"]);
    let path = match (
        &given,
        image_cmd_runs(c) && upstream_image(c.image.as_deref()),
    ) {
        (Some(p), _) => p.clone(),
        (None, true) => "/prometheus".into(),
        (None, false) => "data/".into(),
    };
    absolute_in(c, &path).ok_or_else(|| {
        format!(
            "container {}'s --storage.tsdb.path is {}{path} relative to a working directory promigrate does not know (image {}): set workingDir or an absolute --storage.tsdb.path",
            c.name,
            if given.is_some() { "" } else { "not given: Prometheus's default " },
            c.image.as_deref().unwrap_or("(none)")
        )
    })
}

/// Where in the volume Prometheus keeps its TSDB: the mount's subPath joined with
/// `--storage.tsdb.path` below the mountPath. `Err((why, blocker))`: unknown (a warning), or
/// known to be off the volume (a blocker).
fn data_dir_in_volume(c: &Container, volume: &str) -> Result<String, (String, bool)> {
    let m = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == volume)
        .ok_or_else(|| {
            (
                format!("container {} does not mount volume {volume}", c.name),
                false,
            )
        })?;
    if m.sub_path_expr.as_deref().is_some_and(|e| !e.is_empty()) {
        return Err((
            format!(
                "container {} mounts volume {volume} with subPathExpr {}, which promigrate does not expand",
                c.name,
                m.sub_path_expr.as_deref().unwrap_or_default()
            ),
            false,
        ));
    }
    let tsdb = tsdb_path(c).map_err(|w| (w, false))?;
    let mount = m.mount_path.trim_end_matches('/');
    let tsdb = tsdb.trim_end_matches('/');
    let rel = if tsdb == mount {
        ""
    } else if let Some(r) = crate::relpath::below(tsdb, mount) {
        r
    } else {
        return Err((
            format!(
                "container {}'s data directory {tsdb} (--storage.tsdb.path) is not on volume {volume} (mounted at {}): Prometheus would not find the migrated data there",
                c.name, m.mount_path
            ),
            true,
        ));
    };
    let sub = m.sub_path.clone().unwrap_or_default();
    let joined = [sub.trim_matches('/'), rel.trim_matches('/')]
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/");
    Ok(joined)
}

/// The pod volume that holds the claim of `sts`: a volumeClaimTemplate's name, or a volume
/// naming `claim` directly.
fn data_volume(sts: &StatefulSet, claim: &str) -> Option<String> {
    let spec = sts.spec.as_ref()?;
    let name = sts.metadata.name.as_deref().unwrap_or("");
    for t in spec.volume_claim_templates.iter().flatten() {
        let v = t.metadata.name.as_deref().unwrap_or("");
        if claim.starts_with(&format!("{v}-{name}-")) {
            return Some(v.to_string());
        }
    }
    let pod = spec.template.spec.as_ref()?;
    pod.volumes
        .iter()
        .flatten()
        .find(|v: &&Volume| {
            v.persistent_volume_claim
                .as_ref()
                .is_some_and(|c| c.claim_name == claim)
        })
        .map(|v| v.name.clone())
}

/// The labels and annotations that say a GitOps controller manages an object. Argo CD's
/// older tracking label `app.kubernetes.io/instance` is only a hint (Helm sets it too).
pub fn git_ops(
    object: &str,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Vec<GitOps> {
    const MARKERS: [(&str, &str, bool); 6] = [
        ("argocd.argoproj.io/tracking-id", "Argo CD", true),
        ("argocd.argoproj.io/instance", "Argo CD", false),
        ("kustomize.toolkit.fluxcd.io/name", "Flux", false),
        ("kustomize.toolkit.fluxcd.io/namespace", "Flux", false),
        ("helm.toolkit.fluxcd.io/name", "Flux", false),
        ("helm.toolkit.fluxcd.io/namespace", "Flux", false),
    ];
    let mut out = Vec::new();
    for (key, tool, annotation) in MARKERS {
        let map = if annotation {
            meta.annotations.as_ref()
        } else {
            meta.labels.as_ref()
        };
        if let Some(v) = map.and_then(|m| m.get(key))
            && !out.iter().any(|g: &GitOps| g.tool == tool)
        {
            out.push(GitOps {
                object: object.to_string(),
                tool: tool.to_string(),
                marker: format!(
                    "{} {key}={v}",
                    if annotation { "annotation" } else { "label" }
                ),
                certain: true,
            });
        }
    }
    // Argo CD tracked by this label by default before 3.0; Helm sets it too, but a Helm
    // install also leaves its meta.helm.sh/release-name annotation, which Argo CD's
    // rendering of a chart does not; the operator sets it on what it makes.
    let label = meta
        .labels
        .as_ref()
        .and_then(|l| l.get("app.kubernetes.io/instance"));
    let helm = meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("meta.helm.sh/release-name"));
    let operator_made = meta
        .labels
        .as_ref()
        .and_then(|l| l.get("app.kubernetes.io/managed-by"))
        .is_some_and(|m| m == "prometheus-operator");
    if out.is_empty()
        && let Some(v) = label
        && !helm
        && !operator_made
    {
        out.push(GitOps {
            object: object.to_string(),
            tool: "Argo CD (perhaps)".to_string(),
            marker: format!(
                "label app.kubernetes.io/instance={v}, without Helm's meta.helm.sh/release-name annotation"
            ),
            certain: false,
        });
    }
    out
}

/// The retention of a plain StatefulSet's Prometheus: its flags, unless its configuration
/// file has a `storage.tsdb.retention` section (Prometheus 3.x), which replaces them whole,
/// read when the file is in a ConfigMap or Secret the pod mounts.
async fn plain_retention(
    cluster: &Cluster,
    ns: &str,
    sts_object: &str,
    spec: &PodSpec,
    c: &Container,
) -> Retention {
    let mut r = flag_retention(sts_object, c);
    // The flag, the upstream image's CMD, or Prometheus's default prometheus.yml in its
    // working directory.
    let given = flag(c, &["--config.file"]);
    let path = match (
        &given,
        image_cmd_runs(c) && upstream_image(c.image.as_deref()),
    ) {
        (Some(p), _) => absolute_in(c, p),
        (None, true) => Some("/etc/prometheus/prometheus.yml".to_string()),
        (None, false) => absolute_in(c, "prometheus.yml"),
    };
    let Some(path) = path else {
        r.unknown = Some(format!(
            "where {sts_object} container {} reads its configuration file is not known (no absolute --config.file, and image {} has no working directory promigrate knows): a storage.tsdb.retention section in it would replace the retention flags; check it by hand",
            c.name,
            c.image.as_deref().unwrap_or("(none)")
        ));
        return r;
    };
    match config_file_retention(cluster, ns, spec, c, &path).await {
        // A `retention` section replaces the flags whole: what it leaves out has no limit.
        Ok(Some(cf)) => {
            r.time = cf.time;
            r.time_from = format!("storage.tsdb.retention.time in {}", cf.from);
            r.size = cf.size;
            r.size_from = format!("storage.tsdb.retention.size in {}", cf.from);
            r.percentage = cf.percentage;
            r.default_time = String::new();
        }
        Ok(None) => {}
        Err(why) => {
            r.unknown = Some(format!(
                "the configuration file {path} of {sts_object} could not be read ({why}): a storage.tsdb.retention in it (Prometheus 3.8+) would take precedence over the flags; check it by hand"
            ));
        }
    }
    r
}

/// The `storage.tsdb.retention` section of a configuration file.
struct ConfigRetention {
    from: String,
    time: Option<String>,
    size: Option<String>,
    percentage: Option<f64>,
}

/// The `storage.tsdb.retention` section of the configuration file at `path` in container
/// `c`, read from the ConfigMap or Secret mounted there; `None` when it has none (the flags
/// hold then).
async fn config_file_retention(
    cluster: &Cluster,
    ns: &str,
    spec: &PodSpec,
    c: &Container,
    path: &str,
) -> Result<Option<ConfigRetention>, String> {
    // The mount holding the file, the longest mountPath first.
    let mut mounts: Vec<_> = c.volume_mounts.iter().flatten().collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.mount_path.len()));
    let (m, rel) = mounts
        .into_iter()
        .find_map(|m| {
            Some((
                m,
                crate::relpath::below(path, m.mount_path.trim_end_matches('/'))?,
            ))
        })
        .ok_or_else(|| format!("no volume is mounted at {path}"))?;
    let rel = rel.to_string();
    let rel = match &m.sub_path {
        Some(sp) if !sp.is_empty() => format!("{sp}/{rel}"),
        _ => rel,
    };
    let v = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == m.name)
        .ok_or_else(|| format!("volume {} is not in the pod spec", m.name))?;
    // The key that appears as `rel` in the volume (an `items` entry maps key → path).
    let key_of = |items: Option<&Vec<k8s_openapi::api::core::v1::KeyToPath>>| -> String {
        items
            .and_then(|its| its.iter().find(|i| i.path == rel).map(|i| i.key.clone()))
            .unwrap_or_else(|| rel.clone())
    };
    let (from, text) = if let Some(cm) = &v.config_map {
        let key = key_of(cm.items.as_ref());
        let object = format!("configmap/{ns}/{}", cm.name);
        let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), ns);
        let got = api
            .get(&cm.name)
            .await
            .map_err(|e| format!("{:#}", api_error(cluster, &object, e)))?;
        let text = got
            .data
            .and_then(|d| d.get(&key).cloned())
            .ok_or_else(|| format!("{object} has no key {key}"))?;
        (format!("{object} key {key}"), text)
    } else if let Some(sec) = &v.secret {
        let name = sec.secret_name.clone().unwrap_or_default();
        let key = key_of(sec.items.as_ref());
        let object = format!("secret/{ns}/{name}");
        let api: Api<Secret> = Api::namespaced(cluster.client.clone(), ns);
        let got = api
            .get(&name)
            .await
            .map_err(|e| format!("{:#}", api_error(cluster, &object, e)))?;
        let bytes = got
            .data
            .and_then(|d| d.get(&key).cloned())
            .ok_or_else(|| format!("{object} has no key {key}"))?;
        let text = String::from_utf8(bytes.0)
            .map_err(|_| format!("{object} key {key} is not text (compressed?)"))?;
        (format!("{object} key {key}"), text)
    } else {
        return Err(format!(
            "volume {} is neither a ConfigMap nor a Secret (a file written at run time)",
            m.name
        ));
    };
    let doc: Value = serde_saphyr::from_str(&text)
        .map_err(|e| format!("{from} is not YAML promigrate can read: {e}"))?;
    let r = &doc["storage"]["tsdb"]["retention"];
    if !r.is_object() {
        return Ok(None);
    }
    let s = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    Ok(Some(ConfigRetention {
        from,
        time: s(&r["time"]),
        size: s(&r["size"]),
        percentage: r["percentage"].as_f64().filter(|p| *p > 0.0),
    }))
}

/// The operator's retention: `spec.retention` / `spec.retentionSize`, `24h` when neither
/// (prometheus-operator `RetentionTimeOrDefault`). It renders them as flags for Prometheus
/// before 3.11 (both 0: Prometheus's 15d) and as the configuration file's retention section
/// from 3.11 (0: no limit); `version` is the target's, if known.
fn operator_retention(
    object: &str,
    spec: &Value,
    version: Option<&crate::promversion::PromVersion>,
) -> Retention {
    let s = |k: &str| {
        spec[k]
            .as_str()
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let (time, size) = (s("retention"), s("retentionSize"));
    let in_config = version.is_some_and(|v| *v >= crate::promversion::PromVersion::new(3, 11, 0));
    let defaulted = time.is_none() && size.is_none();
    Retention {
        time_from: if defaulted {
            format!(
                "the operator's default, as neither spec.retention nor spec.retentionSize of {object} is set"
            )
        } else {
            format!("spec.retention of {object}")
        },
        time: if defaulted {
            Some(OPERATOR_DEFAULT_RETENTION.into())
        } else {
            time
        },
        size,
        size_from: format!("spec.retentionSize of {object}"),
        default_time: if in_config {
            String::new()
        } else {
            PROMETHEUS_DEFAULT_RETENTION.into()
        },
        percentage: None,
        unknown: None,
    }
}

/// The retention flags in a container's args, if it has any: what an operator's
/// StatefulSet runs with now (before 3.11, or `spec.additionalArgs`), which a paused
/// resource does not update.
fn args_retention(sts_object: &str, c: &Container) -> Option<Retention> {
    Some(flag_retention(sts_object, c)).filter(|r| r.time.is_some() || r.size.is_some())
}

/// The retention flags in a container's command and args (neither set, or both 0:
/// Prometheus's 15d).
fn flag_retention(sts_object: &str, c: &Container) -> Retention {
    let from = |f: &str| {
        format!(
            "--storage.tsdb.retention.{f} in {sts_object} container {} args",
            c.name
        )
    };
    Retention {
        time: flag(
            c,
            &["--storage.tsdb.retention.time", "--storage.tsdb.retention"],
        ),
        time_from: from("time"),
        size: flag(c, &["--storage.tsdb.retention.size"]),
        size_from: from("size"),
        default_time: PROMETHEUS_DEFAULT_RETENTION.into(),
        percentage: None,
        unknown: None,
    }
}

/// Reads what the target server runs with (read-only). `Ok(None)` when the plan names
/// neither a StatefulSet nor a Prometheus resource, or they do not exist (the preflight
/// reports that).
pub async fn read(cluster: &Cluster, k: &KubeTarget) -> anyhow::Result<Option<TargetServer>> {
    let ns = &k.namespace;
    let mut server = TargetServer::default();
    let mut prom_spec = None;
    if let Some(name) = &k.prometheus {
        let object = format!("prometheus/{ns}/{name}");
        let api: Api<DynamicObject> =
            Api::namespaced_with(cluster.client.clone(), ns, &prometheus_resource());
        let Some(p) = api
            .get_opt(name)
            .await
            .map_err(|e| api_error(cluster, &object, e))?
        else {
            return Ok(None);
        };
        let spec = p.data["spec"].clone();
        server.git_ops.extend(git_ops(&object, &p.metadata));
        let (paused, recorded) = paused_state(&p);
        server.paused = Some(paused_words(paused).to_string());
        server.recorded_paused = recorded.map(|v| paused_words(v).to_string());
        if let Some(v) = spec["version"].as_str().filter(|v| !v.is_empty()) {
            match v.parse::<crate::promversion::PromVersion>() {
                Ok(v) => {
                    server.version = Some(v);
                    server.version_from = format!("spec.version of {object}");
                }
                Err(e) => server.version_from = format!("spec.version of {object}: {e}"),
            }
        }
        server.from = object;
        prom_spec = Some(spec);
    }
    if let Some(spec) = &prom_spec {
        server.retention = operator_retention(&server.from, spec, server.version.as_ref());
    }
    let Some(sts_name) = &k.stateful_set else {
        return Ok(k.prometheus.as_ref().map(|_| server));
    };
    let sts_object = format!("statefulset/{ns}/{sts_name}");
    let api: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), ns);
    let Some(sts) = api
        .get_opt(sts_name)
        .await
        .map_err(|e| api_error(cluster, &sts_object, e))?
    else {
        return Ok(prom_spec.map(|_| server));
    };
    server.git_ops.extend(git_ops(&sts_object, &sts.metadata));
    if server.from.is_empty() {
        server.from = sts_object.clone();
    }
    let Some(pod) = sts.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else {
        return Ok(Some(server));
    };
    let Some(c) = prometheus_container(pod) else {
        return Ok(Some(server));
    };
    server.container = c.name.clone();
    server.image = c.image.clone();
    // What runs is the image; the operator's spec.version is the fall-back (an image pinned
    // by digest says no version).
    match c
        .image
        .as_deref()
        .map(crate::promversion::PromVersion::from_image)
    {
        Some(Ok(v)) => {
            server.version = Some(v);
            server.version_from = format!("the image tag of {sts_object} container {}", c.name);
        }
        Some(Err(e)) if server.version.is_none() => server.version_from = e.to_string(),
        None if server.version.is_none() => {
            server.version_from = format!("{sts_object} container {} names no image", c.name);
        }
        _ => {}
    }
    server.owner = pod_owner(pod, c, c.image.as_deref());
    server.volume = data_volume(&sts, &k.persistent_volume_claim);
    match server.volume.as_deref().map(|v| data_dir_in_volume(c, v)) {
        Some(Ok(sp)) => server.sub_path = Some(sp),
        Some(Err((why, off_volume))) => {
            server.sub_path_unknown = Some(why);
            server.data_off_volume = off_volume;
        }
        None => {}
    }
    match &prom_spec {
        None => server.retention = plain_retention(cluster, ns, &sts_object, pod, c).await,
        Some(spec) => {
            server.retention = operator_retention(&server.from, spec, server.version.as_ref());
            server.running_retention = args_retention(&sts_object, c);
        }
    }
    Ok(Some(server))
}

/// Fills in what a Kubernetes target's plan leaves out (see [`crate::plan::file::Derive`]).
pub async fn derive(
    cluster: &Cluster,
    k: &KubeTarget,
    wants: Wants,
) -> anyhow::Result<ClusterFacts> {
    let ns = &k.namespace;
    let mut k = k.clone();
    let mut derived = Vec::new();
    if let Some(name) = &k.prometheus {
        let object = format!("prometheus/{ns}/{name}");
        let api: Api<DynamicObject> =
            Api::namespaced_with(cluster.client.clone(), ns, &prometheus_resource());
        let p = api
            .get_opt(name)
            .await
            .map_err(|e| api_error(cluster, &object, e))?
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{object} does not exist in {}: check target.kubernetes.prometheus and .namespace (kubectl get prometheus -A)",
                    cluster.describe()
                )
            })?;
        let sts = operator_stateful_set(name, k.shard);
        if k.persistent_volume_claim.is_empty() {
            let spec = &p.data["spec"];
            let volume = spec["storage"]["volumeClaimTemplate"]["metadata"]["name"]
                .as_str()
                .filter(|v| !v.is_empty())
                .map_or_else(|| format!("prometheus-{name}-db"), str::to_string);
            if spec["storage"]["volumeClaimTemplate"].is_null() {
                anyhow::bail!(
                    "{object} has no spec.storage.volumeClaimTemplate: its data is on an emptyDir or a volume promigrate cannot name; give target.kubernetes.persistentVolumeClaim"
                );
            }
            k.persistent_volume_claim = format!("{volume}-{sts}-{}", k.replica);
            derived.push(format!(
                "persistentVolumeClaim {} (replica {} of statefulset/{ns}/{sts})",
                k.persistent_volume_claim, k.replica
            ));
        }
        derived.push(format!(
            "statefulSet {sts} (made by the operator for {object})"
        ));
        k.stateful_set = Some(sts);
    }
    let object = format!("persistentvolumeclaim/{ns}/{}", k.persistent_volume_claim);
    if k.persistent_volume.is_empty() {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), ns);
        let pvc = api
            .get_opt(&k.persistent_volume_claim)
            .await
            .map_err(|e| api_error(cluster, &object, e))?;
        k.persistent_volume = pvc
            .and_then(|c| c.spec.and_then(|s| s.volume_name))
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{object} does not exist or is not bound, so its PersistentVolume is not known: give target.kubernetes.persistentVolume"
                )
            })?;
        derived.push(format!(
            "persistentVolume {} (bound to {object})",
            k.persistent_volume
        ));
    }
    let mut facts = ClusterFacts {
        stateful_set: k.stateful_set.clone(),
        persistent_volume_claim: k.persistent_volume_claim.clone(),
        persistent_volume: k.persistent_volume.clone(),
        ..Default::default()
    };
    if wants.owner || wants.sub_path {
        let server = read(cluster, &k)
            .await?
            .filter(|s| !s.container.is_empty())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "statefulset/{ns}/{} does not exist (yet) or has no container promigrate recognises as Prometheus, so the pod's securityContext and subPath are not known",
                    k.stateful_set.as_deref().unwrap_or("?")
                )
            })?;
        if wants.owner
            && let (Some(uid), Some(gid)) = (server.owner.uid, server.owner.gid)
        {
            facts.owner = Some(Owner { uid, gid });
            derived.push(format!(
                "securityContext runAsUser {uid} ({}), fsGroup {gid} ({})",
                server.owner.uid_from, server.owner.gid_from
            ));
        }
        if wants.sub_path {
            let sp = server.sub_path.clone().ok_or_else(|| {
                anyhow::anyhow!(
                    "where container {} of {} keeps its TSDB in the volume of {object} is not known: {}",
                    server.container,
                    server.from,
                    server
                        .sub_path_unknown
                        .as_deref()
                        .unwrap_or("it does not mount that volume")
                )
            })?;
            derived.push(if sp.is_empty() {
                format!(
                    "subPath: none (container {} keeps its TSDB at the volume's root)",
                    server.container
                )
            } else {
                format!(
                    "subPath {sp} (container {}'s volumeMount and --storage.tsdb.path)",
                    server.container
                )
            });
            facts.sub_path = Some((!sp.is_empty()).then(|| PathBuf::from(sp)));
        }
    }
    facts.derived = derived;
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_split_into_repository_and_tag() {
        assert_eq!(
            split_image("quay.io/prometheus/prometheus:v3.5.0"),
            ("quay.io/prometheus/prometheus", Some("v3.5.0"))
        );
        assert_eq!(
            split_image("registry:5000/x/prometheus:v2.53.0@sha256:abc"),
            ("registry:5000/x/prometheus", Some("v2.53.0"))
        );
        assert_eq!(
            split_image("registry:5000/x/prometheus"),
            ("registry:5000/x/prometheus", None)
        );
        assert_eq!(
            split_image("prom/prometheus@sha256:abc"),
            ("prom/prometheus", None)
        );
    }

    #[test]
    fn the_upstream_images_default_users_are_known_others_are_not() {
        assert_eq!(
            image_default_user("quay.io/prometheus/prometheus:v3.5.0"),
            Some((65534, 65534))
        );
        assert_eq!(
            image_default_user("prom/prometheus:v3.5.0-distroless"),
            Some((65532, 65532))
        );
        assert_eq!(
            image_default_user("docker.io/prom/prometheus"),
            Some((65534, 65534))
        );
        assert_eq!(image_default_user("example.com/my/prometheus:v3"), None);
        assert_eq!(
            image_default_user("quay.io/prometheus/prometheus@sha256:abc"),
            None
        );
    }

    fn pod(json: Value) -> PodSpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn the_owner_comes_from_the_container_then_the_pod_then_the_image() {
        let p = pod(serde_json::json!({
            "securityContext": {"runAsUser": 1000, "fsGroup": 2000},
            "containers": [{"name": "prometheus", "securityContext": {"runAsUser": 1001}}]}));
        let o = pod_owner(&p, &p.containers[0], Some("prom/prometheus:v3.5.0"));
        assert_eq!((o.uid, o.gid), (Some(1001), Some(2000)));
        assert!(
            o.uid_from.contains("container prometheus"),
            "{}",
            o.uid_from
        );
        let p = pod(serde_json::json!({"containers": [{"name": "prometheus"}]}));
        let o = pod_owner(
            &p,
            &p.containers[0],
            Some("quay.io/prometheus/prometheus:v3.5.0"),
        );
        assert_eq!((o.uid, o.gid), (Some(65534), Some(65534)));
        let o = pod_owner(&p, &p.containers[0], Some("mine/prom:1"));
        assert_eq!((o.uid, o.gid), (None, None));
        let p = pod(
            serde_json::json!({"securityContext": {"runAsUser": 5, "runAsGroup": 6},
            "containers": [{"name": "prometheus"}]}),
        );
        let o = pod_owner(&p, &p.containers[0], None);
        assert_eq!((o.uid, o.gid), (Some(5), Some(6)));
        assert!(o.gid_from.contains("no fsGroup"), "{}", o.gid_from);
    }

    #[test]
    fn git_ops_markers_are_found_and_helm_alone_is_not_one() {
        let meta = |labels: Value, annotations: Value| {
            serde_json::from_value::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>(
                serde_json::json!({"labels": labels, "annotations": annotations}),
            )
            .unwrap()
        };
        let helm = meta(
            serde_json::json!({"app.kubernetes.io/instance": "kps", "app.kubernetes.io/managed-by": "Helm"}),
            serde_json::json!({}),
        );
        let g = git_ops("x", &helm);
        assert!(g.len() == 1 && !g[0].certain, "{g:?}");
        let helm_installed = meta(
            serde_json::json!({"app.kubernetes.io/instance": "kps"}),
            serde_json::json!({"meta.helm.sh/release-name": "kps"}),
        );
        assert!(git_ops("x", &helm_installed).is_empty());
        let argo = meta(
            serde_json::json!({}),
            serde_json::json!({"argocd.argoproj.io/tracking-id": "kps:apps/StatefulSet:monitoring/p"}),
        );
        assert_eq!(git_ops("x", &argo)[0].tool, "Argo CD");
        let flux = meta(
            serde_json::json!({"kustomize.toolkit.fluxcd.io/name": "infra", "kustomize.toolkit.fluxcd.io/namespace": "flux-system"}),
            serde_json::json!({}),
        );
        let f = git_ops("x", &flux);
        assert_eq!(f.len(), 1);
        assert!(
            f[0].marker
                .contains("kustomize.toolkit.fluxcd.io/name=infra")
        );
    }

    #[test]
    fn prometheus_durations_and_sizes() {
        assert_eq!(prometheus_duration_ms("15d"), Some(15 * 86_400_000));
        assert_eq!(
            prometheus_duration_ms("1y2w"),
            Some((365 + 14) * 86_400_000)
        );
        assert_eq!(prometheus_duration_ms("1h30m"), Some(5_400_000));
        assert_eq!(prometheus_duration_ms("500ms"), Some(500));
        assert_eq!(prometheus_duration_ms("0"), Some(0));
        for bad in ["", "15", "1.5d", "d", "2h1d", "1x"] {
            assert_eq!(prometheus_duration_ms(bad), None, "{bad}");
        }
        assert_eq!(prometheus_size_bytes("512MB"), Some(512 << 20));
        assert_eq!(prometheus_size_bytes("1GB"), Some(1 << 30));
        assert_eq!(prometheus_size_bytes("1.5GB"), Some(3 << 29));
        assert_eq!(prometheus_size_bytes("512"), None);
        assert_eq!(prometheus_size_bytes("0"), Some(0));
        assert_eq!(prometheus_size_bytes("10XB"), None);
    }

    #[test]
    fn retention_by_time_by_size_and_by_default() {
        let day = 86_400_000i64;
        // Three blocks ending 0, 10 and 20 days before the newest, 1 GiB each.
        let blocks = [(0, 1u64 << 30), (10 * day, 1 << 30), (20 * day, 1 << 30)];
        let with = |time: Option<&str>, size: Option<&str>| Retention {
            time: time.map(String::from),
            time_from: "--storage.tsdb.retention.time in args".into(),
            size: size.map(String::from),
            size_from: "--storage.tsdb.retention.size in args".into(),
            default_time: PROMETHEUS_DEFAULT_RETENTION.into(),
            percentage: None,
            unknown: None,
        };
        let check = |r: Retention, head| retention_check(&r, &blocks, head, Some(8 << 30), 0);
        assert_eq!(check(with(Some("30d"), None), 0), Ok(None));
        let b = check(with(Some("15d"), None), 0).unwrap().unwrap();
        assert!(b.contains("delete 1 of the 3") && b.contains("15d"), "{b}");
        // Exactly the retention apart: Prometheus deletes it too (>=).
        let b = check(with(Some("10d"), None), 0).unwrap().unwrap();
        assert!(b.contains("delete 2 of the 3"), "{b}");
        // 0 means no limit from this setting: with no size either, the default.
        let b = check(with(Some("0s"), None), 0).unwrap().unwrap();
        assert!(b.contains("default retention of 15d"), "{b}");
        // A value from the environment is not known here: a warning.
        assert!(check(with(Some("$(RETENTION)"), None), 0).is_err());
        assert!(check(with(Some("fortnight"), None), 0).is_err());
        // The default when nothing is set; the operator's is 24h.
        let b = check(with(None, None), 0).unwrap().unwrap();
        assert!(b.contains("default retention of 15d"), "{b}");
        let op = Retention {
            default_time: OPERATOR_DEFAULT_RETENTION.into(),
            ..with(None, None)
        };
        let b = check(op, 0).unwrap().unwrap();
        assert!(
            b.contains("default retention of 24h") && b.contains("delete 2 of the 3"),
            "{b}"
        );
        // Only a size: blocks and WAL must fit.
        let b = check(with(None, Some("2GB")), 1 << 20).unwrap().unwrap();
        assert!(b.contains("delete 2 of the 3") && b.contains("2GB"), "{b}");
        assert_eq!(check(with(None, Some("4GB")), 1 << 20), Ok(None));
        // A configuration file's section with no limits: none (the flags' default is gone).
        let none = Retention {
            default_time: String::new(),
            ..with(None, None)
        };
        assert_eq!(check(none, 0), Ok(None));
        // 30% of the 8 GiB volume: 2.4 GiB for 3 GiB of blocks; it replaces the size.
        let pct = Retention {
            percentage: Some(30.0),
            ..with(None, Some("100GB"))
        };
        let b = check(pct.clone(), 0).unwrap().unwrap();
        assert!(b.contains("delete 1 of the 3") && b.contains("30%"), "{b}");
        assert!(retention_check(&pct, &blocks, 0, None, 0).is_err());
        // Measured from now when the newest block ends before it: 5 days later, 15d
        // deletes the block 10 days before the newest too.
        let later = retention_check(&with(Some("15d"), None), &blocks, 0, None, 25 * day)
            .unwrap()
            .unwrap();
        assert!(later.contains("delete 2 of the 3"), "{later}");
    }

    #[test]
    fn an_older_target_is_a_blocker_an_unknown_version_a_warning() {
        use crate::promversion::PromVersion;
        let k = crate::k8s::test_target();
        let server = |v: Option<PromVersion>| TargetServer {
            from: "statefulset/monitoring/prom".into(),
            container: "prometheus".into(),
            version: v,
            version_from: "the image tag".into(),
            owner: PodOwner {
                uid: Some(1000),
                gid: Some(2000),
                ..Default::default()
            },
            sub_path: Some(String::new()),
            ..Default::default()
        };
        let expect = |src: Option<PromVersion>| Expect {
            uid: 1000,
            gid: 2000,
            source_version: src,
            source_version_how: "plan".into(),
            ..Default::default()
        };
        let v = |a, b, c| Some(PromVersion::new(a, b, c));
        let f = cross_check(&k, &server(v(2, 53, 0)), &expect(v(3, 5, 0)));
        assert!(
            f.blockers.len() == 1 && f.blockers[0].contains("2.55 or newer"),
            "{f:?}"
        );
        let f = cross_check(&k, &server(v(2, 41, 0)), &expect(v(2, 42, 0)));
        assert!(
            f.blockers.len() == 1 && f.blockers[0].contains("older than the source's 2.42.0"),
            "{f:?}"
        );
        let f = cross_check(&k, &server(v(3, 5, 0)), &expect(v(3, 5, 0)));
        assert!(f.blockers.is_empty(), "{f:?}");
        let f = cross_check(&k, &server(None), &expect(v(3, 5, 0)));
        assert!(
            f.blockers.is_empty()
                && f.warnings
                    .iter()
                    .any(|w| w.contains("version is not known")),
            "{f:?}"
        );
        let f = cross_check(&k, &server(v(3, 5, 0)), &expect(None));
        assert!(
            f.blockers.is_empty()
                && f.warnings
                    .iter()
                    .any(|w| w.contains("source.prometheusVersion")),
            "{f:?}"
        );
    }

    #[test]
    fn operator_names() {
        assert_eq!(operator_stateful_set("k8s", 0), "prometheus-k8s");
        assert_eq!(operator_stateful_set("k8s", 2), "prometheus-k8s-shard-2");
        let v = |a, b| crate::promversion::PromVersion::new(3, a, b);
        let r = operator_retention("prometheus/m/k8s", &serde_json::json!({}), None);
        assert_eq!((r.time.as_deref(), r.size), (Some("24h"), None));
        assert!(
            r.time_from.contains("the operator's default"),
            "{}",
            r.time_from
        );
        let r = operator_retention(
            "p",
            &serde_json::json!({"retention": "180d", "retentionSize": ""}),
            None,
        );
        assert_eq!((r.time.as_deref(), r.size), (Some("180d"), None));
        // 0s: a flag of 0 before 3.11 (Prometheus's 15d), no limit from 3.11.
        let r = operator_retention("p", &serde_json::json!({"retention": "0s"}), Some(&v(5, 0)));
        assert_eq!(r.default_time, "15d");
        let r = operator_retention(
            "p",
            &serde_json::json!({"retention": "0s"}),
            Some(&v(11, 0)),
        );
        assert_eq!(r.default_time, "");
    }
}

/// A Prometheus duration (`15d`, `1y2w`, `36h`, `90m`, `500ms`; model.ParseDuration: units
/// y = 365d, w, d, h, m, s, ms, each at most once, largest first) in milliseconds.
pub fn prometheus_duration_ms(s: &str) -> Option<i64> {
    const UNITS: [(&str, i64); 7] = [
        ("y", 365 * 86_400_000),
        ("w", 7 * 86_400_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ];
    if s.is_empty() || s == "0" {
        return (s == "0").then_some(0);
    }
    let mut rest = s;
    let mut total: i64 = 0;
    let mut next_unit = 0;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let n: i64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        // "ms" before "m": the longest unit name that matches.
        let (i, (u, ms)) = UNITS
            .iter()
            .enumerate()
            .skip(next_unit)
            .filter(|(_, (u, _))| rest.starts_with(u))
            .max_by_key(|(_, (u, _))| u.len())?;
        total = total.checked_add(n.checked_mul(*ms)?)?;
        rest = &rest[u.len()..];
        next_unit = i + 1;
    }
    Some(total)
}

/// A Prometheus size (`512MB`, `1.5GB`, `100GiB`; units.ParseBase2Bytes: KB = 1024) in
/// bytes; `0` alone is 0, another number needs a unit.
pub fn prometheus_size_bytes(s: &str) -> Option<u64> {
    if s == "0" {
        return Some(0);
    }
    let digits = s
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .count();
    let n: f64 = s[..digits].parse().ok()?;
    let mult: u64 = match &s[digits..] {
        "B" => 1,
        "KB" | "KiB" => 1 << 10,
        "MB" | "MiB" => 1 << 20,
        "GB" | "GiB" => 1 << 30,
        "TB" | "TiB" => 1 << 40,
        "PB" | "PiB" => 1 << 50,
        "EB" | "EiB" => 1 << 60,
        _ => return None,
    };
    let v = n * mult as f64;
    (v.is_finite() && v >= 0.0 && v < u64::MAX as f64).then_some(v as u64)
}

/// What the plan and the data say, to hold the target server against.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    /// The plan's owner.
    pub uid: u32,
    /// The plan's group.
    pub gid: u32,
    /// The plan's subPath (`""`: the volume's root).
    pub sub_path: String,
    /// The migrated blocks: (maxTime ms, bytes).
    pub blocks: Vec<(i64, u64)>,
    /// The WAL and head chunks (what Prometheus counts besides blocks), bytes.
    pub head_bytes: u64,
    /// The volume's size (the PV's capacity), for a retention percentage.
    pub capacity: Option<u64>,
    /// Now, in ms: Prometheus's newest block ends about now hours after it starts (its first
    /// head compaction), so retention counts from the later of this and the newest block.
    pub now_ms: i64,
    /// The version of the Prometheus that wrote the source data, and how it was learned (or
    /// why not).
    pub source_version: Option<crate::promversion::PromVersion>,
    /// How the source version was learned, or why it was not.
    pub source_version_how: String,
}

/// The findings of [`cross_check`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct Findings {
    /// What makes the cutover fail.
    pub blockers: Vec<String>,
    /// What to know.
    pub warnings: Vec<String>,
}

/// Holds the target server against the plan and the data: the owner, the subPath, the
/// retention, GitOps management. Pure.
pub fn cross_check(k: &KubeTarget, s: &TargetServer, e: &Expect) -> Findings {
    let mut f = Findings::default();
    let whose = if s.container.is_empty() {
        s.from.clone()
    } else {
        format!("{} (container {})", s.from, s.container)
    };
    // Owner: a uid that differs is a blocker on its own; the group when it is known.
    let uid_differs = s.owner.uid.is_some_and(|u| u != e.uid);
    let gid_differs = s.owner.gid.is_some_and(|g| g != e.gid);
    if uid_differs || gid_differs {
        let said = |v: Option<u32>| v.map_or("?".to_string(), |v| v.to_string());
        f.blockers.push(format!(
            "the plan's securityContext (runAsUser {}, fsGroup {}) differs from the pod's: {whose} runs as uid {} ({}) with group {} ({}). Prometheus would fail with \"permission denied\" on the migrated files: set target.securityContext to the pod's{} (or leave it out to take the pod's)",
            e.uid,
            e.gid,
            said(s.owner.uid),
            s.owner.uid_from,
            said(s.owner.gid),
            s.owner.gid_from,
            match (s.owner.uid, s.owner.gid) {
                (Some(u), Some(g)) => format!(", runAsUser: {u}, fsGroup: {g}"),
                _ => String::new(),
            }
        ));
    } else if (s.owner.uid.is_none() || s.owner.gid.is_none()) && !s.container.is_empty() {
        f.warnings.push(format!(
            "which {} {whose} runs as is not known ({}): make sure the plan's runAsUser {} and fsGroup {} are the pod's",
            match (s.owner.uid, s.owner.gid) {
                (None, None) => "uid and gid",
                (None, _) => "uid",
                _ => "group",
            },
            if s.owner.uid.is_none() { &s.owner.uid_from } else { &s.owner.gid_from },
            e.uid,
            e.gid
        ));
    }
    // Where Prometheus looks: the mount's subPath and --storage.tsdb.path below the mount.
    match &s.sub_path {
        Some(sp) if sp.trim_end_matches('/') != e.sub_path.trim_end_matches('/') => {
            let words = |p: &str| {
                if p.is_empty() {
                    "none (the volume's root)".to_string()
                } else {
                    format!("`{p}`")
                }
            };
            f.blockers.push(format!(
                "the plan's subPath is {} but {whose} keeps its TSDB in subPath {} of the volume (its volumeMount's subPath and --storage.tsdb.path): Prometheus would not find the migrated data. Set target.subPath to {} (or leave it out to take the pod's)",
                words(&e.sub_path),
                words(sp),
                if sp.is_empty() { "nothing (remove it)".to_string() } else { format!("`{sp}`") }
            ));
        }
        Some(_) => {}
        None => match (&s.sub_path_unknown, s.data_off_volume) {
            (Some(why), true) => f.blockers.push(why.clone()),
            (Some(why), false) => f.warnings.push(format!(
                "where {whose} keeps its TSDB in the volume is not known ({why}): the subPath is not checked"
            )),
            (None, _) if !s.container.is_empty() => f.warnings.push(format!(
                "{whose} does not mount the volume of persistentvolumeclaim/{}/{} (or promigrate cannot tell which volume it is): the subPath is not checked",
                k.namespace, k.persistent_volume_claim
            )),
            _ => {}
        },
    }
    if s.container.is_empty() && k.stateful_set.is_some() && !s.from.is_empty() {
        f.warnings.push(format!(
            "no container of {} is recognisably Prometheus (named prometheus, with --storage.tsdb.* arguments, or a prometheus image): owner, subPath, retention and version are not checked",
            s.from
        ));
    }
    // Version.
    let v3_floor = crate::promversion::PromVersion::new(2, 55, 0);
    match (&s.version, &e.source_version) {
        (Some(t), Some(src)) if t < src => f.blockers.push(format!(
            "the target Prometheus is {t} ({}), older than the source's {src} ({}): {}. Use an image of {src} or newer (the image, or spec.version for the operator)",
            s.version_from,
            e.source_version_how,
            if src.major() >= 3 && *t < v3_floor {
                "data written by Prometheus 3 can only be read by 2.55 or newer".to_string()
            } else {
                "an older server may not read what a newer one wrote (chunk encodings, WAL records)".to_string()
            }
        )),
        (Some(_), Some(_)) => {}
        (None, src) if !s.container.is_empty() || k.prometheus.is_some() => f.warnings.push(format!(
            "the target Prometheus's version is not known ({}): make sure it is not older than the source's{}",
            s.version_from,
            src.as_ref().map_or(String::new(), |v| format!(" ({v})"))
        )),
        (Some(t), None) => f.warnings.push(format!(
            "which Prometheus wrote the source data is not known ({}): the target's {t} is not checked against it; set source.prometheusVersion",
            e.source_version_how
        )),
        _ => {}
    }
    // Retention.
    if let Some(w) = &s.retention.unknown {
        f.warnings.push(w.clone());
    }
    for r in std::iter::once(&s.retention).chain(&s.running_retention) {
        match retention_check(r, &e.blocks, e.head_bytes, e.capacity, e.now_ms) {
            Ok(Some(b)) => f.blockers.push(b),
            Ok(None) => {}
            Err(w) => f.warnings.push(w),
        }
    }
    // GitOps.
    for g in &s.git_ops {
        let fix = if g.tool == "Flux" {
            "suspend its Kustomization or HelmRelease (flux suspend ...)"
        } else {
            "disable self-heal (automated sync) of its Application"
        };
        let msg = format!(
            "{} is managed by {} ({}): it would undo the scale-down{}. {fix}, then set target.kubernetes.acceptGitOps: true and rerun; resume it after the cutover",
            g.object,
            g.tool,
            g.marker,
            if k.prometheus.is_some() {
                " and the pause"
            } else {
                ""
            }
        );
        if k.accept_git_ops {
            f.warnings
                .push(format!("{msg} (accepted: acceptGitOps is true)"));
        } else if !g.certain {
            f.warnings.push(format!(
                "{msg}. Argo CD tracked applications by this label before 3.0; if it does not manage {}, ignore this",
                g.object
            ));
        } else {
            f.blockers.push(msg);
        }
    }
    f
}

/// Whether the retention would delete migrated blocks at the server's first start:
/// `Ok(Some(blocker))` naming the setting, how many blocks and bytes, and what to change;
/// `Err(warning)` when a value cannot be read.
pub fn retention_check(
    r: &Retention,
    blocks: &[(i64, u64)],
    head_bytes: u64,
    capacity: Option<u64>,
    now_ms: i64,
) -> Result<Option<String>, String> {
    // Values Kubernetes fills in from the environment ($(VAR)) are not known here.
    for (v, from) in [(&r.time, &r.time_from), (&r.size, &r.size_from)] {
        if let Some(v) = v
            && v.contains("$(")
        {
            return Err(format!(
                "the retention {v} ({from}) comes from the environment: promigrate cannot check it; make sure it keeps the migrated data"
            ));
        }
    }
    let time_ms = match r.time.as_deref() {
        None => None,
        Some(t) => Some(prometheus_duration_ms(t).ok_or_else(|| {
            format!("the retention time `{t}` ({}) is not a Prometheus duration promigrate can read (e.g. 15d, 26w): check it", r.time_from)
        })?),
    };
    let mut size = match r.size.as_deref() {
        None => None,
        Some(z) => Some(prometheus_size_bytes(z).ok_or_else(|| {
            format!("the retention size `{z}` ({}) is not a size promigrate can read (e.g. 512MB, 100GB): check it", r.size_from)
        })?),
    };
    let mut size_words = format!(
        "a retention size of {} ({})",
        r.size.clone().unwrap_or_default(),
        r.size_from
    );
    // A percentage of the volume replaces the size limit.
    if let Some(pct) = r.percentage {
        let from = r.size_from.replace(".size", ".percentage");
        let Some(cap) = capacity else {
            return Err(format!(
                "the retention percentage {pct}% ({from}) depends on the volume's size, which promigrate could not read: check it"
            ));
        };
        size = Some((cap as f64 * pct / 100.0) as u64);
        size_words = format!(
            "a retention percentage of {pct}% ({from}) of the {} volume",
            crate::units::bytes(cap)
        );
    }
    // Neither set, or both 0: the default time limit.
    let (time_ms, time_words) = match (time_ms.filter(|t| *t > 0), size.filter(|s| *s > 0)) {
        (None, None) if r.default_time.is_empty() => (None, String::new()),
        (None, None) => (
            prometheus_duration_ms(&r.default_time),
            format!(
                "the default retention of {} (neither {} nor {} is set)",
                r.default_time,
                r.time_from.split(" in ").next().unwrap_or(&r.time_from),
                r.size_from.split(" in ").next().unwrap_or(&r.size_from)
            ),
        ),
        (t, _) => (
            t,
            format!(
                "a retention time of {} ({})",
                r.time.clone().unwrap_or_default(),
                r.time_from
            ),
        ),
    };
    let mut sorted: Vec<(i64, u64)> = blocks.to_vec();
    sorted.sort();
    let total: u64 = sorted.iter().map(|b| b.1).sum();
    let Some(newest) = sorted.last().map(|b| b.0.max(now_ms)) else {
        return Ok(None);
    };
    let mut deleted: Vec<(i64, u64)> = Vec::new();
    let mut why = String::new();
    if let Some(ms) = time_ms.filter(|ms| *ms > 0) {
        // Prometheus deletes a block once newest maxTime - its maxTime >= the limit.
        deleted = sorted
            .iter()
            .copied()
            .filter(|b| newest - b.0 >= ms)
            .collect();
        if !deleted.is_empty() {
            why = time_words;
        }
    }
    if let Some(limit) = size.filter(|s| *s > 0) {
        // Oldest blocks go until the blocks and the WAL fit.
        let mut left = total + head_bytes;
        let mut by_size = Vec::new();
        for b in &sorted {
            if left <= limit {
                break;
            }
            left -= b.1;
            by_size.push(*b);
        }
        if by_size.len() > deleted.len() {
            deleted = by_size;
            why = size_words;
        }
    }
    if deleted.is_empty() {
        return Ok(None);
    }
    let bytes: u64 = deleted.iter().map(|b| b.1).sum();
    Ok(Some(format!(
        "the target Prometheus runs with {why}: at its first start it would delete {} of the {} migrated blocks ({} of {}), the oldest. Raise it there (or migrate less: transfer.timeRange with transfer.acceptPartialSelection)",
        deleted.len(),
        sorted.len(),
        crate::units::bytes(bytes),
        crate::units::bytes(total)
    )))
}
