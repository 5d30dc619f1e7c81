//! A count that many threads add to without sharing a cache line: each thread adds to
//! a cell of its own with a plain load and store (no locked instruction, no line moving
//! between cores), and a read sums the cells. For the cache hits, counted on every
//! decision that finds a fresh answer.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// How many tallies a thread keeps a cell in at once. A thread that moves on to
/// another tally gives up its least recently used cell: the cell's count moves into the
/// tally's `retired` sum, as it does when the thread ends.
const AT_HAND: usize = 4;

static IDS: AtomicU32 = AtomicU32::new(1);

thread_local! {
    /// This thread's cells, most recently used first.
    static CELLS: RefCell<Vec<Held>> = const { RefCell::new(Vec::new()) };
}

/// A thread's cell in one tally.
struct Held {
    id: u32,
    cell: Arc<AtomicU64>,
    cells: Weak<Cells>,
}

impl Drop for Held {
    /// The thread ends or moves on: its count joins the tally's retired sum.
    fn drop(&mut self) {
        if let Some(cells) = self.cells.upgrade() {
            cells.retire(&self.cell);
        }
    }
}

/// The cells of the threads that count in a tally, and what ended threads counted.
#[derive(Debug, Default)]
struct Cells {
    live: Mutex<(Vec<Arc<AtomicU64>>, u64)>,
}

impl Cells {
    fn retire(&self, cell: &Arc<AtomicU64>) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = live.0.iter().position(|c| Arc::ptr_eq(c, cell)) {
            live.0.swap_remove(i);
            live.1 = live.1.wrapping_add(cell.load(Ordering::Relaxed));
        }
    }
}

/// A count summed over the threads that add to it.
#[derive(Debug)]
pub(crate) struct Tally {
    id: u32,
    cells: Arc<Cells>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            cells: Arc::default(),
        }
    }
}

impl Tally {
    /// Adds one on this thread.
    #[inline]
    pub(crate) fn add_one(&self) {
        let added = CELLS.try_with(|held| {
            let mut held = held.borrow_mut();
            if let Some(h) = held.first()
                && h.id == self.id
            {
                bump(&h.cell);
                return;
            }
            match held.iter().position(|h| h.id == self.id) {
                Some(i) => {
                    let h = held.remove(i);
                    held.insert(0, h);
                }
                None => {
                    let h = self.new_cell();
                    held.insert(0, h);
                    held.truncate(AT_HAND);
                }
            }
            if let Some(h) = held.first() {
                bump(&h.cell);
            }
        });
        if added.is_err() {
            // The thread is ending and its cells are gone: add to the retired sum.
            let mut live = self.cells.live.lock().unwrap_or_else(|p| p.into_inner());
            live.1 = live.1.wrapping_add(1);
        }
    }

    /// A new cell for this thread, listed in the tally.
    fn new_cell(&self) -> Held {
        let cell = Arc::new(AtomicU64::new(0));
        let mut live = self.cells.live.lock().unwrap_or_else(|p| p.into_inner());
        live.0.push(cell.clone());
        Held {
            id: self.id,
            cell,
            cells: Arc::downgrade(&self.cells),
        }
    }

    /// The sum over all threads, ended ones included.
    pub(crate) fn get(&self) -> u64 {
        let live = self.cells.live.lock().unwrap_or_else(|p| p.into_inner());
        live.0
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .fold(live.1, u64::wrapping_add)
    }

    #[cfg(test)]
    fn live_cells(&self) -> usize {
        self.cells
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .len()
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
        // The ended threads' counts were retired: only this thread's cell is live.
        assert_eq!(t.live_cells(), 1);
    }

    #[test]
    fn a_thread_that_moves_between_more_tallies_than_it_keeps_loses_no_count() {
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
            assert!(t.live_cells() <= 1, "at most one cell for this thread");
        }
    }

    #[test]
    fn a_tally_dropped_before_the_threads_that_counted_in_it_is_forgotten_quietly() {
        let t = Tally::default();
        let t2 = Tally::default();
        std::thread::scope(|s| {
            s.spawn(|| {
                t.add_one();
                t2.add_one();
            });
        });
        t2.add_one();
        drop(t);
        // This thread still holds a cell of t2 only; another thread's end and a new
        // tally on this thread evict nothing that is gone.
        let t3 = Tally::default();
        t3.add_one();
        assert_eq!(t2.get(), 2);
        assert_eq!(t3.get(), 1);
    }
}
