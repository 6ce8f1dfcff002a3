//! The receiver: `promigrate receive`, run beside the volume (in a pod that mounts the
//! claim). It answers the driver's requests on stdin/stdout by doing them on the volume
//! through [`Local`], exactly as a local apply does: every path resolved below the volume's
//! descriptor, files staged, fsync'ed and renamed, the directory lock held while the driver
//! asks.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::frame::{self, FrameError, Kind};
use super::msg::{Answer, Reply, Request, WireError};
use crate::lock::Guard;
use crate::plan::{LocalSurvey, Survey};
use crate::volume::{DryRun, Local, OutFile, Target};
use std::sync::atomic::AtomicBool;

/// A file being written for the driver.
struct Open {
    file: File,
    rel: PathBuf,
    /// The first error of its data frames, reported when the driver finishes it.
    failed: Option<io::Error>,
}

/// The receiver's state for one stream.
#[derive(Default)]
struct State {
    /// The volume, for the files written through handles.
    volume: Option<Local>,
    /// The volume as apply works on it: itself, or a dry run's record of it.
    target: Option<Box<dyn Target>>,
    /// The volume as plan and verify read it.
    survey: Option<LocalSurvey>,
    files: HashMap<u32, Open>,
    next: u32,
    /// Opened for a dry run: nothing is written.
    dry_run: bool,
    lock: Option<Guard>,
    /// How many of the driver's guards hold `lock`.
    locks: usize,
    read_lock: Option<Guard>,
}

/// Serves one driver until its stream ends. A stream cut inside a frame (the driver died, or
/// the connection was cut) ends the service with an error; what was written stays as it
/// is, unfinished files included (a resumed transfer continues them).
pub fn serve(input: impl Read, output: impl Write) -> Result<(), FrameError> {
    let mut r = BufReader::with_capacity(frame::MAX_DATA + 64, input);
    let mut w = BufWriter::new(output);
    frame::write_hello(&mut w)?;
    w.flush()?;
    frame::read_hello(&mut r)?;
    let mut st = State::default();
    while let Some(f) = frame::read_frame(&mut r)? {
        match f.kind {
            Kind::Data => st.data(f.id, &f.payload)?,
            Kind::Request => {
                let reply: Reply = match serde_json::from_slice::<Request>(&f.payload) {
                    Ok(req) => st.answer(req),
                    Err(e) => Err(WireError::msg(format!(
                        "a request this receiver does not understand ({e}): use the same promigrate on both sides"
                    ))),
                };
                let body =
                    serde_json::to_vec(&reply).map_err(|e| FrameError::Protocol(e.to_string()))?;
                frame::write_frame(&mut w, Kind::Reply, f.id, &body)?;
                w.flush()?;
            }
            Kind::Reply => return Err(FrameError::Protocol("a reply sent to the receiver".into())),
        }
    }
    Ok(())
}

impl State {
    fn volume(&self) -> Result<&Local, WireError> {
        self.volume
            .as_ref()
            .ok_or_else(|| WireError::msg("no target opened yet (open comes first)"))
    }

    fn target(&self) -> Result<&dyn Target, WireError> {
        self.target
            .as_deref()
            .ok_or_else(|| WireError::msg("no target opened yet (open comes first)"))
    }

    fn survey(&self) -> Result<&LocalSurvey, WireError> {
        self.survey
            .as_ref()
            .ok_or_else(|| WireError::msg("no target opened yet (open comes first)"))
    }

    fn data(&mut self, handle: u32, payload: &[u8]) -> Result<(), FrameError> {
        let (off, bytes) = frame::data_parts(payload)?;
        let Some(open) = self.files.get_mut(&handle) else {
            // Data for a handle discarded since (the driver stopped that copy): ignored.
            return Ok(());
        };
        if open.failed.is_none()
            && let Err(e) = open.file.write_all_at(bytes, off)
        {
            open.failed = Some(e);
        }
        Ok(())
    }

