//! Running independent pieces of work on a few scoped threads.

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
    let next = AtomicUsize::new(0);
    let threads = threads.clamp(1, items.len().max(1));
    let mut done: Vec<(usize, R)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut state = init();
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else {
                            return out;
                        };
                        out.push((i, f(&mut state, item)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
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
