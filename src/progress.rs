//! Progress of long copies and hashes: a bar on a terminal (indicatif, stderr), periodic
//! log lines otherwise, and a hidden implementation for tests and JSON runs in scripts.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::units;

/// Receives progress from the copy and verify workers.
pub trait Progress: Send + Sync {
    /// The work begins: a bar is drawn from now on (not for a run that stops before).
    fn start(&self) {}
    /// `n` more bytes are done.
    fn add_bytes(&self, n: u64);
    /// `n` bytes counted before are to be done again (a copy that fell back part-way).
    fn take_back(&self, n: u64);
    /// The run is over; `complete` when it did all it was to do. A bar is cleared then, and
    /// otherwise left on its last figure (what the summary below it says was written).
    fn finish(&self, complete: bool);
}

/// Reports nothing.
pub struct Hidden;
impl Progress for Hidden {
    fn add_bytes(&self, _: u64) {}
    fn take_back(&self, _: u64) {}
    fn finish(&self, _: bool) {}
}

/// The right progress for stderr: a bar on a terminal, log lines every 10 s otherwise.
pub fn for_stderr(label: &str, total_bytes: u64) -> Box<dyn Progress> {
    let p = for_stderr_from_start(label, total_bytes);
    p.start();
    p
}

/// [`for_stderr`], with a bar drawn only from [`Progress::start`] on.
pub fn for_stderr_from_start(label: &str, total_bytes: u64) -> Box<dyn Progress> {
    if std::io::stderr().is_terminal() {
        // Hidden until `start`.
        let bar = ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::hidden());
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {done}/{all} {rate} ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                // Sizes as the summaries write them (units::bytes), so that the two agree.
                .with_key(
                    "done",
                    |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = w.write_str(&units::bytes(s.pos()));
                    },
                )
                .with_key(
                    "all",
                    |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = w.write_str(&units::bytes(s.len().unwrap_or(0)));
                    },
                )
                .with_key(
                    "rate",
                    |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = w.write_str(&format!("{}/s", units::bytes(s.per_sec() as u64)));
                    },
                )
                .progress_chars("=> "),
        );
        bar.set_message(label.to_string());
        Box::new(Bar(bar))
    } else {
        Box::new(Lines {
            label: label.to_string(),
            total: total_bytes,
            done: AtomicU64::new(0),
            start: Mutex::new(Instant::now()),
            last: Mutex::new(Instant::now()),
            every: Duration::from_secs(10),
        })
    }
}

struct Bar(ProgressBar);
impl Progress for Bar {
    fn start(&self) {
        self.0.set_draw_target(ProgressDrawTarget::stderr());
        self.0.reset_elapsed();
    }
    fn add_bytes(&self, n: u64) {
        self.0.inc(n);
    }
    fn take_back(&self, n: u64) {
        self.0.dec(n);
    }
    fn finish(&self, complete: bool) {
        if complete {
            self.0.finish_and_clear();
        } else {
            self.0.abandon();
        }
    }
}

struct Lines {
    label: String,
    total: u64,
    done: AtomicU64,
    /// When the work began ([`Progress::start`]): the rate and ETA count from there.
    start: Mutex<Instant>,
    last: Mutex<Instant>,
    every: Duration,
}

impl Progress for Lines {
    fn start(&self) {
        let now = Instant::now();
        if let Ok(mut s) = self.start.lock() {
            *s = now;
        }
        if let Ok(mut l) = self.last.lock() {
            *l = now;
        }
    }
    fn add_bytes(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        let Ok(mut last) = self.last.try_lock() else {
            return;
        };
        if last.elapsed() < self.every {
            return;
        }
        *last = Instant::now();
        let secs = self
            .start
            .lock()
            .map_or(0.0, |s| s.elapsed().as_secs_f64())
            .max(1e-3);
        let rate = done as f64 / secs;
        let eta = if rate > 0.0 {
            (self.total.saturating_sub(done)) as f64 / rate
        } else {
            0.0
        };
        tracing::info!(
            "{}: {} of {} ({}/s, ETA {})",
            self.label,
            units::bytes(done),
            units::bytes(self.total),
            units::bytes(rate as u64),
            units::duration(eta)
        );
    }
    fn take_back(&self, n: u64) {
        let _ = self
            .done
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
                Some(d.saturating_sub(n))
            });
    }
    fn finish(&self, _: bool) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_taken_back_are_no_longer_counted_as_done() {
        let lines = Lines {
            label: "copy".into(),
            total: 100,
            done: AtomicU64::new(0),
            start: Mutex::new(Instant::now()),
            last: Mutex::new(Instant::now()),
            every: Duration::from_secs(3600),
        };
        lines.add_bytes(70);
        lines.take_back(30);
        assert_eq!(lines.done.load(Ordering::Relaxed), 40);
        lines.take_back(50);
        assert_eq!(lines.done.load(Ordering::Relaxed), 0);
    }
}
