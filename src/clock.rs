//! The time the gate reads for expiries, quota days and provider cool-downs. The system
//! clock by default; a [`ManualClock`] lets tests (and simulations) move time on without
//! sleeping.

use std::fmt::Debug;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + Debug + 'static {
    /// Now.
    fn now(&self) -> SystemTime;

    /// Unix milliseconds at `at`, a monotonic reading taken a moment ago (the hot path
    /// reads the clock once per request and derives the rest). By default the clock is
    /// read again.
    fn unix_ms_at(&self, _at: Moment) -> u64 {
        unix_ms(self.now())
    }
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn unix_ms_at(&self, at: Moment) -> u64 {
        ANCHOR.unix_ms_at(at)
    }
}

/// The counter behind [`Moment`]: calibrated once per process (a few milliseconds).
static COUNTER: LazyLock<quanta::Clock> = LazyLock::new(quanta::Clock::new);

/// A reading of the monotonic clock, for timing a decision and deriving the time its
/// expiry checks use. Read from the CPU's time-stamp counter where it is invariant
/// (about 10 ns a read, against 18 ns for `std::time::Instant` through the vDSO on the
/// machine of docs/benchmarks.md), from the system's monotonic clock elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Moment(quanta::Instant);

impl Moment {
    /// Now.
    #[inline]
    pub fn now() -> Moment {
        Moment(COUNTER.now())
    }

    /// Time since `self` (zero if `self` is later).
    #[inline]
    pub fn elapsed(self) -> Duration {
        Moment::now().saturating_duration_since(self)
    }

    /// Time from `earlier` to `self` (zero if `earlier` is later).
    #[inline]
    pub fn saturating_duration_since(self, earlier: Moment) -> Duration {
        self.0.duration_since(earlier.0)
    }

    /// `self` moved `d` later (None past the counter's range).
    pub fn checked_add(self, d: Duration) -> Option<Moment> {
        self.0.checked_add(d).map(Moment)
    }

    /// Calibrates the counter now rather than on the first decision.
    pub fn calibrate() {
        LazyLock::force(&COUNTER);
    }
}

/// How far apart the wall clock and the monotonic clock are, re-read every
/// [`Anchor::REFRESH_MS`] so a step of the wall clock is followed within a second.
#[derive(Debug)]
struct Anchor {
    base: Moment,
    /// Unix ms minus monotonic ms since `base`, as last read.
    offset_ms: AtomicI64,
    /// Monotonic ms since `base` after which the offset is read again.
    refresh_after_ms: AtomicU64,
}

static ANCHOR: LazyLock<Anchor> = LazyLock::new(|| {
    let base = Moment::now();
    let a = Anchor {
        base,
        offset_ms: AtomicI64::new(0),
        refresh_after_ms: AtomicU64::new(0),
    };
    a.refresh();
    a
});

impl Anchor {
    const REFRESH_MS: u64 = 1_000;

    /// Reads both clocks now.
    fn refresh(&self) {
        let mono_ms = self.mono_ms(Moment::now());
        let wall = i64::try_from(unix_ms(SystemTime::now())).unwrap_or(i64::MAX);
        let mono = i64::try_from(mono_ms).unwrap_or(i64::MAX);
        self.offset_ms
            .store(wall.saturating_sub(mono), Ordering::Relaxed);
        self.refresh_after_ms
            .store(mono_ms.saturating_add(Self::REFRESH_MS), Ordering::Relaxed);
    }

    fn mono_ms(&self, at: Moment) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX)
    }

    fn unix_ms_at(&self, at: Moment) -> u64 {
        let mono_ms = self.mono_ms(at);
        if mono_ms >= self.refresh_after_ms.load(Ordering::Relaxed) {
            self.refresh();
        }
        let mono = i64::try_from(mono_ms).unwrap_or(i64::MAX);
        u64::try_from(mono.saturating_add(self.offset_ms.load(Ordering::Relaxed))).unwrap_or(0)
    }
}

/// A clock that stands still until told to move. Clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<SystemTime>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: SystemTime) -> Self {
        ManualClock {
            now: Arc::new(Mutex::new(start)),
        }
    }

    /// A clock standing at the system time of its creation.
    pub fn starting_now() -> Self {
        Self::new(SystemTime::now())
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now += d;
    }

    /// Sets the clock to `t`.
    pub fn set(&self, t: SystemTime) {
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) = t;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A clock shared by the parts of one gate.
pub type SharedClock = Arc<dyn Clock>;

/// The system clock, shared.
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// Unix milliseconds of `t` (0 before the epoch).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_clones_share_it() {
        let c = ManualClock::new(UNIX_EPOCH + Duration::from_secs(10));
        let shared = c.clone();
        assert_eq!(unix_ms(c.now()), 10_000);
        shared.advance(Duration::from_millis(1500));
        assert_eq!(unix_ms(c.now()), 11_500);
        c.set(UNIX_EPOCH);
        assert_eq!(unix_ms(shared.now()), 0);
        // A manual clock ignores the instant it is given: its own time counts.
        assert_eq!(c.unix_ms_at(Moment::now()), 0);
    }

    #[test]
    fn a_moment_measures_time_as_the_system_clock_does() {
        let (m, i) = (Moment::now(), std::time::Instant::now());
        std::thread::sleep(Duration::from_millis(50));
        let (dm, di) = (m.elapsed(), i.elapsed());
        assert!(dm >= Duration::from_millis(50), "{dm:?}");
        assert!(dm <= di + di / 20, "counter {dm:?}, system clock {di:?}");
        assert_eq!(
            Moment::now().saturating_duration_since(Moment::now()),
            Duration::ZERO
        );
    }

    #[test]
    fn the_system_clock_derived_from_an_instant_agrees_with_a_fresh_read() {
        let before = unix_ms(SystemTime::now());
        let derived = SystemClock.unix_ms_at(Moment::now());
        let after = unix_ms(SystemTime::now());
        // The offset is read to the millisecond: allow the rounding of both reads.
        assert!(
            derived + 2 >= before && derived <= after + 2,
            "{before} <= {derived} <= {after}"
        );
        // An instant a minute later reads a minute later.
        let later = SystemClock.unix_ms_at(
            Moment::now()
                .checked_add(Duration::from_secs(60))
                .unwrap_or_else(Moment::now),
        );
        assert!(later >= derived + 59_000, "{derived} then {later}");
    }
}
