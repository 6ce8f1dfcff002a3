//! Writing a target that only a pod in the cluster can reach: promigrate runs there as a
//! receiver (`promigrate receive`) and does on the volume what a local apply does, and the
//! promigrate that reads the source drives it over one stream (the pod's stdin/stdout).
//!
//! - [`frame`]: the framing, each frame checked, so a cut or damaged stream is never data;
//! - [`msg`]: the requests and replies;
//! - [`receiver`]: the receiving end, over a [`crate::volume::Local`];
//! - [`client`]: the driving end.

pub mod client;
pub mod frame;
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

/// Starts a receiver for every target when [`COMMAND_ENV`] is set, and sets each target's
/// [`crate::plan::file::Reach`] to it.
pub fn attach(m: &mut crate::plan::Migration) -> anyhow::Result<Attached> {
    let mut attached = Attached::default();
    if let Some(t) = m.targets.iter().find(|t| {
        t.kubernetes
            .as_ref()
            .is_some_and(|k| k.receiver_pod.is_some())
    }) {
        anyhow::bail!(
            "target {}: a target without `path` is written through a receiver pod, which this build cannot start yet: mount the volume and give its `path`",
            t.root.display()
        );
    }
    let Some(cmd) = std::env::var_os(COMMAND_ENV).filter(|c| !c.is_empty()) else {
        return Ok(attached);
    };
    let shown = cmd.to_string_lossy().into_owned();
    for (i, t) in m.targets.iter_mut().enumerate() {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&cmd)
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
        let name = format!("receiver {} (target {})", i + 1, t.root.display());
        let rx = client::Receiver::connect(name, Box::new(out), Box::new(inp))?;
        t.remote = Some(survey::reach(
            Arc::new(rx),
            t.mount.clone(),
            t.root.clone(),
            t.owner,
        )?);
    }
    Ok(attached)
}
