//! The plan file (`kind: Migration`, `apiVersion: promigrate/v1`): its model, parsing and
//! validation. Field names are a contract. Unknown fields are rejected, and every error names
//! the field path and the line. [`load`] resolves a file into [`Migration`], the plain settings
//! the rest of the tool works from.

use std::num::NonZeroUsize;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::exit::InvalidInput;
use crate::fsutil::expand_home;
use crate::perms::Owner;
use crate::units::Rate;

/// The only `apiVersion` this release understands.
pub const API_VERSION: &str = "promigrate/v1";

/// The top level of a plan file.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PlanFile {
    /// Must be `promigrate/v1`.
    #[schemars(schema_with = "api_version_schema")]
    pub api_version: ApiVersion,
    /// Must be `Migration`.
    #[schemars(schema_with = "kind_schema")]
    pub kind: Kind,
    /// Names the migration; run records go to `migrations/<name>/`.
    pub metadata: Metadata,
    /// Where the TSDB comes from.
    pub source: Source,
    /// Where the TSDB goes (one volume).
    #[serde(default)]
    #[schemars(with = "Option<Target>")]
    pub target: Option<Spanned<Target>>,
    /// Or several volumes (an HA pair): the source is read once and written to each.
    #[serde(default)]
    #[schemars(with = "Option<Vec<Target>>")]
    pub targets: Option<Spanned<Vec<Target>>>,
    /// How it is copied (all optional).
    #[serde(default)]
    pub transfer: Transfer,
    /// Where run results are reported (all optional).
    #[serde(default)]
    pub report: Report,
}

/// `report`: where run results go besides the run record.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Report {
    /// Push each apply's and verify's metrics to a Pushgateway.
    #[serde(default)]
    pub pushgateway: Option<PushgatewayConfig>,
}

/// `report.pushgateway`. Relative file paths are taken relative to the plan file's directory
/// and `~` is expanded; the files are read when the plan is loaded.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PushgatewayConfig {
    /// Base URL, e.g. `http://pushgateway.monitoring:9091` or `https://my-gtw:443`.
    pub url: String,
    /// PEM file of the CA(s) an `https://` gateway's certificate must chain to; the system
    /// trust store when absent.
    #[serde(default)]
    #[schemars(with = "Option<PathBuf>")]
    pub ca_file: Option<Spanned<PathBuf>>,
    /// HTTP basic auth. Not with `bearerTokenFile`.
    #[serde(default)]
    pub basic_auth: Option<BasicAuth>,
    /// File holding a token sent as `Authorization: Bearer <token>`. Not with `basicAuth`.
    #[serde(default)]
    #[schemars(with = "Option<PathBuf>")]
    pub bearer_token_file: Option<Spanned<PathBuf>>,
}

/// `report.pushgateway.basicAuth`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BasicAuth {
    /// User name (no `:`).
    #[schemars(with = "String")]
    pub username: Spanned<String>,
    /// File holding the password (a trailing newline is ignored). Never logged.
    #[schemars(with = "PathBuf")]
    pub password_file: Spanned<PathBuf>,
}

fn api_version_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "const": API_VERSION})
}

fn kind_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "const": "Migration"})
}

/// How `transfer.bwlimit` is written: `200M`, `1.5`, or a number (KiB/s).
#[allow(dead_code)]
#[derive(schemars::JsonSchema)]
#[serde(untagged)]
enum RateSchema {
    Text(String),
    Number(f64),
}

/// `apiVersion`, checked while parsing.
#[derive(Debug, Deserialize)]
#[serde(try_from = "String")]
pub struct ApiVersion;
impl TryFrom<String> for ApiVersion {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s == API_VERSION {
            Ok(ApiVersion)
        } else {
            Err(format!(
                "unsupported apiVersion `{s}`: this promigrate reads `{API_VERSION}`"
            ))
        }
    }
}

/// `kind`, checked while parsing.
#[derive(Debug, Deserialize)]
#[serde(try_from = "String")]
pub struct Kind;
impl TryFrom<String> for Kind {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s == "Migration" {
            Ok(Kind)
        } else {
            Err(format!("unsupported kind `{s}`: expected `Migration`"))
        }
    }
}

/// `metadata`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    /// A DNS label (`[a-z0-9-]`, at most 63 characters); it names the run-record directory.
    #[schemars(
        with = "String",
        regex(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    )]
    pub name: Name,
}

/// A migration name: a DNS-1123 label, safe as a directory name.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct Name(pub String);
impl TryFrom<String> for Name {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok_chars = s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let ok_ends = !s.starts_with('-') && !s.ends_with('-');
        if !s.is_empty() && s.len() <= 63 && ok_chars && ok_ends {
            Ok(Name(s))
        } else {
            Err(format!(
                "invalid name `{s}`: use a DNS label (lowercase letters, digits and `-`, at most 63 characters), e.g. `prometheus-ecs`"
            ))
        }
    }
}

/// `source`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    /// The Prometheus data directory (`--storage.tsdb.path`): it holds `wal/` and the blocks.
    /// A relative path is taken relative to the plan file's directory (on this host).
    #[schemars(with = "PathBuf")]
    pub path: Spanned<PathBuf>,
    /// Read the directory on another host, over SSH, instead of locally.
    #[serde(default)]
    pub ssh: Option<Ssh>,
    /// The version of the Prometheus that wrote the data (`3.5.0` or `v3.5.0`); detected
    /// when absent (the running server's binary, `prometheusUrl`, `prometheus` on PATH).
    #[serde(default)]
    #[schemars(
        with = "Option<String>",
        regex(pattern = r"^v?(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)([-+].*)?$")
    )]
    pub prometheus_version: Option<crate::promversion::PromVersion>,
    /// Base URL of the running source Prometheus (`http://vm1:9090`): its
    /// `/api/v1/status/buildinfo` tells its version when its binary cannot be asked.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub prometheus_url: Option<crate::promversion::PromUrl>,
}

/// `source.ssh`. What it leaves out, the ssh config says for the host (`configFile`).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Ssh {
    /// Host name or address, or a `Host` alias of the ssh config.
    pub host: String,
    /// Port (default: the ssh config's `Port`, else 22).
    #[serde(default)]
    pub port: Option<u16>,
    /// Remote user (default: the ssh config's `User`, else the local user, as with ssh).
    #[serde(default)]
    pub user: Option<String>,
    /// Private key file (`~` expanded; default: the first existing `IdentityFile` of the
    /// ssh config); the ssh-agent when there is none.
    #[serde(default)]
    pub identity_file: Option<PathBuf>,
    /// known_hosts file (default: the ssh config's `UserKnownHostsFile`, else
    /// `~/.ssh/known_hosts`). Jump hosts' keys are checked against it too.
    #[serde(default)]
    pub known_hosts_file: Option<PathBuf>,
    /// Jump hosts to go through, in order, as `ssh -J` takes them: `user@host:port`, a list
    /// or one string with commas; `none` for none (default: the ssh config's `ProxyJump`).
    /// Each hop's key is checked like the source's; its user, port and key come from the
    /// hop, else the ssh config for its name; its key else `identityFile`, else the agent.
    #[serde(default)]
    #[schemars(with = "Option<HopsSchema>")]
    pub proxy_jump: Option<Hops>,
    /// The ssh config file to read (`~` expanded; default `~/.ssh/config` where it exists;
    /// `none`: none).
    #[serde(default)]
    pub config_file: Option<PathBuf>,
    /// Accept and record an unknown host's key (never a changed one). Default false.
    #[serde(default)]
    pub accept_new_host_key: bool,
    /// How apply reads files: `tar` (default: a GNU tar stream per worker, SFTP where the
    /// host has no GNU tar 1.29+) or `sftp`.
    #[serde(default)]
    pub read: crate::ssh::ReadVia,
}

/// `source.ssh.proxyJump`: one string with commas (`a@b:22,c`), or a list of hops.
#[derive(Debug, Clone)]
pub struct Hops(pub Vec<String>);

/// The shape of [`Hops`], for the JSON schema.
#[derive(schemars::JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum HopsSchema {
    /// `user@host:port,user@host:port`.
    One(String),
    /// One hop an item.
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for Hops {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Hops;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("jump hosts as user@host:port, one string with commas or a list")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Hops, E> {
                let hops: Vec<String> = v.split(',').map(|h| h.trim().to_string()).collect();
                if hops.iter().any(|h| h.is_empty()) {
                    return Err(E::custom(format!(
                        "{v:?} has an empty hop: write user@host:port, with a comma between hops"
                    )));
                }
                Ok(Hops(hops))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Hops, A::Error> {
                let mut hops = Vec::new();
                while let Some(h) = a.next_element::<String>()? {
                    hops.push(self_check::<A::Error>(h)?);
                }
                if hops.is_empty() {
                    return Err(serde::de::Error::custom(
                        "an empty list: leave proxyJump out, or write `none`",
                    ));
                }
                Ok(Hops(hops))
            }
        }
        fn self_check<E: serde::de::Error>(h: String) -> Result<String, E> {
            let h = h.trim().to_string();
            if h.is_empty() || h.contains(',') {
                return Err(E::custom(format!(
                    "{h:?} is not one hop: write user@host:port, one an item"
                )));
            }
            Ok(h)
        }
        d.deserialize_any(V)
    }
}