    fn answer(&mut self, req: Request) -> Reply {
        let io = |e: io::Error| WireError::of(&e);
        let any = |e: anyhow::Error| WireError::msg(format!("{e:#}"));
        let p = |s: &str| PathBuf::from(s);
        match req {
            Request::Open {
                mount,
                root,
                owner,
                dry_run,
                read_only,
            } => {
                let v = Local::open(&mount, &root, owner).map_err(any)?;
                let t: Box<dyn Target> = if dry_run {
                    Box::new(DryRun::new(Local::open(&mount, &root, owner).map_err(any)?))
                } else {
                    Box::new(Local::open(&mount, &root, owner).map_err(any)?)
                };
                self.volume = Some(v);
                self.target = Some(t);
                self.dry_run = dry_run;
                self.survey = Some(LocalSurvey {
                    mount,
                    root,
                    owner,
                    mounted_read_only: read_only,
                });
                Ok(Answer::Done)
            }
            Request::Stat { rel } => Ok(Answer::Entry(self.target()?.stat(&p(&rel)).map_err(io)?)),
            Request::List { rel } => {
                let names = self.target()?.list(&p(&rel)).map_err(io)?;
                Ok(Answer::Names(
                    names.iter().map(|n| n.as_bytes().to_vec()).collect(),
                ))
            }
            Request::MakeDirs { rel } => {
                self.target()?.make_dirs(&p(&rel)).map_err(any)?;
                Ok(Answer::Done)
            }
            Request::EnsureDir { rel } => {
                let changed = self.target()?.ensure_dir(&p(&rel)).map_err(any)?;
                Ok(Answer::Changed(changed))
            }
            Request::Create { rel, resume } => {
                if self.dry_run {
                    return Err(WireError::msg(format!(
                        "a dry run writes nothing (asked to create {rel})"
                    )));
                }
                let v = self.volume()?;
                let rel = p(&rel);
                let (file, offset) = if resume {
                    let f = v.open_to_resume(&rel).map_err(io)?;
                    let len = f.metadata().map_err(io)?.len();
                    (f, len)
                } else {
                    (v.create_local(&rel).map_err(io)?, 0)
                };
                self.next = self.next.wrapping_add(1);
                let handle = self.next;
                self.files.insert(
                    handle,
                    Open {
                        file,
                        rel,
                        failed: None,
                    },
                );
                Ok(Answer::Opened { handle, offset })
            }
            Request::Finish {
                handle,
                mode,
                times,
                durable,
            } => {
                let mut open = self
                    .files
                    .remove(&handle)
                    .ok_or_else(|| WireError::msg(format!("no open file with handle {handle}")))?;
                let v = self.volume()?;
                let shown = v.path(&open.rel);
                // The driver names the file; the errno (ENOSPC: the volume is full) stays.
                if let Some(e) = open.failed {
                    return Err(io(e));
                }
                open.file
                    .finish(&shown, v.owner(), mode, times, durable)
                    .map_err(io)?;
                Ok(Answer::Done)
            }
            Request::Discard { handle } => {
                self.files.remove(&handle);
                Ok(Answer::Done)
            }
            Request::SetTimes { rel, times } => {
                self.target()?.set_times(&p(&rel), times).map_err(io)?;
                Ok(Answer::Done)
            }
            Request::SyncFile { rel } => {
                self.target()?.sync_file(&p(&rel)).map_err(io)?;
                Ok(Answer::Done)
            }
            Request::SyncDir { rel } => {
                self.target()?.sync_dir(&p(&rel)).map_err(io)?;
                Ok(Answer::Done)
            }
            Request::Rename { from, to } => {
                self.target()?.rename(&p(&from), &p(&to)).map_err(io)?;
                Ok(Answer::Done)
            }
            Request::RemoveFile { rel } => {
                self.target()?.remove_file(&p(&rel)).map_err(io)?;
                Ok(Answer::Done)
            }
            Request::RemoveTree { rel } => {
                self.target()?.remove_tree(&p(&rel)).map_err(io)?;
                Ok(Answer::Done)
            }
            Request::RemoveEmptyDir { rel } => {
                self.target()?.remove_empty_dir(&p(&rel)).map_err(io)?;
                Ok(Answer::Done)
            }
            Request::FixOwner { rel } => {
                let changed = self.target()?.fix_owner(&p(&rel)).map_err(io)?;
                Ok(Answer::Changed(changed))
            }
            Request::MarkCopied { rel, name } => {
                self.target()?.mark_copied(&p(&rel), &name).map_err(io)?;
                Ok(Answer::Done)
            }
            Request::Lock => {
                if self.lock.is_none() {
                    self.lock = self.target()?.lock().map_err(any)?;
                }
                self.locks += 1;
                Ok(Answer::Done)
            }
            Request::Unlock => {
                self.locks = self.locks.saturating_sub(1);
                if self.locks == 0 {
                    self.lock = None;
                }
                Ok(Answer::Done)
            }
            Request::ReadUnlock => {
                self.read_lock = None;
                Ok(Answer::Done)
            }
            Request::WouldWrite { rel, bytes } => {
                self.target()?.would_write(&p(&rel), bytes);
                Ok(Answer::Done)
            }
            Request::Recorded => Ok(Answer::Ops(self.target()?.recorded())),
            Request::Scan { depth } => {
                let inv = self
                    .survey()?
                    .scan(depth)
                    .map_err(|e| WireError::msg(e.to_string()))?;
                Ok(Answer::Inventory(Box::new(inv)))
            }
            Request::Whereabouts => {
                let s = self.survey()?;
                Ok(Answer::Whereabouts {
                    root: s.whereabouts(),
                    device: s.device(),
                })
            }
            Request::Layout => Ok(Answer::Layout(self.survey()?.layout())),
            Request::Writer => Ok(Answer::Holder(self.survey()?.writer())),
            Request::ReadLock => match self.survey()?.read_lock() {
                Ok(g) => {
                    self.read_lock = g;
                    Ok(Answer::Holder(None))
                }
                Err(crate::plan::survey::Busy(h)) => Ok(Answer::Holder(Some(h))),
            },
            Request::Space { writes } => {
                let s = self.survey()?.space(&writes).map_err(any)?;
                Ok(Answer::Space(s))
            }
            Request::WriteCheck { plan } => {
                let (blockers, warnings) = self.survey()?.write_check(&plan).map_err(any)?;
                Ok(Answer::Findings { blockers, warnings })
            }
            Request::Read { rel } => Ok(Answer::Bytes(self.survey()?.read(&rel).map_err(io)?)),
            Request::IsCopied { dir, name } => {
                Ok(Answer::Changed(self.survey()?.is_copied(&dir, &name)))
            }
            Request::Hashes { rels, parallelism } => {
                let h = self.survey()?.hashes(
                    &rels,
                    parallelism,
                    &crate::progress::Hidden,
                    &AtomicBool::new(false),
                );
                Ok(Answer::Hashes(h))
            }
            Request::Check { depth, parallelism } => {
                let s = self.survey()?;
                let inv = s
                    .scan(crate::plan::inventory::Depth::WithMeta)
                    .map_err(|e| WireError::msg(e.to_string()))?;
                let found = s.check(
                    &inv,
                    depth,
                    parallelism,
                    &crate::progress::Hidden,
                    &AtomicBool::new(false),
                );
                Ok(Answer::Problems(found))
            }
        }
    }
}
