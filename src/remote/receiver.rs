//! The receiver: `promigrate receive`, run beside the volume (in a pod that mounts the
//! claim). It answers the driver's requests on its stream (stdin/stdout, or a connection:
//! [`super::listen`]) by doing them on the volume
//! through [`Local`], exactly as a local apply does: every path resolved below the volume's
//! descriptor, files staged, fsync'ed and renamed, the directory lock held while the driver
//! asks.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use super::frame::{self, FrameError, Kind};
use super::msg::{Answer, Reply, Request, WireError};
use crate::lock::Guard;
use crate::plan::{LocalSurvey, Survey};
use crate::volume::{DryRun, Local, OutFile, Target};

/// How many requests the receiver works on at once. The driver has one outstanding per
/// thread that asks (its copy workers, at most 64, and a few more): a request beyond these
/// waits for a free worker, it is never refused.
const WORKERS: usize = 16;

/// A file being written for the driver.
struct Open {
    file: File,
    rel: PathBuf,
    /// The first error of its data frames, reported when the driver finishes it.
    failed: Mutex<Option<io::Error>>,
}

/// The volume the driver opened.
struct Opened {
    /// The volume, for the files written through handles.
    volume: Local,
    /// The volume as apply works on it: itself, or a dry run's record of it.
    target: Box<dyn Target>,
    /// The volume as plan and verify read it.
    survey: LocalSurvey,
    /// Opened for a dry run: nothing is written.
    dry_run: bool,
}

/// The directory locks the driver holds.
#[derive(Default)]
struct Locks {
    lock: Option<Guard>,
    /// How many of the driver's guards hold `lock`.
    count: usize,
    read_lock: Option<Guard>,
}

/// The receiver's state for one stream, shared by the thread that reads the stream (it
/// writes the data frames, in order) and the workers that answer requests.
#[derive(Default)]
struct State {
    opened: RwLock<Option<Arc<Opened>>>,
    files: Mutex<HashMap<u32, Arc<Open>>>,
    next: AtomicU32,
    locks: Mutex<Locks>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The writing half: replies, from any worker, each flushed; the first failure (the driver
/// is gone) is kept, and nothing more is written.
struct Replies<W: Write> {
    w: BufWriter<W>,
    failed: Option<io::Error>,
}

/// Serves one driver until its stream ends. A stream cut inside a frame (the driver died, or
/// the connection was cut) ends the service with an error; what was written stays as it
/// is, unfinished files included (a resumed transfer continues them).
///
/// Data frames are written as they are read, so a file holds all its data by the time the
/// request that follows it is read. Requests are answered by [`WORKERS`] threads, as they
/// come and each as soon as it is done: the driver's copy workers each wait only for their
/// own (a file's fsync), as they would on a local volume.
pub fn serve(input: impl Read, output: impl Write + Send) -> Result<(), FrameError> {
    let mut r = BufReader::with_capacity(frame::MAX_DATA + 64, input);
    let mut w = BufWriter::new(output);
    frame::write_hello(&mut w)?;
    w.flush()?;
    frame::read_hello(&mut r)?;
    let st = State::default();
    let replies = Mutex::new(Replies { w, failed: None });
    // Set when a reply could not be written: the driver is gone, nothing more is done.
    let gone = AtomicBool::new(false);
    let (tx, rx) = std::sync::mpsc::channel::<frame::Frame>();
    let rx = Mutex::new(rx);
    let read = std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| {
                loop {
                    // Only the wait for the next request is under the lock.
                    let next = locked(&rx).recv();
                    let Ok(f) = next else { break };
                    if !gone.load(Ordering::Relaxed) && !st.reply(&f, &replies) {
                        gone.store(true, Ordering::Relaxed);
                    }
                }
            });
        }
        let read = (|| {
            while let Some(f) = frame::read_frame(&mut r)? {
                if gone.load(Ordering::Relaxed) {
                    break;
                }
                match f.kind {
                    Kind::Data => st.data(f.id, &f.payload)?,
                    Kind::Request => {
                        // The workers live until `tx` is dropped below.
                        let _ = tx.send(f);
                    }
                    Kind::Reply => {
                        return Err(FrameError::Protocol("a reply sent to the receiver".into()));
                    }
                }
            }
            Ok(())
        })();
        // The requests read so far are answered, then the workers end.
        drop(tx);
        read
    });
    read?;
    match replies
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .failed
    {
        Some(e) => Err(FrameError::Io(e)),
        None => Ok(()),
    }
}