/// `target`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Target {
    /// Where the target volume is mounted on this host. It must exist. Left out with
    /// `kubernetes`: the volume is written through a receiver pod that mounts the claim.
    #[serde(default)]
    #[schemars(with = "Option<PathBuf>")]
    pub path: Option<Spanned<PathBuf>>,
    /// Optional directory inside the volume where the TSDB lands (the operator uses
    /// `prometheus-db`). With `kubernetes` naming a StatefulSet or Prometheus resource, it
    /// may be left out: the Prometheus container's volumeMount subPath is taken.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub sub_path: Option<SubPath>,
    /// The pod's securityContext: who must own the data. With `kubernetes` naming a
    /// StatefulSet or Prometheus resource, it may be left out: the pod's is taken.
    #[serde(default)]
    pub security_context: Option<SecurityContext>,
    /// The PersistentVolume, claim and StatefulSet behind this volume (optional).
    #[serde(default)]
    pub kubernetes: Option<Kubernetes>,
}

/// `target.kubernetes`: the cluster objects behind the target volume.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Kubernetes {
    /// Kubeconfig file; standard resolution (`$KUBECONFIG`, `~/.kube/config`) when absent.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context; its current context when absent.
    #[serde(default)]
    pub context: Option<String>,
    /// Namespace of the claim and the StatefulSet.
    #[schemars(with = "String")]
    pub namespace: K8sName,
    /// The PersistentVolume that holds the target volume; when absent, the one the claim is
    /// bound to.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub persistent_volume: Option<K8sName>,
    /// The claim that binds (or will bind) it. With `prometheus`, it may be left out:
    /// `<volume>-<statefulset>-<replica>`, as the StatefulSet controller names it.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub persistent_volume_claim: Option<K8sName>,
    /// The StatefulSet whose pods mount the claim; scaled to 0 while data is written.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub stateful_set: Option<K8sName>,
    /// A `monitoring.coreos.com/v1` `Prometheus` resource (the Prometheus Operator,
    /// kube-prometheus-stack) instead of `statefulSet`: its StatefulSet, claim, subPath,
    /// securityContext, image and retention are taken from it, and apply pauses it while
    /// the StatefulSet is at 0.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub prometheus: Option<K8sName>,
    /// With `prometheus`: the shard (default 0; shard N > 0 is StatefulSet
    /// `prometheus-<name>-shard-N`).
    #[serde(default)]
    pub shard: Option<u32>,
    /// With `prometheus`: the replica whose claim this target is (default 0).
    #[serde(default)]
    pub replica: Option<u32>,
    /// Accept a StatefulSet or Prometheus resource that a GitOps controller (Argo CD, Flux)
    /// manages. Only after self-heal is off (Argo CD) or the Kustomization/HelmRelease is
    /// suspended (Flux): otherwise it undoes the scale-down. Default false.
    #[serde(default)]
    pub accept_git_ops: bool,
    /// How long to wait for pods to go and for the claim to bind (default 5m).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub wait_timeout: Option<WaitTimeout>,
    /// Free room the PV must have beyond the data, in percent of the data (default 10).
    #[serde(default)]
    pub headroom_percent: Option<u32>,
    /// The receiver pod that writes the volume when `path` is left out (only then).
    #[serde(default)]
    pub receiver: Option<ReceiverPodConfig>,
}

/// `target.kubernetes.receiver`: the pod that mounts the claim and runs `promigrate
/// receive` when the target has no `path`.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReceiverPodConfig {
    /// Its image: it needs `sh` and `cat`. Default: the Prometheus container's image of the
    /// StatefulSet's pod template.
    #[serde(default)]
    pub image: Option<String>,
    /// The node it runs on. Default: the PV's node affinity (a local PV), else the node the
    /// StatefulSet's pod last ran on; none: the scheduler places it.
    #[serde(default)]
    pub node_name: Option<String>,
}

/// A Kubernetes object name (DNS subdomain: lowercase letters, digits, `-` and `.`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(try_from = "String")]
pub struct K8sName(pub String);
impl TryFrom<String> for K8sName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok_chars = s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        let ends = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if s.len() <= 253 && ok_chars && ends(s.bytes().next()) && ends(s.bytes().last()) {
            Ok(K8sName(s))
        } else {
            Err(format!(
                "invalid Kubernetes name `{s}`: use lowercase letters, digits, `-` and `.`, starting and ending with a letter or digit"
            ))
        }
    }
}

impl std::fmt::Display for K8sName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A wait timeout such as `5m` or `90s` (jiff's friendly duration format), 1 s to 24 h.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "String")]
pub struct WaitTimeout(pub std::time::Duration);
impl TryFrom<String> for WaitTimeout {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let d: jiff::SignedDuration = s
            .parse()
            .map_err(|e| format!("invalid waitTimeout `{s}` ({e}): use e.g. `5m` or `90s`"))?;
        match std::time::Duration::try_from(d) {
            Ok(d) if (1..=86_400).contains(&d.as_secs()) => Ok(WaitTimeout(d)),
            _ => Err(format!("invalid waitTimeout `{s}`: use between 1s and 24h")),
        }
    }
}

/// A relative path without `..`, like a Kubernetes volumeMount subPath.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct SubPath(pub PathBuf);
impl TryFrom<String> for SubPath {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let p = PathBuf::from(&s);
        let normal = p
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if s.is_empty() || !normal {
            Err(format!(
                "invalid subPath `{s}`: use a relative path inside the volume, without `..`, e.g. `prometheus-db`"
            ))
        } else {
            Ok(SubPath(p))
        }
    }
}

/// `target.securityContext`: the uid and group Prometheus runs with in the pod.
#[derive(Debug, Clone, Copy, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecurityContext {
    /// Owner uid of every file and directory on the target (0 to 4294967294).
    #[schemars(with = "u32", range(max = 4_294_967_294u32))]
    pub run_as_user: LinuxId,
    /// Owner gid of every file and directory on the target; dirs get setgid and group write
    /// (0 to 4294967294).
    #[schemars(with = "u32", range(max = 4_294_967_294u32))]
    pub fs_group: LinuxId,
}

/// A uid or gid a Linux file can have: 0 to 2^32-2. 2^32-1 is `(uid_t)-1`, which chown(2)
/// reads as "leave unchanged": an owner of that value would own nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinuxId(pub u32);

impl<'de> Deserialize<'de> for LinuxId {
    /// A whole number in range; anything else (a user name, a fraction) named for what it
    /// is, not as a failed integer parse.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Id;
        impl serde::de::Visitor<'_> for Id {
            type Value = LinuxId;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a numeric uid/gid, e.g. 1000")
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<LinuxId, E> {
                LinuxId::try_from(n).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<LinuxId, E> {
                match i64::try_from(n) {
                    Ok(i) => LinuxId::try_from(i).map_err(E::custom),
                    Err(_) => Err(E::custom(format!(
                        "{n} is not a Linux uid/gid: use a number from 0 to 4294967294, e.g. 1000"
                    ))),
                }
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<LinuxId, E> {
                Err(E::custom(format!(
                    "{n:?} is not a uid/gid: use a whole number without a point, e.g. 1000"
                )))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<LinuxId, E> {
                // A quoted number ("1000") is that number, as it always was.
                if let Ok(n) = v.trim().parse::<i64>() {
                    return self.visit_i64(n);
                }
                Err(E::custom(format!(
                    "{v:?} is not a numeric uid/gid: names are not looked up (the pod's image may not know them); use the number, e.g. 1000 (`id -u NAME` where the name is known)"
                )))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<LinuxId, E> {
                Err(E::custom(format!(
                    "{v} is not a uid/gid: use a number, e.g. 1000"
                )))
            }
        }
        d.deserialize_any(Id)
    }
}
impl TryFrom<i64> for LinuxId {
    type Error = String;
    fn try_from(n: i64) -> Result<Self, String> {
        match u32::try_from(n) {
            Ok(u32::MAX) => Err(format!(
                "{n} is not a usable uid/gid: chown reads it as \"leave unchanged\", so nothing would be owned; use the pod's numeric id (0 to 4294967294), e.g. 1000"
            )),
            Ok(v) => Ok(LinuxId(v)),
            Err(_) => Err(format!(
                "{n} is not a Linux uid/gid: use a number from 0 to 4294967294, e.g. 1000"
            )),
        }
    }
}

/// `transfer`: all optional.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Transfer {
    /// Bandwidth limit across all workers, rsync units (`200M` = 200 MiB/s, bare number = KiB/s),
    /// for the presync (the source still runs). Not for the final phase: see `finalBwlimit`.
    #[serde(default)]
    #[schemars(with = "Option<RateSchema>")]
    pub bwlimit: Option<Rate>,
    /// Bandwidth limit of the final phase and of `--phase all` (the source is stopped: the
    /// downtime), rsync units; unset or 0: none.
    #[serde(default)]
    #[schemars(with = "Option<RateSchema>")]
    pub final_bwlimit: Option<Rate>,
    /// Files copied at once (1-64, default 4).
    #[serde(default)]
    #[schemars(with = "Option<u8>", range(min = 1, max = 64))]
    pub parallelism: Option<Parallelism>,
    /// Only blocks overlapping `[min, max)` (RFC 3339); blocks are selected whole.
    #[serde(default)]
    #[schemars(with = "Option<RawTimeRange>")]
    pub time_range: Option<TimeRange>,
    /// Move target entries the plan would own but the source lacks to `.promigrate-quarantine/`.
    #[serde(default)]
    pub delete_extraneous: bool,
    /// Copy the selection even though it leaves out source blocks or the head data (WAL,
    /// head chunks): by `timeRange`, or by `excludeBlocks` that leave no block. Without it,
    /// such a selection is a plan blocker (a wrong year in `timeRange` would otherwise give
    /// an empty copy that verifies). Default false.
    #[serde(default)]
    pub accept_partial_selection: bool,
    /// Source blocks not to copy (e.g. damaged ones), by ULID.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub exclude_blocks: Vec<BlockId>,
    /// Opt-in repair of a broken head/WAL file sequence (`none` or `dropUnsequential`).
    #[serde(default)]
    pub head_repair: HeadRepair,
}

/// A block ULID in the plan file.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "String")]
pub struct BlockId(pub ulid::Ulid);
impl TryFrom<String> for BlockId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        ulid::Ulid::from_string(&s).map(BlockId).map_err(|_| {
            format!("`{s}` is not a block ULID (26 characters, e.g. 01HZX3J8Q4N2V5W6X7Y8Z9A0BC)")
        })
    }
}

