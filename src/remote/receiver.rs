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
use std::path::{Path, PathBuf};

use super::frame::{self, FrameError, Kind};
use super::msg::{Answer, Reply, Request, WireEntry, WireError};
use crate::lock::Guard;
use crate::volume::{Local, Target};

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
    volume: Option<Local>,
    files: HashMap<u32, Open>,
    next: u32,
    lock: Option<Guard>,
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
            Request::Open { mount, root, owner } => {
                let v = Local::open(&mount, &root, owner).map_err(any)?;
                self.volume = Some(v);
                Ok(Answer::Done)
            }
            Request::Stat { rel } => {
                let e = self.volume()?.stat(&p(&rel)).map_err(io)?;
                Ok(Answer::Entry(WireEntry {
                    is_dir: e.is_dir,
                    is_file: e.is_file,
                    size: e.size,
                    mtime: e.mtime,
                    uid: e.uid,
                    gid: e.gid,
                    mode: e.mode,
                }))
            }
            Request::List { rel } => {
                let names = self.volume()?.list(&p(&rel)).map_err(io)?;
                Ok(Answer::Names(
                    names.iter().map(|n| n.as_bytes().to_vec()).collect(),
                ))
            }
            Request::MakeDirs { rel } => {
                self.volume()?.make_dirs(&p(&rel)).map_err(any)?;
                Ok(Answer::Done)
            }
            Request::EnsureDir { rel } => {
                let changed = self.volume()?.ensure_dir(&p(&rel)).map_err(any)?;
                Ok(Answer::Changed(changed))
            }
            Request::Create { rel, resume } => {
                let v = self.volume()?;
                let rel = p(&rel);
                let (file, offset) = if resume {
                    let f = v.open_to_resume(&rel).map_err(io)?;
                    let len = f.metadata().map_err(io)?.len();
                    (f, len)
                } else {
                    (v.create_file(&rel).map_err(io)?, 0)
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
                mtime,
                durable,
            } => {
                let open = self
                    .files
                    .remove(&handle)
                    .ok_or_else(|| WireError::msg(format!("no open file with handle {handle}")))?;
                let v = self.volume()?;
                if let Some(e) = open.failed {
                    return Err(io(with_path(e, &v.path(&open.rel))));
                }
                let times = match mtime {
                    Some(m) => {
                        let t = m.system_time();
                        std::fs::FileTimes::new().set_accessed(t).set_modified(t)
                    }
                    None => std::fs::FileTimes::new(),
                };
                crate::volume::finish_file(
                    &open.file,
                    &v.path(&open.rel),
                    v.owner(),
                    mode,
                    times,
                    durable,
                )
                .map_err(|e| io(with_path(e, &v.path(&open.rel))))?;
                Ok(Answer::Done)
            }
            Request::Discard { handle } => {
                self.files.remove(&handle);
                Ok(Answer::Done)
            }
            Request::SetMtime { rel, mtime } => {
                let t = mtime.system_time();
                let times = std::fs::FileTimes::new().set_accessed(t).set_modified(t);
                self.volume()?
                    .open_file(&p(&rel))
                    .and_then(|f| f.set_times(times))
                    .map_err(io)?;
                Ok(Answer::Done)
            }
            Request::SyncFile { rel } => {
                self.volume()?.sync_file(&p(&rel)).map_err(io)?;
                Ok(Answer::Done)
            }
            Request::SyncDir { rel } => {
                self.volume()?.sync_dir(&p(&rel)).map_err(io)?;
                Ok(Answer::Done)
            }
            Request::Rename { from, to } => {
                self.volume()?.rename(&p(&from), &p(&to)).map_err(io)?;
                Ok(Answer::Done)
            }
            Request::RemoveFile { rel } => {
                self.volume()?.remove_file(&p(&rel)).map_err(io)?;
                Ok(Answer::Done)
            }
            Request::RemoveTree { rel } => {
                self.volume()?.remove_tree(&p(&rel)).map_err(io)?;
                Ok(Answer::Done)
            }
            Request::RemoveEmptyDir { rel } => {
                self.volume()?.remove_empty_dir(&p(&rel)).map_err(io)?;
                Ok(Answer::Done)
            }
            Request::FixOwner { rel } => {
                let changed = self.volume()?.fix_owner(&p(&rel)).map_err(io)?;
                Ok(Answer::Changed(changed))
            }
            Request::MarkCopied { rel, name } => {
                self.volume()?.mark_copied(&p(&rel), &name).map_err(io)?;
                Ok(Answer::Done)
            }
            Request::Lock => {
                if self.lock.is_none() {
                    self.lock = self.volume()?.lock().map_err(any)?;
                }
                Ok(Answer::Done)
            }
            Request::Unlock => {
                self.lock = None;
                Ok(Answer::Done)
            }
        }
    }
}

/// `e` with the file it is about in its message (an errno alone does not say which file).
fn with_path(e: io::Error, path: &Path) -> io::Error {
    match e.raw_os_error() {
        Some(n) => io::Error::new(
            e.kind(),
            super::msg::ErrnoMessage {
                errno: n,
                message: format!("{}: {e}", path.display()),
            },
        ),
        None => e,
    }
}
