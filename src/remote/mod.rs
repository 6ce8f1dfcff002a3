//! Writing a target that only a pod in the cluster can reach: promigrate runs there as a
//! receiver (`promigrate receive`) and does on the volume what a local apply does, and the
//! promigrate that reads the source drives it over one stream (a port-forward to the pod,
//! or the pod's stdin/stdout: [`listen`]).
//!
//! - [`frame`]: the framing, each frame checked, so a cut or damaged stream is never data;
//! - [`msg`]: the requests and replies;
//! - [`receiver`]: the receiving end, over a [`crate::volume::Local`];
//! - [`client`]: the driving end;
//! - [`listen`]: the receiver reached through a port-forward.

pub mod client;
pub mod frame;
pub mod listen;
pub mod msg;
pub mod receiver;
pub mod survey;
pub mod target;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;

/// The environment variable that makes every target of a run be reached through a receiver
/// started by this command (run with `sh -c`, the target's paths then being as the command's
/// host sees them), instead of written here. For tests, and for a volume attached to a host
/// that a command reaches (`ssh node promigrate receive`).
pub const COMMAND_ENV: &str = "PROMIGRATE_RECEIVER_COMMAND";

/// Receivers started for a run; stopped when it is dropped.
#[derive(Default)]
pub struct Attached {
    children: Vec<Child>,
    /// Receiver pods: deleted after the children are stopped.
    pods: Vec<crate::k8s::receiver::PodGuard>,
    /// Targets whose StatefulSet was scaled to 0 so that their receiver could mount a claim
    /// a pod held ([`crate::k8s::receiver::free_claim`]), and the changes made.
    pub quiesced: Vec<crate::plan::file::KubeTarget>,
    pub changes: Vec<crate::k8s::Change>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        for c in &mut self.children {
            // Everything asked was answered before the command ended: nothing is lost.
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts a receiver pod for every target without `path`, and a receiver for every other
/// target when [`COMMAND_ENV`] is set, and sets each target's [`crate::plan::file::Reach`]
/// to it. Unless the command `writes`, the pods mount their claims read-only (a plan or a
/// verify changes nothing on the volume, not even the kubelet's fsGroup ownership). A claim
/// that a pod holds is freed first or not, as `held` says.
pub fn attach(
    m: &mut crate::plan::Migration,
    rt: &tokio::runtime::Runtime,
    writes: bool,
    held: crate::k8s::receiver::Held,
) -> anyhow::Result<Attached> {
    let mut attached = Attached::default();
    match attach_to(m, rt, writes, held, &mut attached) {
        Ok(()) => Ok(attached),
        Err(e) => {
            // The receivers started so far go first (a pod of theirs may hold a claim).
            drop(std::mem::take(&mut attached.pods));
            let notes = attached.give_back(rt);
            Err(notes.into_iter().fold(e, |e, n| e.context(n)))
        }
    }
}

impl Attached {
    /// Scales back the StatefulSets scaled down for the receivers (see [`Attached::quiesced`]),
    /// for a run that stops before it copies anything; says what it did, one line a target.
    pub fn give_back(&mut self, rt: &tokio::runtime::Runtime) -> Vec<String> {
        let quiesced = std::mem::take(&mut self.quiesced);
        let notes = rt.block_on(crate::k8s::receiver::scale_back(
            quiesced,
            &mut self.changes,
        ));
        crate::k8s::receiver::forget_early();
        notes
    }
}

/// [`attach`], filling in `attached` as it goes.
fn attach_to(
    m: &mut crate::plan::Migration,
    rt: &tokio::runtime::Runtime,
    writes: bool,
    held: crate::k8s::receiver::Held,
    attached: &mut Attached,
) -> anyhow::Result<()> {
    // Targets without `path`: a receiver pod on the claim. Each claim freed first if a pod
    // holds it, one after the other; then the pods start together (an HA pair's two pods
    // take one pod start, not two).
    let migration = m.name.clone();
    let wanted = m.targets.iter().any(|t| {
        t.kubernetes
            .as_ref()
            .is_some_and(|k| k.receiver_pod.is_some())
    });
    // The binary first (a dynamic one is said before anything is asked of a cluster), then
    // per target the access check, before the claim is read or anything changed.
    let bin = if wanted {
        Some(crate::k8s::receiver::binary()?)
    } else {
        None
    };
    let mut clusters = Vec::new();
    for (i, t) in m.targets.iter().enumerate() {
        let Some(k) = t.kubernetes.as_ref().filter(|k| k.receiver_pod.is_some()) else {
            continue;
        };
        let cluster = rt.block_on(crate::k8s::connect(k))?;
        rt.block_on(crate::k8s::receiver::check_access(&cluster, &k.namespace))?;
        clusters.push((i, cluster));
    }
    for (i, cluster) in &clusters {
        let Some(k) = m.targets[*i].kubernetes.as_ref() else {
            continue;
        };
        if rt.block_on(crate::k8s::receiver::must_free(cluster, k, held))? {
            // Noted first: a scale-down that fails part-way is given back too.
            attached.quiesced.push(k.clone());
            crate::k8s::receiver::note_early(k);
            let mut changes = Vec::new();
            let quiesced = rt.block_on(crate::k8s::quiesce(cluster, k, &mut changes));
            attached.changes.extend(changes);
            quiesced?;
        }
    }
    if let (false, Some(bin)) = (clusters.is_empty(), bin) {
        let targets = &m.targets;
        let started = rt.block_on(futures_util::future::join_all(clusters.iter().map(
            |(i, cluster)| {
                let t = &targets[*i];
                let k = t.kubernetes.as_ref().expect("a receiver pod target");
                crate::k8s::receiver::start(cluster, k, &migration, t.owner, &bin, !writes)
            },
        )));
        // Every pod that started is kept (and so deleted at the end) before any error.
        let mut streams = Vec::new();
        let mut failed = None;
        for ((i, _), r) in clusters.iter().zip(started) {
            match r {
                Ok((stream, pod)) => {
                    attached.pods.push(pod);
                    streams.push((*i, stream));
                }
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        for (i, stream) in streams {
            // Off the runtime's threads: the hello blocks on the pod's stream.
            reach_through(
                &mut m.targets[i],
                stream.name,
                stream.input,
                stream.output,
                !writes,
            )?;
        }
    }
    let Some(cmd) = std::env::var_os(COMMAND_ENV).filter(|c| !c.is_empty()) else {
        return Ok(());
    };
    let shown = cmd.to_string_lossy().into_owned();
    for (i, t) in m.targets.iter_mut().enumerate() {
        if t.remote.is_some() {
            continue;
        }
        use std::os::unix::process::CommandExt;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            // Its own process group: a Ctrl-C stops the driver at its next chunk, and the
            // driver ends the receiver; the terminal's signal does not cut it mid-request.
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start the receiver command {shown:?}: {e}"))?;
        let (out, inp) = (child.stdout.take(), child.stdin.take());
        attached.children.push(child);
        let (Some(out), Some(inp)) = (out, inp) else {
            anyhow::bail!("the receiver command {shown:?} has no stdin/stdout");
        };
        reach_through(
            t,
            format!("receiver {}", i + 1),
            Box::new(out),
            Box::new(inp),
            false,
        )?;
    }
    Ok(())
}

/// Connects to the receiver at the other end of `input`/`output` and makes it the way to
/// target `t`; `read_only`: its volume is mounted read-only.
fn reach_through(
    t: &mut crate::plan::file::TargetSpec,
    name: String,
    input: Box<dyn std::io::Read + Send>,
    output: Box<dyn std::io::Write + Send>,
    read_only: bool,
) -> anyhow::Result<()> {
    let mut rx = client::Receiver::connect(name, input, output)?;
    rx.read_only = read_only;
    t.remote = Some(survey::reach(
        Arc::new(rx),
        t.mount.clone(),
        t.root.clone(),
        t.owner,
    )?);
    Ok(())
}
