//! The bandwidth limit shared by all copy workers (governor's GCRA). Cells are KiB; a chunk
//! is about 1/20 s of the rate, and the burst is one chunk, so bursts stay small.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Paces byte transfers. Implementations are shared by all workers.
pub trait Throttle: Send + Sync {
    /// The chunk size workers should copy between calls to [`Throttle::acquire`].
    fn chunk(&self) -> usize;
    /// Blocks until `bytes` more may be transferred.
    fn acquire(&self, bytes: usize);
}

/// No limit.
pub struct Unlimited;
impl Throttle for Unlimited {
    fn chunk(&self) -> usize {
        8 << 20
    }
    fn acquire(&self, _: usize) {}
}

const CELL: u64 = 1024;

/// A limit of a given number of bytes per second across all callers.
pub struct Governed {
    limiter: DefaultDirectRateLimiter,
    clock: DefaultClock,
    chunk: usize,
}

impl Governed {
    /// A limiter for `bytes_per_sec` (> 0).
    pub fn new(bytes_per_sec: u64) -> Self {
        let cells_per_sec = (bytes_per_sec / CELL).clamp(1, u32::MAX as u64) as u32;
        // About 50 ms of data per chunk, between 4 KiB and 4 MiB.
        let chunk_cells = (cells_per_sec / 20).clamp(4, 4096);
        let quota = Quota::per_second(NonZeroU32::new(cells_per_sec).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(chunk_cells).unwrap_or(NonZeroU32::MIN));
        Governed {
            limiter: RateLimiter::direct(quota),
            clock: DefaultClock::default(),
            chunk: (chunk_cells as u64 * CELL) as usize,
        }
    }
}

impl Throttle for Governed {
    fn chunk(&self) -> usize {
        self.chunk
    }

    fn acquire(&self, bytes: usize) {
        let mut left = (bytes as u64).div_ceil(CELL);
        while left > 0 {
            let n = left.min((self.chunk as u64) / CELL).max(1) as u32;
            let cells = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
            match self.limiter.check_n(cells) {
                Ok(Ok(())) => left -= n as u64,
                Ok(Err(not_until)) => {
                    std::thread::sleep(not_until.wait_time_from(self.clock.now()))
                }
                // n never exceeds the burst; if it somehow did, wait a little and retry smaller.
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }
}

/// The throttle for an optional limit.
pub fn for_limit(bytes_per_sec: Option<u64>) -> Box<dyn Throttle> {
    match bytes_per_sec {
        Some(r) if r > 0 => Box::new(Governed::new(r)),
        _ => Box::new(Unlimited),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn chunk_is_small_fraction_of_rate() {
        assert_eq!(Governed::new(200 << 20).chunk(), 4 << 20);
        assert_eq!(Governed::new(1 << 20).chunk(), 51 * 1024);
        assert_eq!(Governed::new(1).chunk(), 4 * 1024);
    }

    /// Correctness, not speed: the limiter must never let more through than the rate allows
    /// (after the first burst). A slow machine can only make this take longer.
    #[test]
    fn never_faster_than_the_limit() {
        let rate = 4u64 << 20; // 4 MiB/s
        let t = Governed::new(rate);
        let total = 6u64 << 20;
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < total {
            t.acquire(t.chunk());
            sent += t.chunk() as u64;
        }
        let min_secs = (total - t.chunk() as u64) as f64 / rate as f64;
        assert!(
            start.elapsed().as_secs_f64() >= min_secs * 0.98,
            "{:?} < {min_secs}",
            start.elapsed()
        );
    }
}
