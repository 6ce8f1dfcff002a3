//! Running independent pieces of work on a few scoped threads.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering};

/// `f` applied to every item on up to `threads` threads (each takes the next item when it is
/// free); the results in the items' order.
pub fn map<T: Sync, R: Send>(items: &[T], threads: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    map_with(items, threads, || (), |_, item| f(item))
}

/// Like [`map`], each thread with its own state made by `init` (a buffer, say) that `f` is
/// given beside the item.
pub fn map_with<T: Sync, S, R: Send>(
    items: &[T],
    threads: usize,
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, &T) -> R + Sync,
) -> Vec<R> {
    let done = std::sync::Mutex::new(Vec::with_capacity(items.len()));
    each_with(
        items,
        threads,
        || (init(), Vec::new()),
        |(state, out), i, item| {
            out.push((i, f(state, item)));
            ControlFlow::Continue(())
        },
        |(_, out)| done.lock().unwrap_or_else(|e| e.into_inner()).extend(out),
    );
    let mut done = done.into_inner().unwrap_or_else(|e| e.into_inner());
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

/// `f` on the items (with their index) on up to `threads` threads, each taking the next item
/// when it is free, with its own state made by `init` and handed to `finish` when the thread
/// ends. A thread whose `f` says `Break` takes no more items; the others go on.
pub fn each_with<T: Sync, S>(
    items: &[T],
    threads: usize,
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, usize, &T) -> ControlFlow<()> + Sync,
    finish: impl Fn(S) + Sync,
) {
    let next = AtomicUsize::new(0);
    let threads = threads.clamp(1, items.len().max(1));
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut state = init();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        if f(&mut state, i, item).is_break() {
                            break;
                        }
                    }
                    finish(state);
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_the_order_whatever_the_threads() {
        let items: Vec<u64> = (0..1000).collect();
        for threads in [0, 1, 3, 64] {
            let out = super::map(&items, threads, |x| x * 2);
            assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>());
        }
        assert!(super::map(&[] as &[u8], 4, |x| *x).is_empty());
    }

    #[test]
    fn a_thread_that_breaks_takes_no_more_items_and_the_others_go_on() {
        use std::ops::ControlFlow;
        use std::sync::Mutex;
        let items: Vec<u64> = (0..200).collect();
        let seen = Mutex::new(Vec::new());
        let finished = Mutex::new(0);
        // The thread that gets item 5 stops there; the rest is done by the others.
        super::each_with(
            &items,
            3,
            Vec::new,
            |mine: &mut Vec<u64>, i, x| {
                assert_eq!(i as u64, *x);
                mine.push(*x);
                if *x == 5 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
            |mine| {
                *finished.lock().unwrap() += 1;
                seen.lock().unwrap().push(mine);
            },
        );
        let seen = seen.into_inner().unwrap();
        assert_eq!(
            *finished.lock().unwrap(),
            3,
            "every thread's state is finished"
        );
        let mut all: Vec<u64> = seen.iter().flatten().copied().collect();
        all.sort();
        assert_eq!(all, items, "every item was taken once");
        let stopped = seen.iter().find(|m| m.contains(&5)).unwrap();
        assert_eq!(
            stopped.last(),
            Some(&5),
            "took more after Break: {stopped:?}"
        );
    }

    #[test]
    fn a_thread_keeps_its_state_from_item_to_item() {
        let items: Vec<u64> = (0..100).collect();
        // One thread: its counter has seen every item before this one.
        let out = super::map_with(
            &items,
            1,
            || 0u64,
            |n, x| {
                *n += 1;
                (*x, *n)
            },
        );
        assert_eq!(out, items.iter().map(|x| (*x, x + 1)).collect::<Vec<_>>());
        // Several: each starts from its own fresh state, and the order is kept.
        let out = super::map_with(&items, 4, Vec::new, |seen: &mut Vec<u64>, x| {
            seen.push(*x);
            seen.len()
        });
        assert_eq!(out.len(), items.len());
        assert_eq!(out[0], 1);
        let fresh = out.iter().filter(|n| **n == 1).count();
        assert!(
            (1..=4).contains(&fresh),
            "{fresh} fresh states for 4 threads"
        );
    }
}
