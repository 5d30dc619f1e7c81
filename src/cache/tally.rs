//! A count that many threads add to without sharing a cache line: each thread adds to
//! a cell of its own with a plain load and store (no locked instruction, no line moving
//! between cores), and a read sums the cells. For the cache hits, counted on every
//! decision that finds a fresh answer.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

/// How many tallies a thread keeps its cells for at hand (more are found again by
/// thread in the tally's list).
const AT_HAND: usize = 4;

static IDS: AtomicU32 = AtomicU32::new(1);

thread_local! {
    /// This thread's cells, most recently used first: (tally id, cell).
    static CELLS: RefCell<Vec<(u32, Arc<AtomicU64>)>> = const { RefCell::new(Vec::new()) };
}

/// A count summed over the threads that add to it.
#[derive(Debug)]
pub(crate) struct Tally {
    id: u32,
    /// One cell per thread that ever added, with the thread it belongs to.
    cells: Mutex<Vec<(ThreadId, Arc<AtomicU64>)>>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            cells: Mutex::new(Vec::new()),
        }
    }
}

impl Tally {
    /// Adds one on this thread.
    #[inline]
    pub(crate) fn add_one(&self) {
        // A thread that is being torn down has no thread-locals left: count through
        // the shared list instead.
        let added = CELLS.try_with(|cells| {
            let mut cells = cells.borrow_mut();
            if let Some((id, cell)) = cells.first()
                && *id == self.id
            {
                bump(cell);
                return;
            }
            let cell = match cells.iter().position(|(id, _)| *id == self.id) {
                Some(i) => {
                    let found = cells.remove(i);
                    cells.insert(0, found);
                    &cells[0].1
                }
                None => {
                    cells.insert(0, (self.id, self.own_cell()));
                    cells.truncate(AT_HAND);
                    &cells[0].1
                }
            };
            bump(cell);
        });
        if added.is_err() {
            bump(&self.own_cell());
        }
    }

    /// This thread's cell in the list, made on its first add.
    fn own_cell(&self) -> Arc<AtomicU64> {
        let me = std::thread::current().id();
        let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        match cells.iter().find(|(t, _)| *t == me) {
            Some((_, c)) => c.clone(),
            None => {
                let c = Arc::new(AtomicU64::new(0));
                cells.push((me, c.clone()));
                c
            }
        }
    }

    /// The sum over all threads.
    pub(crate) fn get(&self) -> u64 {
        let cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        cells
            .iter()
            .map(|(_, c)| c.load(Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add)
    }
}

/// Adds one to a cell only this thread writes: a load and a store, not a locked add.
#[inline]
fn bump(cell: &AtomicU64) {
    cell.store(
        cell.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Relaxed,
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn adds_from_many_threads_sum_exactly() {
        let t = Arc::new(Tally::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        t.add_one();
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        t.add_one();
        assert_eq!(t.get(), 80_001);
        // One cell per thread that added.
        assert_eq!(t.cells.lock().unwrap().len(), 9);
    }

    #[test]
    fn a_thread_that_moves_between_more_tallies_than_it_keeps_reuses_its_cells() {
        let tallies: Vec<Tally> = (0..AT_HAND * 3).map(|_| Tally::default()).collect();
        for round in 0..5 {
            for t in &tallies {
                t.add_one();
                t.add_one();
            }
            for t in &tallies {
                assert_eq!(t.get(), 2 * (round + 1));
            }
        }
        for t in &tallies {
            assert_eq!(t.cells.lock().unwrap().len(), 1, "one cell for this thread");
        }
    }
}
