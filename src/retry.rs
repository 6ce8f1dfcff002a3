//! Retrying with backoff: one helper for everything that reconnects (the SSH pool, remote
//! files), on `backon`.

use std::cell::Cell;
use std::io;
use std::time::Duration;

use backon::{BlockingRetryable, ExponentialBuilder};

/// The waits between attempts: 1, 2, 4, 8, then 16 s.
fn backoff(attempts: u32) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(16))
        .with_factor(2.0)
        .with_max_times(attempts.max(1) as usize - 1)
}

/// How a retried operation ended.
#[derive(Debug)]
pub enum Failed {
    /// An error `retryable` rejected: final, as it came.
    Final(io::Error),
    /// Every attempt failed with a retryable error; the last one.
    Exhausted(io::Error),
}

impl Failed {
    /// The error to return: a final one as it came; when the attempts ran out, one of kind
    /// `ConnectionAborted` saying `gave_up` (given the last error).
    pub fn into_io(self, gave_up: impl FnOnce(&io::Error) -> String) -> io::Error {
        match self {
            Failed::Final(e) => e,
            Failed::Exhausted(last) => {
                io::Error::new(io::ErrorKind::ConnectionAborted, gave_up(&last))
            }
        }
    }
}

/// Runs `op` (given the attempt number, from 0) until it succeeds, fails with an error
/// `retryable` rejects, or `attempts` attempts have failed. Before each new attempt it calls
/// `before_retry` with the error, the wait, and the number of the attempt to come, then waits.
pub fn with_backoff<T>(
    attempts: u32,
    retryable: impl Fn(&io::Error) -> bool,
    before_retry: impl FnMut(&io::Error, Duration, u32),
    op: impl FnMut(u32) -> io::Result<T>,
) -> Result<T, Failed> {
    sleeping(std::thread::sleep, attempts, retryable, before_retry, op)
}

/// [`with_backoff`] with the waiting done by `sleep`.
fn sleeping<T>(
    sleep: impl Fn(Duration) + 'static,
    attempts: u32,
    retryable: impl Fn(&io::Error) -> bool,
    mut before_retry: impl FnMut(&io::Error, Duration, u32),
    mut op: impl FnMut(u32) -> io::Result<T>,
) -> Result<T, Failed> {
    let attempt = Cell::new(0u32);
    let run = || {
        let a = attempt.get();
        attempt.set(a + 1);
        op(a)
    };
    run.retry(backoff(attempts))
        .sleep(sleep)
        .when(|e| retryable(e))
        .notify(|e, wait| before_retry(e, wait, attempt.get()))
        .call()
        .map_err(|e| {
            if retryable(&e) {
                Failed::Exhausted(e)
            } else {
                Failed::Final(e)
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gone() -> io::Error {
        io::Error::from(io::ErrorKind::ConnectionReset)
    }

    fn retryable(e: &io::Error) -> bool {
        e.kind() == io::ErrorKind::ConnectionReset
    }

    /// Runs `sleeping` without waiting: (the attempts made, the waits with the attempt
    /// each came before, the result).
    fn run(attempts: u32, fail_first: u32) -> (u32, Vec<(u64, u32)>, Result<u32, Failed>) {
        let mut calls = 0;
        let mut waits = Vec::new();
        let r = sleeping(
            |_| {},
            attempts,
            retryable,
            |_, wait, next| waits.push((wait.as_secs(), next)),
            |a| {
                calls += 1;
                if a < fail_first { Err(gone()) } else { Ok(a) }
            },
        );
        (calls, waits, r)
    }

    #[test]
    fn waits_one_two_four_eight_then_sixteen_seconds_and_stops_after_the_attempts() {
        let (calls, waits, r) = run(5, 2);
        assert_eq!((calls, r.unwrap()), (3, 2));
        assert_eq!(waits, [(1, 1), (2, 2)]);
        let (calls, waits, r) = run(7, u32::MAX);
        assert_eq!(calls, 7);
        assert_eq!(waits, [(1, 1), (2, 2), (4, 3), (8, 4), (16, 5), (16, 6)]);
        let e = match r {
            Err(f @ Failed::Exhausted(_)) => f.into_io(|last| format!("gave up: {last}")),
            other => panic!("{other:?}"),
        };
        assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted);
        assert!(e.to_string().starts_with("gave up: "), "{e}");
    }

    #[test]
    fn a_final_error_is_not_retried_and_one_attempt_is_never_retried() {
        let mut calls = 0;
        let r = sleeping(
            |_| panic!("no wait"),
            5,
            retryable,
            |_, _, _| {},
            |_| -> io::Result<()> {
                calls += 1;
                Err(io::Error::from(io::ErrorKind::NotFound))
            },
        );
        let e = r.unwrap_err().into_io(|_| unreachable!());
        assert_eq!((calls, e.kind()), (1, io::ErrorKind::NotFound));
        let (calls, waits, r) = run(1, u32::MAX);
        assert_eq!((calls, waits.len()), (1, 0));
        assert!(matches!(r, Err(Failed::Exhausted(_))));
    }
}
