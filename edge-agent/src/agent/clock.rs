//! Trusted time: the wall clock, but never earlier than what the cloud has vouched for.
//!
//! The gateway remembers the newest cloud-signed time it has seen (the `ts` of a verified
//! cloud command, persisted in the store so it survives restarts) together with the
//! monotonic instant it saw it. Trusted now is `max(wall clock, anchor + monotonic time
//! since the anchor)`: a wall clock that steps back behind the anchor (a dead RTC battery,
//! a bad NTP answer, someone setting the date) is logged and not believed, so an expired
//! token can never become valid again because of a clock step. A clock that runs ahead is
//! believed: refusing early is safe, admitting late is not.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Where "now" comes from. Tests replace the wall clock to simulate steps.
pub trait WallClock: Send + Sync + 'static {
    /// Unix milliseconds as the operating system says.
    fn now_ms(&self) -> u64;
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

#[derive(Debug, Clone, Copy)]
struct Anchor {
    cloud_ms: u64,
    at: Instant,
}

/// Trusted time for token checks and event stamps.
pub struct TrustedClock {
    wall: Box<dyn WallClock>,
    // Held only for a copy in or out, never across an await.
    anchor: Mutex<Option<Anchor>>,
    warned: AtomicBool,
}

impl std::fmt::Debug for TrustedClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedClock")
            .field("anchor_ms", &self.anchor_ms())
            .finish()
    }
}

impl TrustedClock {
    /// A clock over `wall` with the anchor persisted by an earlier run, if any.
    pub fn new(wall: impl WallClock, persisted_anchor_ms: Option<u64>) -> Self {
        TrustedClock {
            wall: Box::new(wall),
            anchor: Mutex::new(persisted_anchor_ms.map(|cloud_ms| Anchor {
                cloud_ms,
                at: Instant::now(),
            })),
            warned: AtomicBool::new(false),
        }
    }

    /// The newest cloud time seen, Unix ms.
    pub fn anchor_ms(&self) -> Option<u64> {
        self.anchor.lock().ok().and_then(|a| a.map(|a| a.cloud_ms))
    }

    /// Records a verified cloud timestamp; returns whether it moved the anchor forward.
    pub fn observe_cloud_ms(&self, cloud_ms: u64) -> bool {
        let Ok(mut a) = self.anchor.lock() else {
            return false;
        };
        let floor_now = a.map_or(0, |a| {
            a.cloud_ms.saturating_add(a.at.elapsed().as_millis() as u64)
        });
        if cloud_ms > floor_now {
            *a = Some(Anchor {
                cloud_ms,
                at: Instant::now(),
            });
            true
        } else {
            false
        }
    }

    /// Trusted Unix milliseconds.
    pub fn now_ms(&self) -> u64 {
        let wall = self.wall.now_ms();
        let floor = self.anchor.lock().ok().and_then(|a| *a).map_or(0, |a| {
            a.cloud_ms.saturating_add(a.at.elapsed().as_millis() as u64)
        });
        if wall >= floor {
            self.warned.store(false, Ordering::Relaxed);
            wall
        } else {
            // Log once per excursion, not on every token.
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    wall_ms = wall,
                    trusted_ms = floor,
                    behind_ms = floor - wall,
                    "wall clock is behind the newest cloud-signed time; not believing it, using the anchor"
                );
            }
            floor
        }
    }

    /// Trusted Unix seconds.
    pub fn now_s(&self) -> u64 {
        self.now_ms() / 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    #[derive(Clone)]
    struct Manual(Arc<AtomicU64>);
    impl WallClock for Manual {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn clock_step_back_is_not_believed() {
        let wall = Manual(Arc::new(AtomicU64::new(100_000_000)));
        let c = TrustedClock::new(wall.clone(), None);
        assert_eq!(c.now_ms(), 100_000_000);
        assert!(c.observe_cloud_ms(100_000_500));
        // The wall clock jumps back one day.
        wall.0.store(100_000_000 - 86_400_000, Ordering::SeqCst);
        assert!(c.now_ms() >= 100_000_500);
        // An older cloud ts does not move the anchor back.
        assert!(!c.observe_cloud_ms(5));
        assert!(c.now_ms() >= 100_000_500);
        // A wall clock ahead of the anchor is believed.
        wall.0.store(200_000_000, Ordering::SeqCst);
        assert_eq!(c.now_ms(), 200_000_000);
    }

    #[test]
    fn persisted_anchor_survives_restart() {
        let wall = Manual(Arc::new(AtomicU64::new(1_000)));
        let c = TrustedClock::new(wall, Some(5_000_000));
        assert!(c.now_ms() >= 5_000_000);
        assert_eq!(c.anchor_ms(), Some(5_000_000));
    }
}