/// `transfer.headRepair`: what to do when `chunks_head/` or `wal/` files are not numbered
/// contiguously (Prometheus refuses to start on such a directory).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum HeadRepair {
    /// No repair: a gap is a plan blocker.
    #[default]
    None,
    /// Copy only the contiguous run of `chunks_head/` files after the last gap (data only in
    /// the dropped files is lost unless the WAL still holds it and Prometheus replays it, which
    /// it does not before a chunk snapshot it loads), and drop WAL segments before a gap when
    /// a checkpoint covers them (lossless). The plan lists what is dropped.
    DropUnsequential,
}

/// Worker count, 1 to 64.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "u64")]
pub struct Parallelism(pub NonZeroUsize);
impl TryFrom<u64> for Parallelism {
    type Error = String;
    fn try_from(n: u64) -> Result<Self, String> {
        match NonZeroUsize::new(n as usize) {
            Some(v) if n <= 64 => Ok(Parallelism(v)),
            _ => Err(format!("invalid parallelism {n}: use 1 to 64")),
        }
    }
}

/// `transfer.timeRange`, in UTC milliseconds like Prometheus block times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(try_from = "RawTimeRange")]
pub struct TimeRange {
    /// Inclusive lower bound (ms), if any.
    pub min: Option<i64>,
    /// Exclusive upper bound (ms), if any.
    pub max: Option<i64>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawTimeRange {
    #[serde(default)]
    min: Option<String>,
    #[serde(default)]
    max: Option<String>,
}

impl TryFrom<RawTimeRange> for TimeRange {
    type Error = String;
    fn try_from(r: RawTimeRange) -> Result<Self, String> {
        let ts = |name: &str, v: Option<String>| -> Result<Option<i64>, String> {
            v.map(|s| {
                s.parse::<jiff::Timestamp>().map(|t| t.as_millisecond()).map_err(|e| {
                    format!("timeRange.{name} `{s}` is not an RFC 3339 time ({e}); use e.g. 2025-05-01T00:00:00Z")
                })
            })
            .transpose()
        };
        let (min, max) = (ts("min", r.min)?, ts("max", r.max)?);
        match (min, max) {
            (None, None) => Err("timeRange needs `min`, `max` or both".into()),
            (Some(a), Some(b)) if a >= b => {
                Err("timeRange.min must be before timeRange.max".into())
            }
            _ => Ok(TimeRange { min, max }),
        }
    }
}

impl TimeRange {
    /// Whether a block covering `[min_time, max_time)` overlaps this range.
    pub fn overlaps(&self, min_time: i64, max_time: i64) -> bool {
        self.min.is_none_or(|m| max_time > m) && self.max.is_none_or(|m| min_time < m)
    }
}

/// The resolved settings of one migration: what `plan`, `apply` and `verify` work from.
#[derive(Debug, Clone)]
pub struct Migration {
    /// The plan file this came from.
    pub plan_path: PathBuf,
    /// `metadata.name`.
    pub name: String,
    /// The source TSDB directory (on the SSH host for an SSH source).
    pub source: PathBuf,
    /// How to read it: locally or over SSH.
    pub src: crate::source::Source,
    /// The target volume's mount path.
    pub target_mount: PathBuf,
    /// `target.path/subPath`: where the TSDB lands.
    pub target_root: PathBuf,
    /// Owner of everything on the target.
    pub owner: Owner,
    /// Every target volume (`targets:`); one entry for `target:`. The three fields above
    /// are the first one's; [`Migration::views`] gives one single-target view per entry.
    pub targets: Vec<TargetSpec>,
    /// Bytes per second in the presync, or `None` for no limit.
    pub bwlimit: Option<u64>,
    /// Bytes per second in the final phase (and `--phase all`), or `None` for no limit.
    pub final_bwlimit: Option<u64>,
    /// Files copied at once.
    pub parallelism: usize,
    /// Block selection, if any.
    pub time_range: Option<TimeRange>,
    /// Quarantine extraneous target entries.
    pub delete_extraneous: bool,
    /// `transfer.acceptPartialSelection`: a selection that leaves source data out is not a
    /// blocker.
    pub accept_partial_selection: bool,
    /// Source blocks not to copy.
    pub exclude_blocks: Vec<ulid::Ulid>,
    /// Opt-in head/WAL sequence repair.
    pub head_repair: HeadRepair,
    /// `report.pushgateway`, if set, its files read.
    pub pushgateway: Option<crate::metrics::Pushgateway>,
    /// `source.prometheusVersion` and `source.prometheusUrl`: what the plan says of the
    /// source server ([`crate::promversion::detect_source_version`] uses them).
    pub source_server: crate::promversion::SourceServer,
}

/// One resolved target volume.
#[derive(Debug, Clone)]
pub struct TargetSpec {
    /// `target.path` as the plan gives it (absolute).
    pub mount_given: PathBuf,
    /// The volume's mount path, with symbolic links resolved.
    pub mount: PathBuf,
    /// `path/subPath`: where the TSDB lands.
    pub root: PathBuf,
    /// Owner of everything on it.
    pub owner: Owner,
    /// The cluster objects behind it, if the plan names them.
    pub kubernetes: Option<KubeTarget>,
    /// How it is reached when it is not mounted here: set by the command that started its
    /// receiver. `None`: mounted here.
    pub remote: Option<Reach>,
}

/// A target volume reached through a receiver: what plan and verify read of it, and what
/// apply writes through.
#[derive(Clone)]
pub struct Reach {
    /// Plan's and verify's reads.
    pub survey: std::sync::Arc<dyn super::Survey>,
    /// Opens it for apply's writes (with `true`: a dry run, whose changes are recorded).
    #[allow(clippy::type_complexity)]
    pub open: std::sync::Arc<
        dyn Fn(bool) -> anyhow::Result<Box<dyn crate::volume::Target>> + Send + Sync,
    >,
}

impl std::fmt::Debug for Reach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Reach({})", self.survey.shown().display())
    }
}

/// `target.kubernetes`, resolved.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KubeTarget {
    /// Kubeconfig file, if given (`~` expanded).
    pub kubeconfig: Option<PathBuf>,
    /// Context, if given.
    pub context: Option<String>,
    /// Namespace of the claim and StatefulSet.
    pub namespace: String,
    /// PersistentVolume name.
    pub persistent_volume: String,
    /// PersistentVolumeClaim name.
    pub persistent_volume_claim: String,
    /// StatefulSet name, if any (with `prometheus`, the one the operator made).
    pub stateful_set: Option<String>,
    /// The operator's `Prometheus` resource, if the plan names one.
    pub prometheus: Option<String>,
    /// With `prometheus`: the shard.
    pub shard: u32,
    /// With `prometheus`: the replica.
    pub replica: u32,
    /// `acceptGitOps`.
    pub accept_git_ops: bool,
    /// What the plan left out and was read from the cluster, in words (for the reports).
    pub derived: Vec<String>,
    /// Every wait's limit.
    #[serde(with = "secs")]
    pub wait_timeout: std::time::Duration,
    /// Required room beyond the data, percent.
    pub headroom_percent: u32,
    /// Written through a receiver pod on the claim (the target has no `path`); `None`:
    /// mounted on this host.
    pub receiver_pod: Option<ReceiverPod>,
}

/// Where a receiver pod mounts the claim (the whole volume).
pub const POD_MOUNT: &str = "/promigrate/volume";

