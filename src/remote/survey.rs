//! What plan and verify read of a target reached through a receiver: each question is
//! answered beside the volume (the scan, the hashes, the format checks), and only the
//! answer travels.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::anyhow;

use super::client::Receiver;
use super::msg::{Answer, Request};
use crate::lock::Guard;
use crate::plan::inventory::{self, Inventory, ScanError};
use crate::plan::preflight::Writes;
use crate::plan::survey::{Busy, Layout, Space, Survey, WritePlan};
use crate::progress::Progress;
use crate::relpath::RelPath;
use crate::tsdb::check;

/// A target's TSDB directory, read through its receiver (opened by
/// [`super::target::Remote::open`] on the same connection).
pub struct RemoteSurvey {
    rx: Arc<Receiver>,
    shown: PathBuf,
}

impl RemoteSurvey {
    /// The TSDB directory `root` as the receiver sees it.
    pub fn new(rx: Arc<Receiver>, root: &Path) -> RemoteSurvey {
        let shown = super::target::shown(&rx, root);
        RemoteSurvey { rx, shown }
    }

    fn ask(&self, req: &Request) -> anyhow::Result<Answer> {
        self.rx.call(req).map_err(|e| anyhow!("{e}"))
    }
}

fn odd(a: &Answer) -> anyhow::Error {
    anyhow!("the receiver answered {a:?}: use the same promigrate on both sides")
}

impl Survey for RemoteSurvey {
    fn shown(&self) -> &Path {
        &self.shown
    }

    fn here(&self) -> Option<PathBuf> {
        None
    }

    fn device(&self) -> Option<(String, u64)> {
        match self.ask(&Request::Whereabouts) {
            Ok(Answer::Whereabouts { device, .. }) => device,
            _ => None,
        }
    }

    fn whereabouts(&self) -> Option<crate::fsutil::Whereabouts> {
        match self.ask(&Request::Whereabouts) {
            Ok(Answer::Whereabouts { root, .. }) => root,
            _ => None,
        }
    }

    fn scan(&self, depth: inventory::Depth) -> Result<Inventory, ScanError> {
        let err = |cause| ScanError {
            path: self.shown.clone(),
            cause,
        };
        match self.rx.call(&Request::Scan { depth }).map_err(err)? {
            Answer::Inventory(inv) => Ok(*inv),
            a => Err(err(io::Error::other(odd(&a).to_string()))),
        }
    }

    fn layout(&self) -> Layout {
        let failed = |why: String| Layout {
            outside: vec![why],
            ..Layout::default()
        };
        match self.ask(&Request::Layout) {
            Ok(Answer::Layout(l)) => l,
            Ok(a) => failed(odd(&a).to_string()),
            Err(e) => failed(format!("cannot check the target's path: {e:#}")),
        }
    }

    fn writer(&self) -> Option<String> {
        match self.ask(&Request::Writer) {
            Ok(Answer::Holder(h)) => h,
            _ => None,
        }
    }

    fn read_lock(&self) -> Result<Option<Guard>, Busy> {
        match self.ask(&Request::ReadLock) {
            Ok(Answer::Holder(Some(h))) => Err(Busy(h)),
            Ok(_) => Ok(Some(super::target::release_on_drop(
                self.rx.clone(),
                Request::ReadUnlock,
            ))),
            // The verify's reads then fail, naming the broken stream.
            Err(_) => Ok(None),
        }
    }

    fn space(&self, writes: &Writes) -> anyhow::Result<Space> {
        match self.ask(&Request::Space {
            writes: writes.clone(),
        })? {
            Answer::Space(s) => Ok(s),
            a => Err(odd(&a)),
        }
    }

    fn write_check(&self, plan: &WritePlan) -> anyhow::Result<(Vec<String>, Vec<String>)> {
        match self.ask(&Request::WriteCheck { plan: plan.clone() })? {
            Answer::Findings { blockers, warnings } => Ok((blockers, warnings)),
            a => Err(odd(&a)),
        }
    }

    fn read(&self, rel: &str) -> io::Result<Vec<u8>> {
        match self.rx.call(&Request::Read { rel: rel.into() })? {
            Answer::Bytes(b) => Ok(b),
            a => Err(io::Error::other(odd(&a).to_string())),
        }
    }

    fn is_copied(&self, dir: &str, name: &str) -> bool {
        matches!(
            self.ask(&Request::IsCopied {
                dir: dir.into(),
                name: name.into()
            }),
            Ok(Answer::Changed(true))
        )
    }

    fn hashes(
        &self,
        rels: &[RelPath],
        parallelism: usize,
        // The receiver hashes where the volume is; no byte count comes back.
        _progress: &dyn Progress,
        _cancel: &AtomicBool,
    ) -> Vec<Result<u128, String>> {
        let got = self.ask(&Request::Hashes {
            rels: rels.to_vec(),
            parallelism,
        });
        match got {
            Ok(Answer::Hashes(h)) if h.len() == rels.len() => h,
            Ok(a) => vec![Err(odd(&a).to_string()); rels.len()],
            Err(e) => vec![Err(format!("{e:#}")); rels.len()],
        }
    }

    fn check(
        &self,
        _inv: &Inventory,
        depth: check::Depth,
        parallelism: usize,
        _progress: &dyn Progress,
        _cancel: &AtomicBool,
    ) -> Vec<check::Problem> {
        match self.ask(&Request::Check { depth, parallelism }) {
            Ok(Answer::Problems(p)) => p,
            Ok(a) => vec![check::Problem::of_target(odd(&a).to_string())],
            Err(e) => vec![check::Problem::of_target(format!(
                "the format checks did not run: {e:#}"
            ))],
        }
    }
}

/// How plan, apply and verify reach a target through `rx`: its TSDB directory `root` on the
/// volume mounted at `mount`, as the receiver sees them.
pub fn reach(
    rx: Arc<Receiver>,
    mount: PathBuf,
    root: PathBuf,
    owner: crate::perms::Owner,
) -> anyhow::Result<crate::plan::file::Reach> {
    // Opened now, so that plan's questions have a directory to ask about.
    rx.open(mount.clone(), root.clone(), owner, false)
        .map_err(|e| anyhow!("{}: {e}", rx.name))?;
    let survey = Arc::new(RemoteSurvey::new(rx.clone(), &root));
    let open = move |dry_run: bool| -> anyhow::Result<Box<dyn crate::volume::Target>> {
        Ok(Box::new(super::target::Remote::open(
            rx.clone(),
            &mount,
            &root,
            owner,
            dry_run,
        )?))
    };
    Ok(crate::plan::file::Reach {
        survey,
        open: Arc::new(open),
    })
}
