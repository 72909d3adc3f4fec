//! The time budget of a batch loop (cron runs, on-demand embedding): a run
//! starts another round only while one as slow as the slowest so far still
//! fits, so it stops cleanly before the platform would kill it mid-write.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct Budget {
    deadline: Instant,
    slowest: Duration,
}

impl Budget {
    pub fn new(budget: Duration) -> Self {
        Self {
            deadline: Instant::now() + budget,
            slowest: Duration::ZERO,
        }
    }

    /// When the run must be over.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Whether a round as slow as the slowest so far still fits.
    pub fn has_room(&self) -> bool {
        Instant::now() + self.slowest < self.deadline
    }

    /// Records a round that started at `started`.
    pub fn finished_round(&mut self, started: Instant) {
        self.slowest = self.slowest.max(started.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_is_refused_when_the_slowest_one_would_overrun() {
        let mut budget = Budget::new(Duration::from_millis(200));
        assert!(budget.has_room(), "nothing measured yet");
        budget.finished_round(Instant::now() - Duration::from_millis(250));
        assert!(!budget.has_room(), "a 250 ms round cannot fit in 200 ms");
    }
}