/// `target.kubernetes.receiver`, resolved: empty strings are "not given".
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReceiverPod {
    /// The image, if the plan names one.
    pub image: Option<String>,
    /// The node, if the plan names one.
    pub node_name: Option<String>,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// Default wait for pods to stop and claims to bind.
pub const DEFAULT_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

impl Migration {
    /// What plan and verify read of the (first) target: through its receiver, or here.
    pub fn survey(&self) -> std::sync::Arc<dyn super::Survey> {
        match self.targets.first().and_then(|t| t.remote.as_ref()) {
            Some(r) => r.survey.clone(),
            None => std::sync::Arc::new(super::LocalSurvey {
                mount: self.target_mount.clone(),
                root: self.target_root.clone(),
                owner: self.owner,
                mounted_read_only: false,
            }),
        }
    }

    /// One single-target view of this migration per target volume, in plan-file order.
    pub fn views(&self) -> Vec<Migration> {
        self.targets
            .iter()
            .map(|t| Migration {
                target_mount: t.mount.clone(),
                target_root: t.root.clone(),
                owner: t.owner,
                targets: vec![t.clone()],
                ..self.clone()
            })
            .collect()
    }
}

fn whole_err(plan_path: &Path, what: &str) -> InvalidInput {
    InvalidInput(format!("plan file {}: {what}", plan_path.display()))
}

/// The error of the paths that are not there: one, or all of them in a list.
fn missing_paths(plan_path: &Path, missing: &[String]) -> InvalidInput {
    match missing {
        [one] => InvalidInput(one.clone()),
        several => {
            let prefix = format!("plan file {}: ", plan_path.display());
            InvalidInput(format!(
                "{prefix}{} paths are not there:\n{}",
                several.len(),
                several
                    .iter()
                    .map(|m| format!("  - {}", m.strip_prefix(&prefix).unwrap_or(m)))
                    .collect::<Vec<_>>()
                    .join("\n")
            ))
        }
    }
}

/// Default number of parallel copy workers.
pub const DEFAULT_PARALLELISM: usize = 4;

/// Parses plan-file text. Errors name the field path, the line and the column.
pub fn parse(text: &str, origin: &Path) -> Result<PlanFile, InvalidInput> {
    let mut track = serde_path_to_error::Track::new();
    let parsed = serde_saphyr::with_deserializer_from_str(text, |de| {
        PlanFile::deserialize(serde_path_to_error::Deserializer::new(de, &mut track))
    });
    parsed.map_err(|e| {
        // `Spanned` fields show up as a `value` segment: not part of the plan's field names.
        let path = track.path().to_string();
        let path = path.replace(".value[", "[").replace(".value.", ".");
        let path = path.strip_suffix(".value").unwrap_or(&path).to_string();
        let field = if path == "." {
            "(top level)".to_string()
        } else {
            format!("`{path}`")
        };
        // saphyr's message starts with its own "error: " and calls the text "<input>".
        let msg = e.to_string();
        let msg = msg
            .strip_prefix("error: ")
            .unwrap_or(&msg)
            .replace("<input>", &origin.display().to_string());
        let (field, msg) = plainer(text, &path, field, msg);
        InvalidInput(format!(
            "plan file {}: field {field}: {msg}",
            origin.display()
        ))
    })
}

/// The parser's words for a few common mistakes, in the plan's terms: a key set twice, a
/// list given as one value, a key indented too far (which makes the line above it look
/// wrong). `field` and `msg` as [`parse`] shows them; `msg`'s first line is
/// `line L column C: WHAT`.
fn plainer(text: &str, path: &str, field: String, msg: String) -> (String, String) {
    let (first, rest) = msg.split_once('\n').unwrap_or((&msg, ""));
    let Some((line, what)) = first
        .strip_prefix("line ")
        .and_then(|r| r.split_once(" column "))
        .and_then(|(l, r)| Some((l.parse::<usize>().ok()?, r.split_once(": ")?.1)))
    else {
        return (field, msg);
    };
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let at = |n: usize| lines.get(n.wrapping_sub(1)).copied().unwrap_or("");
    let rest = if rest.is_empty() {
        String::new()
    } else {
        format!("\n{rest}")
    };
    let parent = path.trim_end_matches(".?").trim_end_matches('?');
    let name = |key: &str| {
        if parent.is_empty() || parent == "." {
            format!("`{key}`")
        } else {
            format!("`{parent}.{key}`")
        }
    };
    // "duplicate mapping key: K, set DuplicateKeyPolicy in Options if acceptable"
    if let Some(key) = what
        .strip_prefix("duplicate mapping key: ")
        .and_then(|r| r.split(',').next())
    {
        let here = at(line);
        // The first one: in the same mapping, so not above a line indented less (the start
        // of the mapping, or of another list item); `- key:` starts a list item's mapping.
        let mut earlier = None;
        for n in (1..line).rev() {
            let l = at(n);
            if l.trim().is_empty() || l.trim_start().starts_with('#') {
                continue;
            }
            let t = l.trim_start();
            let (ind, t) = match t.strip_prefix("- ") {
                Some(rest) => (indent(l) + 2, rest),
                None => (indent(l), t),
            };
            if ind == indent(here) && t.starts_with(&format!("{key}:")) {
                earlier = Some(n);
                break;
            }
            if indent(l) < indent(here) {
                break;
            }
        }
        let lines = match earlier {
            Some(n) => format!("on line {n} and line {line}"),
            None => format!("again on line {line}"),
        };
        let field = if parent.is_empty() || parent == "." {
            "(top level)".to_string()
        } else {
            format!("`{parent}`")
        };
        return (
            field,
            format!("{} is set twice, {lines}: keep one{rest}", name(key)),
        );
    }
    if what == "expected sequence start" {
        return (
            field.clone(),
            format!(
                "line {line}: {field} is a list: write `[A, B]`, or each item on a line of its own below it as `- A`{rest}"
            ),
        );
    }
    // A value on this line, and the next line indented further: that line was meant as a
    // key of its own, and the parser read it as part of this value.
    let here = at(line);
    let next = (line + 1..=lines.len())
        .map(|n| (n, at(n)))
        .find(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    // Only when the next line is `key: …` and the value the parser complains about ran on
    // into that key (a plain scalar that swallowed it), not for flow lists, maps or block
    // scalars that go on over several lines.
    let next_key = next.and_then(|(_, l)| {
        let t = l.trim_start();
        let k = t.split_once(':')?.0;
        (!k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')).then_some(k)
    });
    let value = here.split_once(": ").map_or("", |(_, v)| v.trim_start());
    if let (Some((n, l)), Some(next_key)) = (next, next_key)
        && indent(l) > indent(here)
        && !value.is_empty()
        && !value.starts_with(['{', '[', '|', '>', '#', '&', '*', '"', '\''])
        && what.contains(next_key)
    {
        let key = here.trim_start().split(':').next().unwrap_or("");
        return (
            field,
            format!(
                "line {line}: {what} (line {n} is indented further than `{key}` on line {line}: if it is a key of its own, indent it as `{key}` is){rest}"
            ),
        );
    }
    (field, msg)
}

/// Whether `bytes` look like UTF-16 without a byte-order mark: in the first 256 bytes, those
/// at one parity nearly all NUL (the high bytes of ASCII), those at the other nearly none (a
/// file of zeros is not text of any kind).
fn utf16_without_bom(bytes: &[u8]) -> bool {
    let head = &bytes[..bytes.len().min(256)];
    let half = head.len() / 2;
    if half < 4 {
        return false;
    }
    let zeros = |parity: usize| {
        head.iter()
            .skip(parity)
            .step_by(2)
            .filter(|x| **x == 0)
            .count()
    };
    let (even, odd) = (zeros(0), zeros(1));
    let most = |z: usize| z * 10 >= half * 9;
    let few = |z: usize| z * 10 <= half;
    (most(even) && few(odd)) || (most(odd) && few(even))
}

/// Why `bytes` are not UTF-8 text, when they are text of another kind (UTF-16, with or
/// without a byte-order mark) or no text (NULs): what to tell the user.
fn not_utf8_text(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(&[0xff, 0xfe]) || bytes.starts_with(&[0xfe, 0xff]) {
        Some("is UTF-16 text (as PowerShell's `>` writes it): save it as UTF-8")
    } else if utf16_without_bom(bytes) {
        Some("is UTF-16 text without a byte-order mark: save it as UTF-8")
    } else if bytes.contains(&0) {
        Some(
            "is not a text file: check that -f names the plan (a YAML file, see examples/vm-to-k8s.yaml)",
        )
    } else {
        None
    }
}

/// Reads, parses and resolves a plan file. A missing file, an invalid field or a missing
/// source or target path is an [`InvalidInput`] (exit 2).
pub fn load(plan_path: &Path, derive: &Derive<'_>) -> anyhow::Result<Migration> {
    let bytes = std::fs::read(plan_path).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound => {
                "; pass an existing file with -f (see examples/vm-to-k8s.yaml)"
            }
            std::io::ErrorKind::IsADirectory => "; pass the plan file, not its directory",
            _ => "",
        };
        InvalidInput(format!(
            "cannot read plan file {}: {e}{hint}",
            plan_path.display()
        ))
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let what = not_utf8_text(bytes).map_or_else(
            || {
                let at = e.utf8_error().valid_up_to();
                let line = bytes[..at].iter().filter(|b| **b == b'\n').count() + 1;
                format!("is not UTF-8 text (line {line} has a byte that is not): save it as UTF-8")
            },
            str::to_string,
        );
        InvalidInput(format!("plan file {} {what}", plan_path.display()))
    })?;
    // ASCII written as UTF-16 without a byte-order mark is valid UTF-8, with a NUL in
    // every other byte; other NULs mean it is no text at all.
    if let Some(what) = not_utf8_text(text.as_bytes()) {
        return Err(InvalidInput(format!("plan file {} {what}", plan_path.display())).into());
    }
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Err(InvalidInput(format!(
            "plan file {} is empty{}: start from examples/vm-to-k8s.yaml (or `promigrate schema` for every field)",
            plan_path.display(),
            if text.trim().is_empty() { "" } else { " (comments only)" }
        ))
        .into());
    }
    let file = parse(&text, plan_path)?;
    resolve(file, plan_path, derive).map_err(anyhow::Error::from)
}

