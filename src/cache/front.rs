//! A per-thread front for fresh cache hits: one 64-byte line per entry holding the key,
//! the entry's expiry, the cache it came from and the shared answer.
//!
//! A hit in the main cache reads a shard lock, a hash-table control group, its index and
//! the entry (three dependent loads, two atomic updates). A client that comes back is
//! found here instead in one line, without a lock or a shared write, then the answer's
//! reference count is taken as before. The front only ever answers what the main cache
//! answered a moment ago on this thread:
//! - an entry is used only while it is fresh (its earliest provider expiry, as the main
//!   cache's hit check computes it);
//! - it belongs to one cache instance (`owner`: a reload makes a new instance, so a
//!   changed provider set is never judged by old expiries);
//! - it carries the cache's `epoch`, raised on every eviction and flush, so an entry the
//!   admin API removed is never served from here.
//!
//! Each thread has [`SETS`] × [`WAYS`] entries (256 KiB), allocated the first time the
//! thread stores one. An entry evicted from the main cache for room may still be served
//! here until it expires: it is the same answer, still fresh.
//!
//! Only clients that come back are stored: a key enters on its second main-cache hit
//! within a window (a bit per key hash, [`SEEN_BITS`], cleared after [`SEEN_WINDOW`]
//! first sightings), and the front is probed only for a key whose bit is set. Traffic
//! spread evenly over many clients then seldom pays for a probe or a store it would
//! never use (a cold line read or written, an old answer released).

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use super::IpKey;
use crate::reputation::Lookup;

/// Sets in each thread's front (a power of two).
const SETS: usize = 2048;
/// Entries per set: the most recently stored first.
const WAYS: usize = 2;
/// Bits of the first-sighting filter (8 KiB).
const SEEN_BITS: usize = 1 << 16;
/// First sightings after which the filter is cleared (it stays at most 1/32 set).
const SEEN_WINDOW: u32 = (SEEN_BITS / 32) as u32;

/// One front entry, alone on its cache line.
#[derive(Clone, Default)]
#[repr(align(64))]
struct Line {
    key: Option<IpKey>,
    /// The cache instance ([`next_owner`]); 0 for an empty line.
    owner: u32,
    /// The cache's epoch when the entry was stored.
    epoch: u32,
    /// Unix ms until which the entry is fresh.
    expires_ms: u64,
    lookup: Option<Arc<Lookup>>,
}

/// One thread's front.
struct Front {
    lines: Vec<Line>,
    /// The first-sighting filter: a bit per key hash.
    seen: Vec<u64>,
    /// Bits set since the filter was last cleared.
    sightings: u32,
}

thread_local! {
    static FRONT: RefCell<Front> = const {
        RefCell::new(Front {
            lines: Vec::new(),
            seen: Vec::new(),
            sightings: 0,
        })
    };
}

static OWNERS: AtomicU32 = AtomicU32::new(1);

/// A number for a new cache instance (never 0).
pub(super) fn next_owner() -> u32 {
    loop {
        let n = OWNERS.fetch_add(1, Ordering::Relaxed);
        if n != 0 {
            return n;
        }
    }
}