impl State {
    fn opened(&self) -> Result<Arc<Opened>, WireError> {
        self.opened
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| WireError::msg("no target opened yet (open comes first)"))
    }

    /// Answers request frame `f` and writes the reply; false when it could not be written.
    /// A request whose handling panics is answered with that error (its caller is not left
    /// waiting for a reply that never comes).
    fn reply<W: Write>(&self, f: &frame::Frame, replies: &Mutex<Replies<W>>) -> bool {
        let reply: Reply = match serde_json::from_slice::<Request>(&f.payload) {
            Ok(req) => {
                let answered =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.answer(req)));
                answered.unwrap_or_else(|p| {
                    let why = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    Err(WireError::msg(format!(
                        "the receiver failed on this request (a bug: {why}); rerun, and report it"
                    )))
                })
            }
            Err(e) => Err(WireError::msg(format!(
                "a request this receiver does not understand ({e}): use the same promigrate on both sides"
            ))),
        };
        let body = match serde_json::to_vec(&reply) {
            Ok(b) => b,
            Err(e) => {
                let failed: Reply = Err(WireError::msg(format!(
                    "the receiver cannot encode its reply: {e}"
                )));
                serde_json::to_vec(&failed).unwrap_or_default()
            }
        };
        let mut out = locked(replies);
        if out.failed.is_none()
            && let Err(e) = frame::write_frame(&mut out.w, Kind::Reply, f.id, &body)
                .and_then(|()| out.w.flush())
        {
            out.failed = Some(e);
        }
        out.failed.is_none()
    }

    fn data(&self, handle: u32, payload: &[u8]) -> Result<(), FrameError> {
        let (off, bytes) = frame::data_parts(payload)?;
        let Some(open) = locked(&self.files).get(&handle).cloned() else {
            // Data for a handle discarded since (the driver stopped that copy): ignored.
            return Ok(());
        };
        let mut failed = locked(&open.failed);
        if failed.is_none()
            && let Err(e) = open.file.write_all_at(bytes, off)
        {
            *failed = Some(e);
        }
        Ok(())
    }

    fn answer(&self, req: Request) -> Reply {
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
                let volume = Local::open(&mount, &root, owner).map_err(any)?;
                let target: Box<dyn Target> = if dry_run {
                    Box::new(DryRun::new(Local::open(&mount, &root, owner).map_err(any)?))
                } else {
                    Box::new(Local::open(&mount, &root, owner).map_err(any)?)
                };
                let survey = LocalSurvey {
                    mount,
                    root,
                    owner,
                    mounted_read_only: read_only,
                };
                *self.opened.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(Opened {
                    volume,
                    target,
                    survey,
                    dry_run,
                }));
                Ok(Answer::Done)
            }
            Request::Stat { rel } => Ok(Answer::Entry(
                self.opened()?.target.stat(&p(&rel)).map_err(io)?,
            )),
            Request::List { rel } => {
                let names = self.opened()?.target.list(&p(&rel)).map_err(io)?;
                Ok(Answer::Names(
                    names.iter().map(|n| n.as_bytes().to_vec()).collect(),
                ))
            }
            Request::MakeDirs { rel } => {
                self.opened()?.target.make_dirs(&p(&rel)).map_err(any)?;
                Ok(Answer::Done)
            }
            Request::EnsureDir { rel } => {
                let changed = self.opened()?.target.ensure_dir(&p(&rel)).map_err(any)?;
                Ok(Answer::Changed(changed))
            }
            Request::Create { rel, resume } => {
                let o = self.opened()?;
                if o.dry_run {
                    return Err(WireError::msg(format!(
                        "a dry run writes nothing (asked to create {rel})"
                    )));
                }
                let v = &o.volume;
                let rel = p(&rel);
                let (file, offset) = if resume {
                    let f = v.open_to_resume(&rel).map_err(io)?;
                    let len = f.metadata().map_err(io)?.len();
                    (f, len)
                } else {
                    (v.create_local(&rel).map_err(io)?, 0)
                };
                let handle = self.next.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
                locked(&self.files).insert(
                    handle,
                    Arc::new(Open {
                        file,
                        rel,
                        failed: Mutex::new(None),
                    }),
                );
                Ok(Answer::Opened { handle, offset })
            }
            Request::Finish {
                handle,
                mode,
                times,
                durable,
            } => {
                let open = locked(&self.files)
                    .remove(&handle)
                    .ok_or_else(|| WireError::msg(format!("no open file with handle {handle}")))?;
                let o = self.opened()?;
                let v = &o.volume;
                let shown = v.path(&open.rel);
                // Its data frames were all written before this request was read: the
                // reading thread has let go of it.
                let Ok(open) = Arc::try_unwrap(open) else {
                    return Err(WireError::msg(format!(
                        "{} is still being written",
                        shown.display()
                    )));
                };
                // The driver names the file; the errno (ENOSPC: the volume is full) stays.
                if let Some(e) = open.failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
                    return Err(io(e));
                }
                let mut file = open.file;
                file.finish(&shown, v.owner(), mode, times, durable)
                    .map_err(io)?;
                Ok(Answer::Done)
            }
            Request::Discard { handle } => {
                locked(&self.files).remove(&handle);
                Ok(Answer::Done)
            }
            Request::SetTimes { rel, times } => {
                self.opened()?
                    .target
                    .set_times(&p(&rel), times)
                    .map_err(io)?;
                Ok(Answer::Done)
            }
            Request::SyncFile { rel } => {
                self.opened()?.target.sync_file(&p(&rel)).map_err(io)?;
                Ok(Answer::Done)
            }
            Request::SyncDir { rel } => {
                self.opened()?.target.sync_dir(&p(&rel)).map_err(io)?;
                Ok(Answer::Done)
            }
            Request::Rename { from, to } => {
                self.opened()?
                    .target
                    .rename(&p(&from), &p(&to))
                    .map_err(io)?;
                Ok(Answer::Done)
            }
            Request::RemoveFile { rel } => {
                self.opened()?.target.remove_file(&p(&rel)).map_err(io)?;
                Ok(Answer::Done)
            }
            Request::RemoveTree { rel } => {
                self.opened()?.target.remove_tree(&p(&rel)).map_err(io)?;
                Ok(Answer::Done)
            }
            Request::RemoveEmptyDir { rel } => {
                self.opened()?
                    .target
                    .remove_empty_dir(&p(&rel))
                    .map_err(io)?;
                Ok(Answer::Done)
            }
            Request::FixOwner { rel } => {
                let changed = self.opened()?.target.fix_owner(&p(&rel)).map_err(io)?;
                Ok(Answer::Changed(changed))
            }
            Request::MarkCopied { rel, name } => {
                self.opened()?
                    .target
                    .mark_copied(&p(&rel), &name)
                    .map_err(io)?;
                Ok(Answer::Done)
            }
            Request::Lock => {
                let mut l = locked(&self.locks);
                if l.lock.is_none() {
                    l.lock = self.opened()?.target.lock().map_err(any)?;
                }
                l.count += 1;
                Ok(Answer::Done)
            }
            Request::Unlock => {
                let mut l = locked(&self.locks);
                l.count = l.count.saturating_sub(1);
                if l.count == 0 {
                    l.lock = None;
                }
                Ok(Answer::Done)
            }
            Request::ReadUnlock => {
                locked(&self.locks).read_lock = None;
                Ok(Answer::Done)
            }
            Request::WouldWrite { rel, bytes } => {
                self.opened()?.target.would_write(&p(&rel), bytes);
                Ok(Answer::Done)
            }
            Request::Recorded => Ok(Answer::Ops(self.opened()?.target.recorded())),
            Request::Scan { depth } => {
                let inv = self
                    .opened()?
                    .survey
                    .scan(depth)
                    .map_err(|e| WireError::msg(e.to_string()))?;
                Ok(Answer::Inventory(Box::new(inv)))
            }
            Request::Whereabouts => {
                let o = self.opened()?;
                let s = &o.survey;
                Ok(Answer::Whereabouts {
                    root: s.whereabouts(),
                    device: s.device(),
                })
            }
            Request::Layout => Ok(Answer::Layout(self.opened()?.survey.layout())),
            Request::Writer => Ok(Answer::Holder(self.opened()?.survey.writer())),
            Request::ReadLock => match self.opened()?.survey.read_lock() {
                Ok(g) => {
                    locked(&self.locks).read_lock = g;
                    Ok(Answer::Holder(None))
                }
                Err(crate::plan::survey::Busy(h)) => Ok(Answer::Holder(Some(h))),
            },
            Request::Space { writes } => {
                let s = self.opened()?.survey.space(&writes).map_err(any)?;
                Ok(Answer::Space(s))
            }
            Request::WriteCheck { plan } => {
                let (blockers, warnings) = self.opened()?.survey.write_check(&plan).map_err(any)?;
                Ok(Answer::Findings { blockers, warnings })
            }
            Request::Read { rel } => {
                Ok(Answer::Bytes(self.opened()?.survey.read(&rel).map_err(io)?))
            }
            Request::IsCopied { dir, name } => Ok(Answer::Changed(
                self.opened()?.survey.is_copied(&dir, &name),
            )),
            Request::Hashes { rels, parallelism } => {
                let h = self.opened()?.survey.hashes(
                    &rels,
                    parallelism,
                    &crate::progress::Hidden,
                    &AtomicBool::new(false),
                );
                Ok(Answer::Hashes(h))
            }
            Request::Check { depth, parallelism } => {
                let o = self.opened()?;
                let s = &o.survey;
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