/// What a Kubernetes target's plan leaves for the cluster to say (besides the object names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wants {
    /// `securityContext` is left out.
    pub owner: bool,
    /// `subPath` is left out.
    pub sub_path: bool,
}

/// The cluster's answers for one Kubernetes target (see `k8s::derive`).
#[derive(Debug, Clone, Default)]
pub struct ClusterFacts {
    /// The StatefulSet (for a `prometheus` target: the one the operator made).
    pub stateful_set: Option<String>,
    /// The claim.
    pub persistent_volume_claim: String,
    /// The PersistentVolume.
    pub persistent_volume: String,
    /// The pod's owner, when [`Wants::owner`]; `None` when the pod does not say.
    pub owner: Option<Owner>,
    /// The Prometheus container's subPath (`Some(None)`: none), when [`Wants::sub_path`].
    pub sub_path: Option<Option<PathBuf>>,
    /// What was taken, in words.
    pub derived: Vec<String>,
}

/// Reads what a Kubernetes target's plan leaves out from the cluster.
pub type Derive<'a> = dyn Fn(&KubeTarget, Wants) -> anyhow::Result<ClusterFacts> + 'a;

/// A [`Derive`] for plans that name everything: asking is an error.
pub fn offline(_: &KubeTarget, _: Wants) -> anyhow::Result<ClusterFacts> {
    anyhow::bail!("no cluster access here")
}

fn wants_words(k: &KubeTarget, w: Wants) -> String {
    let mut v = Vec::new();
    if k.persistent_volume_claim.is_empty() {
        v.push("persistentVolumeClaim");
    }
    if k.persistent_volume.is_empty() {
        v.push("persistentVolume");
    }
    if w.owner {
        v.push("securityContext");
    }
    if w.sub_path {
        v.push("subPath");
    }
    if v.is_empty() {
        "the StatefulSet of the Prometheus resource".into()
    } else {
        v.join(", ")
    }
}

/// `target.kubernetes`, checked and resolved as far as the plan alone goes: names the plan
/// leaves out are empty here until [`Derive`] fills them.
fn kube_target(
    k: Kubernetes,
    plan_path: &Path,
    name: &str,
    mounted: bool,
) -> Result<KubeTarget, InvalidInput> {
    let base = plan_path.parent().unwrap_or(Path::new("."));
    let err = |what: String| {
        InvalidInput(format!(
            "plan file {}: field `{name}.kubernetes`: {what}",
            plan_path.display()
        ))
    };
    if k.stateful_set.is_some() && k.prometheus.is_some() {
        return Err(err(
            "`statefulSet` and `prometheus` are both set: name the Prometheus resource for an operator-managed server (its StatefulSet is found from it), or the StatefulSet for a plain one".into(),
        ));
    }
    if k.prometheus.is_none() && (k.shard.is_some() || k.replica.is_some()) {
        return Err(err(
            "`shard` and `replica` go with `prometheus` (an operator-managed server); for a plain StatefulSet name the claim in `persistentVolumeClaim`".into(),
        ));
    }
    if k.prometheus.is_none() && k.persistent_volume_claim.is_none() {
        return Err(err(
            "`persistentVolumeClaim` is missing: name the claim that binds the target volume (or, for an operator-managed server, the Prometheus resource in `prometheus`)".into(),
        ));
    }
    if mounted && k.receiver.is_some() {
        return Err(err(format!(
            "`receiver` goes with a target written through a receiver pod, which has no `path`: remove `{name}.path` to write the volume through a pod, or `{name}.kubernetes.receiver` to write it where it is mounted"
        )));
    }
    let given = |s: Option<String>| s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    let receiver_pod = (!mounted).then(|| {
        let r = k.receiver.unwrap_or_default();
        ReceiverPod {
            image: given(r.image),
            node_name: given(r.node_name),
        }
    });
    Ok(KubeTarget {
        kubeconfig: k.kubeconfig.map(|p| {
            let p = expand_home(&p);
            if p.is_absolute() { p } else { base.join(p) }
        }),
        context: k.context,
        namespace: k.namespace.0,
        persistent_volume: k.persistent_volume.map(|n| n.0).unwrap_or_default(),
        persistent_volume_claim: k.persistent_volume_claim.map(|n| n.0).unwrap_or_default(),
        stateful_set: k.stateful_set.map(|s| s.0),
        prometheus: k.prometheus.map(|s| s.0),
        shard: k.shard.unwrap_or(0),
        replica: k.replica.unwrap_or(0),
        accept_git_ops: k.accept_git_ops,
        derived: Vec::new(),
        wait_timeout: k.wait_timeout.map_or(DEFAULT_WAIT, |w| w.0),
        headroom_percent: k.headroom_percent.unwrap_or(10),
        receiver_pod,
    })
}

