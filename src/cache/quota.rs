//! Daily quotas per provider, counted per UTC day, never exceeded under concurrency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// The UTC day number (days since the Unix epoch).
pub fn utc_day(now: SystemTime) -> u32 {
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (secs / 86_400) as u32
}

/// A counter of look-ups spent today. Day and count live in one atomic so a reservation
/// across midnight is never counted against the wrong day.
#[derive(Debug)]
pub struct Quota {
    limit: u32,
    /// day << 32 | count
    state: AtomicU64,
}

impl Quota {
    /// A quota of `limit` look-ups a day, `spent` already spent on `day`.
    pub fn new(limit: u32, day: u32, spent: u32) -> Quota {
        Quota {
            limit,
            state: AtomicU64::new((u64::from(day) << 32) | u64::from(spent)),
        }
    }

    /// Reserves one look-up for `day`; returns the count spent after it, or None when
    /// the quota is spent.
    pub fn try_reserve(&self, day: u32) -> Option<u32> {
        let mut spent_after = 0;
        self.state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                let (d, c) = ((s >> 32) as u32, s as u32);
                let c = if d == day { c } else { 0 };
                if c >= self.limit {
                    return None;
                }
                spent_after = c + 1;
                Some((u64::from(day) << 32) | u64::from(c + 1))
            })
            .ok()
            .map(|_| spent_after)
    }

    /// Marks every look-up of `day` as spent.
    pub fn exhaust(&self, day: u32) {
        self.state.store(
            (u64::from(day) << 32) | u64::from(self.limit),
            Ordering::Release,
        );
    }

    /// Look-ups left on `day`.
    pub fn remaining(&self, day: u32) -> u32 {
        let s = self.state.load(Ordering::Acquire);
        let (d, c) = ((s >> 32) as u32, s as u32);
        if d == day {
            self.limit.saturating_sub(c)
        } else {
            self.limit
        }
    }

    /// Look-ups spent on `day`.
    pub fn spent(&self, day: u32) -> u32 {
        self.limit - self.remaining(day)
    }

    /// Raises the count of `day` to `spent` (what the cluster counted); never lowers it.
    pub fn raise(&self, day: u32, spent: u32) {
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                let (d, c) = ((s >> 32) as u32, s as u32);
                let c = if d == day { c.max(spent) } else { spent };
                Some((u64::from(day) << 32) | u64::from(c))
            });
    }

    /// The daily limit.
    pub fn limit(&self) -> u32 {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Arc;

    #[test]
    fn never_exceeded_under_concurrency() {
        let q = Arc::new(Quota::new(3, 100, 0));
        let got: usize = (0..16)
            .map(|_| {
                let q = q.clone();
                std::thread::spawn(move || {
                    (0..100).filter(|_| q.try_reserve(100).is_some()).count()
                })
            })
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(got, 3);
        assert_eq!(q.remaining(100), 0);
    }

    #[test]
    fn a_new_day_resets_and_restored_counts_hold() {
        let q = Quota::new(5, 10, 4);
        assert_eq!(q.remaining(10), 1);
        assert_eq!(q.try_reserve(10), Some(5));
        assert_eq!(q.try_reserve(10), None);
        assert_eq!(q.remaining(11), 5);
        assert_eq!(q.try_reserve(11), Some(1));
        assert_eq!(q.spent(11), 1);
        q.exhaust(11);
        assert_eq!((q.remaining(11), q.try_reserve(11)), (0, None));
    }
}