/// The key's hash: its set in the top bits, its filter bit in the next ones.
#[inline]
fn hash(key: &IpKey) -> u64 {
    let h = match *key {
        IpKey::V4(a) => u64::from(a),
        IpKey::V6(a, p) => {
            let v = u128::from_be_bytes(a);
            (v as u64) ^ ((v >> 64) as u64) ^ u64::from(p)
        }
    };
    // Fibonacci hashing: the top bits of the product are well mixed.
    h.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

const SET_BITS: u32 = SETS.trailing_zeros();

/// The first line of the set of a key with hash `h`.
#[inline]
fn set_of(h: u64) -> usize {
    (h >> (64 - SET_BITS)) as usize * WAYS
}

/// The filter bit of a key with hash `h`.
#[inline]
fn seen_bit(h: u64) -> usize {
    (h >> (64 - SET_BITS - SEEN_BITS.trailing_zeros())) as usize % SEEN_BITS
}

/// The answer stored for `key` by cache `owner` at `epoch`, when it is fresh at `now_ms`.
#[inline]
pub(super) fn get(owner: u32, epoch: u32, key: IpKey, now_ms: u64) -> Option<Arc<Lookup>> {
    FRONT
        .try_with(|front| {
            let front = front.try_borrow().ok()?;
            let h = hash(&key);
            // Not seen in this window: not worth a probe (the line is likely cold).
            if !front.seen(seen_bit(h)) {
                return None;
            }
            let first = set_of(h);
            front.lines.get(first..first + WAYS)?.iter().find_map(|l| {
                (l.key == Some(key)
                    && l.owner == owner
                    && l.epoch == epoch
                    && l.expires_ms > now_ms)
                    .then(|| l.lookup.clone())
                    .flatten()
            })
        })
        .ok()
        .flatten()
}

/// A fresh answer for `key` the main cache just gave: stored when the key was seen
/// lately (the set's older entry makes room), else only remembered as seen.
pub(super) fn offer(owner: u32, epoch: u32, key: IpKey, expires_ms: u64, lookup: &Arc<Lookup>) {
    let _ = FRONT.try_with(|front| {
        let Ok(mut front) = front.try_borrow_mut() else {
            return;
        };
        let h = hash(&key);
        if !front.seen_before(seen_bit(h)) {
            return;
        }
        if front.lines.is_empty() {
            front.lines.resize(SETS * WAYS, Line::default());
        }
        let first = set_of(h);
        let Some(set) = front.lines.get_mut(first..first + WAYS) else {
            return;
        };
        // The same key again (a newer answer): replace it in place; else the oldest goes.
        let at = set
            .iter()
            .position(|l| l.key == Some(key))
            .unwrap_or(WAYS - 1);
        set[..=at].rotate_right(1);
        set[0] = Line {
            key: Some(key),
            owner,
            epoch,
            expires_ms,
            lookup: Some(lookup.clone()),
        };
    });
}

impl Front {
    /// True when `bit` is set in the current window.
    #[inline]
    fn seen(&self, bit: usize) -> bool {
        self.seen
            .get(bit / 64)
            .is_some_and(|w| w & (1u64 << (bit % 64)) != 0)
    }

    /// True when `bit` was set in the current window; sets it otherwise.
    fn seen_before(&mut self, bit: usize) -> bool {
        if self.seen.is_empty() {
            self.seen.resize(SEEN_BITS / 64, 0);
        }
        let (word, mask) = (bit / 64, 1u64 << (bit % 64));
        let Some(w) = self.seen.get_mut(word) else {
            return false;
        };
        if *w & mask != 0 {
            return true;
        }
        *w |= mask;
        self.sightings += 1;
        if self.sightings >= SEEN_WINDOW {
            self.seen.fill(0);
            self.sightings = 0;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn lookup() -> Arc<Lookup> {
        Arc::new(Lookup::default())
    }

    /// Offers twice: a key is stored on its second sighting.
    fn put(owner: u32, epoch: u32, key: IpKey, expires_ms: u64, lookup: &Arc<Lookup>) {
        offer(owner, epoch, key, expires_ms, lookup);
        offer(owner, epoch, key, expires_ms, lookup);
    }

    #[test]
    fn a_line_holds_one_entry() {
        assert_eq!(std::mem::size_of::<Line>(), 64);
        assert_eq!(std::mem::align_of::<Line>(), 64);
    }

    #[test]
    fn an_entry_answers_only_while_fresh_for_its_cache_and_epoch() {
        let owner = next_owner();
        let key = IpKey::V4(0x0b00_0001);
        let l = lookup();
        put(owner, 3, key, 1_000, &l);
        let got = get(owner, 3, key, 999).unwrap();
        assert!(Arc::ptr_eq(&got, &l));
        assert!(get(owner, 3, key, 1_000).is_none(), "expired");
        assert!(get(owner, 4, key, 999).is_none(), "evicted since (epoch)");
        assert!(get(next_owner(), 3, key, 999).is_none(), "another cache");
        assert!(get(owner, 3, IpKey::V4(0x0b00_0002), 999).is_none());
    }

    #[test]
    fn a_set_keeps_its_two_most_recent_keys_and_replaces_a_key_in_place() {
        let owner = next_owner();
        // Three keys of one set.
        let base = IpKey::V4(7);
        let mut same: Vec<IpKey> = (8u32..)
            .map(IpKey::V4)
            .filter(|k| set_of(hash(k)) == set_of(hash(&base)))
            .take(2)
            .collect();
        same.insert(0, base);
        let (a, b, c) = (same[0], same[1], same[2]);
        let (la, lb, lc) = (lookup(), lookup(), lookup());
        put(owner, 0, a, 10, &la);
        put(owner, 0, b, 10, &lb);
        // A newer answer for `a` replaces the old one and `b` stays.
        let la2 = lookup();
        put(owner, 0, a, 20, &la2);
        assert!(Arc::ptr_eq(&get(owner, 0, a, 15).unwrap(), &la2));
        assert!(Arc::ptr_eq(&get(owner, 0, b, 5).unwrap(), &lb));
        // A third key pushes out the older of the two (`b`).
        put(owner, 0, c, 10, &lc);
        assert!(get(owner, 0, b, 5).is_none());
        assert!(get(owner, 0, a, 15).is_some());
        assert!(get(owner, 0, c, 5).is_some());
        // The old answer is no longer referenced by the front.
        assert_eq!(Arc::strong_count(&la), 1);
    }

    #[test]
    fn ipv6_keys_of_different_prefixes_are_different_entries() {
        let owner = next_owner();
        let ip: std::net::IpAddr = "2001:db8::1".parse().unwrap();
        let (k48, k64) = (IpKey::new(ip, 48), IpKey::new(ip, 64));
        put(owner, 0, k64, 10, &lookup());
        assert!(get(owner, 0, k64, 5).is_some());
        assert!(get(owner, 0, k48, 5).is_none());
    }

    #[test]
    fn a_key_is_stored_on_its_second_sighting_and_the_filter_forgets() {
        let owner = next_owner();
        let key = IpKey::V4(0x0c00_0001);
        let l = lookup();
        offer(owner, 0, key, 10, &l);
        assert!(get(owner, 0, key, 5).is_none(), "seen once: not stored");
        offer(owner, 0, key, 10, &l);
        assert!(get(owner, 0, key, 5).is_some(), "seen twice: stored");

        // After a window of other first sightings, a key counts as new again.
        let other = IpKey::V4(0x0d00_0001);
        offer(owner, 0, other, 10, &l);
        let mut k = 0x0e00_0000u32;
        while FRONT.with(|f| f.borrow().sightings) != 0 {
            offer(owner, 0, IpKey::V4(k), 10, &l);
            k += 1;
        }
        assert!(k - 0x0e00_0000 >= SEEN_WINDOW - 2, "cleared after a window");
        offer(owner, 0, other, 10, &l);
        assert!(get(owner, 0, other, 5).is_none(), "the filter was cleared");
    }
}