/// Turns a parsed plan into settings, checking the paths it names; `derive` reads from the
/// cluster what a Kubernetes target leaves out.
pub fn resolve(
    file: PlanFile,
    plan_path: &Path,
    derive: &Derive<'_>,
) -> Result<Migration, InvalidInput> {
    let base = plan_path.parent().unwrap_or(Path::new("."));
    let field_err = |field: &str, at: &Spanned<PathBuf>, what: String| {
        InvalidInput(format!(
            "plan file {}: field `{field}` (line {}): {what}",
            plan_path.display(),
            at.referenced.line()
        ))
    };
    let abs = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };

    let source = match &file.source.ssh {
        Some(_) if !file.source.path.value.is_absolute() => {
            return Err(field_err(
                "source.path",
                &file.source.path,
                "with source.ssh the path is on the remote host and must be absolute (`~` is not expanded there)".into(),
            ));
        }
        Some(_) => file.source.path.value.clone(),
        // `~/x` as a shell would expand it, as for source.ssh.identityFile.
        None => abs(&expand_home(&file.source.path.value)),
    };
    // Every path that is not there, reported together (a missing source and a missing
    // target are two errors in one run, not one per run).
    let mut missing: Vec<String> = Vec::new();
    let source_server = crate::promversion::SourceServer {
        version: file.source.prometheus_version.clone(),
        url: file.source.prometheus_url.clone(),
    };
    let src = match &file.source.ssh {
        Some(s) => {
            if s.host.is_empty() || s.user.as_deref() == Some("") {
                return Err(whole_err(
                    plan_path,
                    "fields `source.ssh.host` and `source.ssh.user` must not be empty (leave user out for the ssh config's or your own)",
                ));
            }
            let home = |p: &Path| abs(&expand_home(p));
            let given = crate::ssh::config::Given {
                host: s.host.clone(),
                port: s.port,
                user: s.user.clone(),
                identity_file: s.identity_file.as_deref().map(home),
                known_hosts_file: s.known_hosts_file.as_deref().map(home),
                accept_new_host_key: s.accept_new_host_key,
                read: s.read,
                proxy_jump: s.proxy_jump.clone().map(|h| h.0),
                config_file: s.config_file.as_deref().map(|c| {
                    if c == Path::new("none") {
                        c.to_path_buf()
                    } else {
                        home(c)
                    }
                }),
            };
            let spec = crate::ssh::config::resolve(&given).map_err(|e| whole_err(plan_path, &e))?;
            if let Some(k) = &spec.identity_file
                && !k.is_file()
            {
                return Err(whole_err(
                    plan_path,
                    &format!(
                        "field `source.ssh.identityFile`: {} is not a file",
                        k.display()
                    ),
                ));
            }
            crate::source::Source::Ssh {
                root: source.clone(),
                pool: std::sync::Arc::new(crate::ssh::Pool::new(spec)),
            }
        }
        None => crate::source::Source::Local(source.clone()),
    };
    if file.source.ssh.is_none() && !source.is_dir() {
        missing.push(
            field_err(
                "source.path",
                &file.source.path,
                format!(
                    "{} is not a directory: point it at the Prometheus data directory (the one holding wal/)",
                    source.display()
                ),
            )
            .0,
        );
    }
    let whole = |what: String| InvalidInput(format!("plan file {}: {what}", plan_path.display()));
    let (list, field) = match (file.target, file.targets) {
        (Some(t), None) => (vec![t.value], None),
        (None, Some(ts)) if ts.value.is_empty() => {
            return Err(whole(format!(
                "field `targets` (line {}) is empty: list at least one target volume",
                ts.referenced.line()
            )));
        }
        (None, Some(ts)) => (ts.value, Some("targets")),
        (Some(t), Some(_)) => {
            return Err(whole(format!(
                "fields `target` (line {}) and `targets` are both set: use `target` for one volume or `targets` for several, not both",
                t.referenced.line()
            )));
        }
        (None, None) => {
            return Err(whole(
                "field `target` is missing: say where the TSDB goes (`target:` for one volume, `targets:` for an HA pair)".into(),
            ));
        }
    };
    // Every target path that is not there, with the source's, before anything else is
    // judged or asked of a cluster.
    for (i, t) in list.iter().enumerate() {
        let Some(path) = &t.path else { continue };
        let mount = abs(&expand_home(&path.value));
        if !mount.is_dir() {
            let name = field.map_or_else(|| "target".to_string(), |f| format!("{f}[{i}]"));
            missing.push(
                field_err(
                    &format!("{name}.path"),
                    path,
                    format!(
                        "{} is not a directory: mount the target volume there first",
                        mount.display()
                    ),
                )
                .0,
            );
        }
    }
    if !missing.is_empty() {
        return Err(missing_paths(plan_path, &missing));
    }
    let mut targets: Vec<TargetSpec> = Vec::with_capacity(list.len());
    for (i, t) in list.into_iter().enumerate() {
        let name = field.map_or_else(|| "target".to_string(), |f| format!("{f}[{i}]"));
        // A field error at `path`'s line, or (no `path`: a receiver pod) without a line.
        let at_err = |field: &str, what: String| match &t.path {
            Some(p) => field_err(field, p, what),
            None => whole(format!("field `{field}`: {what}")),
        };
        let (mount_given, mount) = match &t.path {
            Some(path) => {
                // There (checked with the others above).
                let mount = abs(&expand_home(&path.value));
                // A mount path that is (or passes through) a symbolic link is resolved:
                // promigrate works on the real directory, and below it never follows a link.
                let mount_given = mount;
                let mount = mount_given.canonicalize().map_err(|e| {
                    field_err(
                        &format!("{name}.path"),
                        path,
                        format!("cannot resolve {}: {e}", mount_given.display()),
                    )
                })?;
                (mount_given, mount)
            }
            None if t.kubernetes.is_none() => {
                return Err(whole(format!(
                    "field `{name}.path` is missing: give the directory where the target volume is mounted on this host, or name its claim in `{name}.kubernetes` to write it through a receiver pod"
                )));
            }
            // Where the receiver pod mounts the claim.
            None => (PathBuf::from(POD_MOUNT), PathBuf::from(POD_MOUNT)),
        };
        let sc = t.security_context;
        let mut kubernetes = match t.kubernetes {
            Some(k) => Some(kube_target(k, plan_path, &name, t.path.is_some())?),
            None => None,
        };
        if kubernetes.is_none() && sc.is_none() {
            return Err(at_err(
                &name,
                format!(
                    "missing field `securityContext`: give the pod's runAsUser and fsGroup (or name the pod's StatefulSet or Prometheus resource in `{name}.kubernetes`, and it is taken from there)"
                ),
            ));
        }
        // What the plan leaves out, the cluster says.
        let wants = Wants {
            owner: sc.is_none(),
            sub_path: t.sub_path.is_none(),
        };
        let mut sub_path = t.sub_path.map(|s| s.0);
        let mut owner = sc.map(|sc| Owner {
            uid: sc.run_as_user.0,
            gid: sc.fs_group.0,
        });
        if let Some(k) = &mut kubernetes {
            let needs_cluster = k.prometheus.is_some()
                || k.persistent_volume.is_empty()
                || k.persistent_volume_claim.is_empty()
                || (k.stateful_set.is_some() && (wants.owner || wants.sub_path));
            if k.stateful_set.is_none() && k.prometheus.is_none() && wants.owner {
                return Err(at_err(
                    &name,
                    format!(
                        "missing field `securityContext`: give the pod's runAsUser and fsGroup, or name the pod's StatefulSet (`{name}.kubernetes.statefulSet`) or Prometheus resource (`{name}.kubernetes.prometheus`) to take it from"
                    ),
                ));
            }
            if needs_cluster {
                let facts = derive(k, wants).map_err(|e| {
                    whole(format!(
                        "{name}.kubernetes: cannot read from the cluster what the plan leaves out ({}): {e:#}. Fix the access or the names, or give those fields in the plan",
                        wants_words(k, wants)
                    ))
                })?;
                k.stateful_set = facts.stateful_set.or(k.stateful_set.take());
                k.persistent_volume_claim = facts.persistent_volume_claim;
                k.persistent_volume = facts.persistent_volume;
                k.derived = facts.derived;
                if wants.owner {
                    owner = facts.owner;
                }
                if wants.sub_path {
                    sub_path = facts.sub_path.flatten();
                }
            }
        }
        let Some(owner) = owner else {
            return Err(at_err(
                &name,
                "missing field `securityContext`, and the pod does not say which uid and fsGroup it runs as: give them in the plan".into(),
            ));
        };
        let root = match &sub_path {
            Some(p) => mount.join(p),
            None => mount.clone(),
        };
        // Receiver pods all mount their claim at the same path: their volumes are told
        // apart by their PersistentVolume (below).
        let by_pod = |t: &TargetSpec| {
            t.kubernetes
                .as_ref()
                .is_some_and(|k| k.receiver_pod.is_some())
        };
        let pod = kubernetes
            .as_ref()
            .is_some_and(|k| k.receiver_pod.is_some());
        if let Some(j) = targets
            .iter()
            .position(|o| !pod && !by_pod(o) && o.root == root)
        {
            return Err(at_err(
                &format!("{name}.path"),
                format!(
                    "{} is already {}[{j}]: each target must be a different volume or subPath",
                    root.display(),
                    field.unwrap_or("targets")
                ),
            ));
        }
        if let Some(k) = &kubernetes
            && let Some(j) = targets.iter().position(|o| {
                o.kubernetes.as_ref().is_some_and(|ok| {
                    ok.persistent_volume == k.persistent_volume && ok.context == k.context
                })
            })
        {
            return Err(at_err(
                &format!("{name}.path"),
                format!(
                    "PersistentVolume {} is already the one of {}[{j}]: each target has its own volume",
                    k.persistent_volume,
                    field.unwrap_or("targets")
                ),
            ));
        }
        targets.push(TargetSpec {
            mount_given,
            mount,
            root,
            owner,
            kubernetes,
            remote: None,
        });
    }
    let pushgateway = file
        .report
        .pushgateway
        .map(|p| resolve_pushgateway(p, plan_path))
        .transpose()?;
    let first = targets[0].clone();
    Ok(Migration {
        plan_path: plan_path.to_path_buf(),
        name: file.metadata.name.0,
        source,
        src,
        target_mount: first.mount,
        target_root: first.root,
        owner: first.owner,
        targets,
        bwlimit: file.transfer.bwlimit.and_then(Rate::limit),
        final_bwlimit: file.transfer.final_bwlimit.and_then(Rate::limit),
        parallelism: file
            .transfer
            .parallelism
            .map_or(DEFAULT_PARALLELISM, |p| p.0.get()),
        time_range: file.transfer.time_range,
        delete_extraneous: file.transfer.delete_extraneous,
        accept_partial_selection: file.transfer.accept_partial_selection,
        exclude_blocks: file.transfer.exclude_blocks.iter().map(|b| b.0).collect(),
        head_repair: file.transfer.head_repair,
        pushgateway,
        source_server,
    })
}

