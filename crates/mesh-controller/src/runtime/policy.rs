//! The local runtime's decisions, as pure functions of state, observations and time:
//! what to do after a process exits (restart after a back-off, or declare a crash loop),
//! and which replicas to start or stop to meet a desired count.

use std::collections::VecDeque;
use std::time::Duration;

/// How restarts are paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Delay before the first restart.
    pub initial: Duration,
    /// Longest delay; also the retry pace of a crash-looping instance.
    pub max: Duration,
    /// A process that ran this long starts its back-off over.
    pub stable_after: Duration,
    /// This many exits within `crash_loop_window` make a crash loop.
    pub crash_loop_exits: usize,
    /// The window for `crash_loop_exits`.
    pub crash_loop_window: Duration,
}

/// What follows an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterExit {
    /// Restart after this delay.
    RestartIn(Duration),
    /// Too many exits too quickly: retry only at the slowest pace, and say so.
    CrashLoop {
        /// When the next attempt is.
        retry_in: Duration,
    },
}

impl AfterExit {
    /// The delay before the next start, either way.
    pub fn delay(self) -> Duration {
        match self {
            AfterExit::RestartIn(delay) | AfterExit::CrashLoop { retry_in: delay } => delay,
        }
    }
}

/// One instance's exit history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExitHistory {
    /// Exit times (ms) within the crash-loop window.
    recent: VecDeque<u64>,
    /// Restarts since the back-off last started over.
    consecutive: u32,
    /// Every restart of the instance.
    pub restarts: u32,
}

impl RestartPolicy {
    /// Records an exit at `now_ms` of a process that ran for `ran`; `jitter` in
    /// `[0, 1)` spreads restarts of several instances apart (up to -25 %).
    pub fn after_exit(
        &self,
        history: &mut ExitHistory,
        now_ms: u64,
        ran: Duration,
        jitter: f64,
    ) -> AfterExit {
        if ran >= self.stable_after {
            history.consecutive = 0;
        }
        history.consecutive = history.consecutive.saturating_add(1);
        history.restarts = history.restarts.saturating_add(1);
        let window = u64::try_from(self.crash_loop_window.as_millis()).unwrap_or(u64::MAX);
        history.recent.push_back(now_ms);
        while history
            .recent
            .front()
            .is_some_and(|&at| now_ms.saturating_sub(at) > window)
        {
            history.recent.pop_front();
        }
        if history.recent.len() >= self.crash_loop_exits {
            return AfterExit::CrashLoop { retry_in: self.max };
        }
        let exponent = history.consecutive.saturating_sub(1).min(20);
        let delay = self
            .initial
            .saturating_mul(1 << exponent)
            .min(self.max)
            .mul_f64(1.0 - 0.25 * jitter.clamp(0.0, 1.0));
        AfterExit::RestartIn(delay.max(Duration::from_millis(1)))
    }
}

/// Which replica indices to start and which to stop so that `running` becomes
/// `0..desired`: the lowest missing indices start, the highest extra ones stop first.
pub fn replica_plan(desired: u32, running: &[u32]) -> (Vec<u32>, Vec<u32>) {
    let start = (0..desired)
        .filter(|index| !running.contains(index))
        .collect();
    let mut stop: Vec<u32> = running
        .iter()
        .copied()
        .filter(|index| *index >= desired)
        .collect();
    stop.sort_unstable_by(|a, b| b.cmp(a));
    (start, stop)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RestartPolicy = RestartPolicy {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(5),
        stable_after: Duration::from_secs(30),
        crash_loop_exits: 5,
        crash_loop_window: Duration::from_secs(60),
    };

    #[test]
    fn backoff_doubles_to_the_cap_and_starts_over_after_a_stable_run() {
        let mut history = ExitHistory::default();
        let mut delays = Vec::new();
        for n in 0..4u64 {
            // Exits spaced a minute apart never make a crash loop.
            let next = POLICY.after_exit(&mut history, n * 61_000, Duration::from_secs(1), 0.0);
            delays.push(next.delay().as_millis());
        }
        assert_eq!(delays, [100, 200, 400, 800]);
        for n in 4..12u64 {
            POLICY.after_exit(&mut history, n * 61_000, Duration::from_secs(1), 0.0);
        }
        let capped = POLICY.after_exit(&mut history, 13 * 61_000, Duration::from_secs(1), 0.0);
        assert_eq!(capped, AfterExit::RestartIn(Duration::from_secs(5)));
        let fresh = POLICY.after_exit(&mut history, 14 * 61_000, Duration::from_secs(31), 0.0);
        assert_eq!(fresh, AfterExit::RestartIn(Duration::from_millis(100)));
        assert_eq!(history.restarts, 14);
        let jittered = POLICY.after_exit(&mut ExitHistory::default(), 0, Duration::ZERO, 0.999);
        assert!(
            jittered.delay() > Duration::from_millis(74)
                && jittered.delay() < Duration::from_millis(100)
        );
    }

    #[test]
    fn quick_successive_exits_are_a_crash_loop_not_a_busy_loop() {
        let mut history = ExitHistory::default();
        let outcomes: Vec<_> = (0..6u64)
            .map(|n| POLICY.after_exit(&mut history, n * 100, Duration::from_millis(10), 0.0))
            .collect();
        assert!(matches!(outcomes[3], AfterExit::RestartIn(_)));
        assert_eq!(
            outcomes[4],
            AfterExit::CrashLoop {
                retry_in: POLICY.max
            }
        );
        assert_eq!(
            outcomes[5],
            AfterExit::CrashLoop {
                retry_in: POLICY.max
            }
        );
        // Once the window has passed without exits, it is an ordinary back-off again.
        let later = POLICY.after_exit(&mut history, 200_000, Duration::from_millis(10), 0.0);
        assert!(matches!(later, AfterExit::RestartIn(_)), "{later:?}");
    }

    #[test]
    fn replica_plans_fill_gaps_and_stop_the_highest_first() {
        assert_eq!(replica_plan(2, &[]), (vec![0, 1], vec![]));
        assert_eq!(replica_plan(4, &[0, 1]), (vec![2, 3], vec![]));
        assert_eq!(replica_plan(1, &[0, 1, 2, 3]), (vec![], vec![3, 2, 1]));
        assert_eq!(replica_plan(2, &[1, 3]), (vec![0], vec![3]));
        assert_eq!(replica_plan(0, &[0]), (vec![], vec![0]));
    }
}