/// Reads `report.pushgateway`'s files: the CA certificates and the secret. Each error names
/// its field; none shows a secret.
fn resolve_pushgateway(
    p: PushgatewayConfig,
    plan_path: &Path,
) -> Result<crate::metrics::Pushgateway, InvalidInput> {
    use crate::metrics::{Auth, CaFile, Secret};
    let base = plan_path.parent().unwrap_or(Path::new("."));
    let err = |field: &str, at: &Spanned<PathBuf>, what: String| {
        InvalidInput(format!(
            "plan file {}: field `report.pushgateway.{field}` (line {}): {what}",
            plan_path.display(),
            at.referenced.line()
        ))
    };
    let path_of = |at: &Spanned<PathBuf>| {
        let p = expand_home(&at.value);
        if p.is_absolute() { p } else { base.join(p) }
    };
    // A secret file's text without its trailing newline; empty is an error.
    let read_secret = |field: &str, at: &Spanned<PathBuf>| {
        let path = path_of(at);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            err(
                field,
                at,
                format!(
                    "cannot read {}: {e}; point it at a file holding only the secret",
                    path.display()
                ),
            )
        })?;
        let secret = text.trim_end_matches(['\n', '\r']);
        if secret.is_empty() {
            return Err(err(field, at, format!("{} is empty", path.display())));
        }
        if secret.chars().any(|c| c.is_control()) {
            return Err(err(
                field,
                at,
                format!(
                    "{} holds more than one line or control characters: write the secret alone, on one line",
                    path.display()
                ),
            ));
        }
        Ok(Secret::new(secret.to_string()))
    };

    let ca = match &p.ca_file {
        None => None,
        Some(at) => {
            let path = path_of(at);
            let pem = std::fs::read(&path).map_err(|e| {
                let what = format!(
                    "cannot read {}: {e}; point it at the PEM file of the CA that signed the gateway's certificate",
                    path.display()
                );
                err("caFile", at, what)
            })?;
            let mut certs = Vec::new();
            for item in ureq::tls::parse_pem(&pem) {
                match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
                    // A key kept in the same file is no CA: not trusted, not an error.
                    Ok(_) => {}
                    Err(e) => {
                        return Err(err(
                            "caFile",
                            at,
                            format!("{} is not valid PEM ({e})", path.display()),
                        ));
                    }
                }
            }
            if certs.is_empty() {
                return Err(err(
                    "caFile",
                    at,
                    format!(
                        "{} holds no certificate: give a PEM file with `-----BEGIN CERTIFICATE-----` blocks",
                        path.display()
                    ),
                ));
            }
            Some(CaFile {
                path,
                roots: ureq::tls::RootCerts::new_with_certs(&certs),
            })
        }
    };
    let auth = match (p.basic_auth, &p.bearer_token_file) {
        (Some(_), Some(at)) => {
            return Err(InvalidInput(format!(
                "plan file {}: fields `report.pushgateway.basicAuth` and `report.pushgateway.bearerTokenFile` (line {}) are both set: use one of them",
                plan_path.display(),
                at.referenced.line()
            )));
        }
        (Some(b), None) => {
            let user = b.username.value;
            if user.is_empty() || user.contains(':') {
                return Err(InvalidInput(format!(
                    "plan file {}: field `report.pushgateway.basicAuth.username` (line {}): give a non-empty name without `:`",
                    plan_path.display(),
                    b.username.referenced.line()
                )));
            }
            Some(Auth::Basic {
                password: read_secret("basicAuth.passwordFile", &b.password_file)?,
                username: user,
            })
        }
        (None, Some(at)) => Some(Auth::Bearer(read_secret("bearerTokenFile", at)?)),
        (None, None) => None,
    };
    Ok(crate::metrics::Pushgateway {
        url: p.url,
        ca,
        auth,
    })
}

/// The JSON Schema of the plan file, from the same types that parse it.
pub fn schema() -> schemars::Schema {
    schemars::schema_for!(PlanFile)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
apiVersion: promigrate/v1
kind: Migration
metadata:
  name: prometheus-ecs
source:
  path: /data
target:
  path: /mnt/pv
  subPath: prometheus-db
  securityContext:
    runAsUser: 1000
    fsGroup: 2000
transfer:
  bwlimit: 200M
  parallelism: 8
  timeRange: { min: \"2025-05-01T00:00:00Z\", max: \"2025-11-01T00:00:00Z\" }
  deleteExtraneous: true
";

    fn err(text: &str) -> String {
        parse(text, Path::new("p.yaml")).unwrap_err().0
    }

    #[test]
    fn parses_the_contract_example() {
        let p = parse(GOOD, Path::new("p.yaml")).unwrap();
        assert_eq!(p.metadata.name.0, "prometheus-ecs");
        assert_eq!(p.transfer.bwlimit.unwrap().limit(), Some(200 << 20));
        assert_eq!(p.transfer.parallelism.unwrap().0.get(), 8);
        let tr = p.transfer.time_range.unwrap();
        assert_eq!(tr.min, Some(1_746_057_600_000));
        assert!(p.transfer.delete_extraneous);
        assert_eq!(
            p.target.unwrap().value.security_context.unwrap().fs_group.0,
            2000
        );
    }

    #[test]
    fn bare_number_bwlimit_is_kib() {
        let p = parse(&GOOD.replace("200M", "50000"), Path::new("p")).unwrap();
        assert_eq!(p.transfer.bwlimit.unwrap().limit(), Some(50000 * 1024));
    }

    #[test]
    fn errors_name_field_and_line() {
        let e = err(&GOOD.replace("parallelism: 8", "parallelism: 0"));
        assert!(
            e.contains("`transfer.parallelism`") && e.contains("line 15"),
            "{e}"
        );
        let e = err(&GOOD.replace("  deleteExtraneous", "  bogus: 1\n  deleteExtraneous"));
        assert!(
            e.contains("`transfer.bogus`") && e.contains("unknown field"),
            "{e}"
        );
        let e = err(&GOOD.replace("runAsUser: 1000", "runAsUser: -1"));
        assert!(
            e.contains("`target.securityContext.runAsUser`") && e.contains("line 11"),
            "{e}"
        );
    }

    #[test]
    fn targets_must_be_one_form_and_not_empty() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().display().to_string();
        let text = GOOD.replace("/data", &dir).replace("/mnt/pv", &dir);
        let resolve_err = |t: &str| {
            resolve(
                parse(t, Path::new("p.yaml")).unwrap(),
                Path::new("p.yaml"),
                &offline,
            )
            .unwrap_err()
            .0
        };
        let m = resolve(
            parse(&text, Path::new("p.yaml")).unwrap(),
            Path::new("p.yaml"),
            &offline,
        )
        .unwrap();
        assert_eq!(m.targets.len(), 1);
        assert_eq!(m.views()[0].target_root, m.target_root);
        let none = text
            .replace("target:", "elsewhere:")
            .replace("elsewhere:", "notarget:");
        assert!(err(&none).contains("notarget"), "unknown field is named");
        let missing =
            text.split("target:").next().unwrap().to_string() + "transfer:\n  parallelism: 2\n";
        let e = resolve_err(&missing);
        assert!(e.contains("`target` is missing"), "{e}");
        let empty = missing.replace("transfer:", "targets: []\ntransfer:");
        let e = resolve_err(&empty);
        assert!(e.contains("`targets`") && e.contains("empty"), "{e}");
    }

    #[test]
    fn a_kubernetes_target_without_path_is_written_through_a_receiver_pod() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().display().to_string();
        let kube = "  kubernetes:\n    namespace: monitoring\n    persistentVolume: pv-0\n    persistentVolumeClaim: data-0\n";
        let text = GOOD
            .replace("/data", &dir)
            .replace("  path: /mnt/pv\n", kube);
        let resolved = |t: &str| {
            resolve(
                parse(t, Path::new("p.yaml")).unwrap(),
                Path::new("p.yaml"),
                &offline,
            )
        };
        let m = resolved(&text).unwrap();
        let t = &m.targets[0];
        assert_eq!(t.mount, Path::new(POD_MOUNT));
        assert_eq!(t.root, Path::new(POD_MOUNT).join("prometheus-db"));
        assert_eq!((t.owner.uid, t.owner.gid), (1000, 2000));
        let k = t.kubernetes.as_ref().unwrap();
        assert_eq!(k.receiver_pod, Some(ReceiverPod::default()));
        assert!(t.remote.is_none(), "reached once its pod runs");

        // The receiver's settings; empty strings are "not given".
        let with = text.replace(
            "persistentVolumeClaim: data-0\n",
            "persistentVolumeClaim: data-0\n    receiver:\n      image: busybox:1.37\n      nodeName: \"\"\n",
        );
        let k = resolved(&with).unwrap().targets[0]
            .kubernetes
            .clone()
            .unwrap();
        assert_eq!(
            k.receiver_pod,
            Some(ReceiverPod {
                image: Some("busybox:1.37".into()),
                node_name: None
            })
        );

        // A mounted target is as before: no pod; `receiver` with `path` is refused.
        let mounted = with.replace("  kubernetes:", &format!("  path: {dir}\n  kubernetes:"));
        let e = resolved(&mounted).unwrap_err().0;
        assert!(
            e.contains("`target.kubernetes`") && e.contains("`receiver`") && e.contains("`path`"),
            "{e}"
        );
        let mounted = text.replace("  kubernetes:", &format!("  path: {dir}\n  kubernetes:"));
        let m = resolved(&mounted).unwrap();
        assert_eq!(m.targets[0].mount, d.path().canonicalize().unwrap());
        assert_eq!(m.targets[0].kubernetes.as_ref().unwrap().receiver_pod, None);

        // Neither `path` nor `kubernetes`: the error says what to give.
        let neither = GOOD.replace("/data", &dir).replace("  path: /mnt/pv\n", "");
        let e = resolved(&neither).unwrap_err().0;
        assert!(
            e.contains("`target.path` is missing") && e.contains("receiver pod"),
            "{e}"
        );

        // Two pod targets mount their claims at the same path: told apart by their PV.
        let two = |pv1: &str| {
            let t0 = "  - subPath: prometheus-db\n    securityContext: { runAsUser: 1000, fsGroup: 2000 }\n    kubernetes: { namespace: m, persistentVolume: pv-0, persistentVolumeClaim: c-0 }\n";
            let t1 = t0.replace("pv-0", pv1).replace("c-0", "c-1");
            GOOD.replace("/data", &dir).replace(
                "target:\n  path: /mnt/pv\n  subPath: prometheus-db\n  securityContext:\n    runAsUser: 1000\n    fsGroup: 2000\n",
                &format!("targets:\n{t0}{t1}"),
            )
        };
        assert_eq!(resolved(&two("pv-1")).unwrap().targets.len(), 2);
        let e = resolved(&two("pv-0")).unwrap_err().0;
        assert!(e.contains("PersistentVolume pv-0 is already"), "{e}");
    }

    #[test]
    fn a_kubernetes_target_takes_what_the_plan_leaves_out_from_the_cluster() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().display().to_string();
        let text = GOOD
            .replace("/data", &dir)
            .replace("/mnt/pv", &dir)
            .replace(
                "  subPath: prometheus-db\n  securityContext:\n    runAsUser: 1000\n    fsGroup: 2000\n",
                "  kubernetes:\n    namespace: monitoring\n    prometheus: k8s\n    replica: 1\n",
            );
        let asked = std::cell::RefCell::new(Vec::new());
        let derive = |k: &KubeTarget, w: Wants| {
            asked
                .borrow_mut()
                .push((k.prometheus.clone(), k.replica, w));
            Ok(ClusterFacts {
                stateful_set: Some("prometheus-k8s".into()),
                persistent_volume_claim: "prometheus-k8s-db-prometheus-k8s-1".into(),
                persistent_volume: "pv-1".into(),
                owner: Some(Owner {
                    uid: 1000,
                    gid: 2000,
                }),
                sub_path: Some(Some("prometheus-db".into())),
                derived: vec!["subPath prometheus-db".into()],
            })
        };
        let m = resolve(
            parse(&text, Path::new("p.yaml")).unwrap(),
            Path::new("p.yaml"),
            &derive,
        )
        .unwrap();
        let wants = Wants {
            owner: true,
            sub_path: true,
        };
        assert_eq!(
            asked.borrow().as_slice(),
            &[(Some("k8s".to_string()), 1, wants)]
        );
        assert_eq!(m.target_root, d.path().join("prometheus-db"));
        assert_eq!((m.owner.uid, m.owner.gid), (1000, 2000));
        let k = m.targets[0].kubernetes.as_ref().unwrap();
        assert_eq!(k.stateful_set.as_deref(), Some("prometheus-k8s"));
        assert_eq!(k.persistent_volume, "pv-1");
        assert_eq!(k.derived, ["subPath prometheus-db"]);

        // A pod that does not say who it runs as, with no securityContext in the plan.
        let silent = |_: &KubeTarget, _: Wants| {
            Ok(ClusterFacts {
                persistent_volume_claim: "c".into(),
                persistent_volume: "pv".into(),
                sub_path: Some(None),
                ..Default::default()
            })
        };
        let e = resolve(
            parse(&text, Path::new("p.yaml")).unwrap(),
            Path::new("p.yaml"),
            &silent,
        )
        .unwrap_err()
        .0;
        assert!(
            e.contains("securityContext") && e.contains("give them in the plan"),
            "{e}"
        );
        // The cluster cannot be read: the error names what was to be taken from it.
        let e = resolve(
            parse(&text, Path::new("p.yaml")).unwrap(),
            Path::new("p.yaml"),
            &offline,
        )
        .unwrap_err()
        .0;
        assert!(
            e.contains("securityContext, subPath") && e.contains("no cluster access"),
            "{e}"
        );
        // No kubernetes, no securityContext: a field error.
        let plain = GOOD
            .replace("/data", &dir)
            .replace("/mnt/pv", &dir)
            .replace(
                "  securityContext:\n    runAsUser: 1000\n    fsGroup: 2000\n",
                "",
            );
        let e = resolve(
            parse(&plain, Path::new("p.yaml")).unwrap(),
            Path::new("p.yaml"),
            &offline,
        )
        .unwrap_err()
        .0;
        assert!(
            e.contains("field `target` (line") && e.contains("missing field `securityContext`"),
            "{e}"
        );
        // statefulSet and prometheus together; replica without prometheus.
        for (bad, says) in [
            (
                "    prometheus: k8s\n",
                "    prometheus: k8s\n    statefulSet: s\n",
            ),
            (
                "    prometheus: k8s\n",
                "    persistentVolumeClaim: c\n    statefulSet: s\n    replica: 1\n",
            ),
        ] {
            let t = text
                .replace(bad, says)
                .replace("    replica: 1\n    replica: 1\n", "    replica: 1\n");
            let e = resolve(
                parse(&t, Path::new("p.yaml")).unwrap(),
                Path::new("p.yaml"),
                &derive,
            )
            .unwrap_err()
            .0;
            assert!(e.contains("`target.kubernetes`"), "{e}");
        }
    }

    /// Resolves GOOD (source and target in `d`) with `report` appended; the plan file is
    /// `d/p.yaml`.
    fn resolve_with_report(d: &Path, report: &str) -> Result<Migration, String> {
        let dir = d.display().to_string();
        let text = GOOD.replace("/data", &dir).replace("/mnt/pv", &dir) + report;
        let plan = d.join("p.yaml");
        resolve(parse(&text, &plan).map_err(|e| e.0)?, &plan, &offline).map_err(|e| e.0)
    }

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBAA==\n-----END CERTIFICATE-----\n";

    #[test]
    fn pushgateway_files_are_read_relative_to_the_plan_and_secrets_lose_their_newline() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("tls")).unwrap();
        std::fs::write(d.path().join("tls/ca.pem"), PEM).unwrap();
        std::fs::write(d.path().join("pw"), "s3cret\r\n").unwrap();
        std::fs::write(d.path().join("token"), "tok-123\n").unwrap();
        let report = "report:\n  pushgateway:\n    url: https://gw:443\n    caFile: tls/ca.pem\n";
        let m = resolve_with_report(
            d.path(),
            &format!(
                "{report}    basicAuth:\n      username: promigrate\n      passwordFile: pw\n"
            ),
        )
        .unwrap();
        let gw = m.pushgateway.unwrap();
        assert_eq!(gw.url, "https://gw:443");
        assert_eq!(gw.ca.as_ref().unwrap().path, d.path().join("tls/ca.pem"));
        match &gw.auth {
            Some(crate::metrics::Auth::Basic { username, password }) => {
                assert_eq!(username, "promigrate");
                assert_eq!(password.expose(), "s3cret");
            }
            other => panic!("{other:?}"),
        }
        assert!(!format!("{gw:?}").contains("s3cret"), "{gw:?}");
        let m = resolve_with_report(d.path(), &format!("{report}    bearerTokenFile: token\n"))
            .unwrap();
        match m.pushgateway.unwrap().auth {
            Some(crate::metrics::Auth::Bearer(t)) => assert_eq!(t.expose(), "tok-123"),
            other => panic!("{other:?}"),
        }
        // No caFile, no credentials: the system trust store, no header.
        let m =
            resolve_with_report(d.path(), "report:\n  pushgateway:\n    url: http://gw\n").unwrap();
        let gw = m.pushgateway.unwrap();
        assert!(gw.ca.is_none() && gw.auth.is_none());
    }

    #[test]
    fn pushgateway_file_errors_name_the_field() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("ca.pem"), PEM).unwrap();
        std::fs::write(d.path().join("not-pem"), "hello\n").unwrap();
        std::fs::write(
            d.path().join("bad-pem"),
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(d.path().join("pw"), "s3cret\n").unwrap();
        std::fs::write(d.path().join("empty"), "\n").unwrap();
        std::fs::write(d.path().join("two-lines"), "a\nb\n").unwrap();
        let gw = "report:\n  pushgateway:\n    url: https://gw:443\n";
        let basic = |user: &str, file: &str| {
            format!("    basicAuth:\n      username: {user}\n      passwordFile: {file}\n")
        };
        for (more, field, what) in [
            (
                "    caFile: nope.pem\n",
                "`report.pushgateway.caFile` (line 21)",
                "cannot read",
            ),
            (
                "    caFile: not-pem\n",
                "`report.pushgateway.caFile`",
                "holds no certificate",
            ),
            (
                "    caFile: bad-pem\n",
                "`report.pushgateway.caFile`",
                "is not valid PEM",
            ),
            (
                &basic("promigrate", "nope"),
                "`report.pushgateway.basicAuth.passwordFile` (line 23)",
                "cannot read",
            ),
            (
                &basic("promigrate", "empty"),
                "`report.pushgateway.basicAuth.passwordFile`",
                "is empty",
            ),
            (
                &basic("promigrate", "two-lines"),
                "`report.pushgateway.basicAuth.passwordFile`",
                "more than one line",
            ),
            (
                &basic("\"a:b\"", "pw"),
                "`report.pushgateway.basicAuth.username` (line 22)",
                "without `:`",
            ),
            (
                "    bearerTokenFile: nope\n",
                "`report.pushgateway.bearerTokenFile` (line 21)",
                "cannot read",
            ),
            (
                &(basic("promigrate", "pw") + "    bearerTokenFile: pw\n"),
                "`report.pushgateway.basicAuth` and `report.pushgateway.bearerTokenFile` (line 24)",
                "use one of them",
            ),
        ] {
            let e = resolve_with_report(d.path(), &format!("{gw}{more}")).unwrap_err();
            assert!(e.contains(field) && e.contains(what), "{more}: {e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
    }

    #[test]
    fn time_range_overlap_is_half_open() {
        let tr = TimeRange {
            min: Some(100),
            max: Some(200),
        };
        assert!(tr.overlaps(50, 101));
        assert!(
            !tr.overlaps(50, 100),
            "a block ending at min does not overlap"
        );
        assert!(tr.overlaps(199, 300));
        assert!(
            !tr.overlaps(200, 300),
            "a block starting at max does not overlap"
        );
    }
}
