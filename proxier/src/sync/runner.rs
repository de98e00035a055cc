//! When to sync: a bounded-frequency runner as a pure state machine over explicit instants.
//!
//! Owns the scheduling decisions of the daemon's sync loop, with the semantics of
//! kube-proxy's v1.34+ `BoundedFrequencyRunner` (reference §4.5):
//!
//! - change notifications ([`Runner::request`]) are coalesced: any number of them while a
//!   sync is pending or running cause one more sync, not one each;
//! - `min_interval` (`--ipvs-min-sync-period`) is counted from the **completion** of one
//!   sync to the start of the next (0: a change syncs as soon as the previous sync is done);
//! - `max_interval` (`--ipvs-sync-period`) forces a full resync that long after the last one,
//!   changes or not (this is what repairs drift behind our back);
//! - a failed sync (the sync could not run, or some object failed: [`Outcome::Failed`]) is
//!   retried after a backoff, `retry_base` doubling up to `retry_max`. Upstream retries after
//!   a fixed interval; doubling keeps a persistently failing object from turning the daemon
//!   into a busy loop while still fixing a transient failure within a second;
//! - between syncs, while real servers drain, the drain list is checked every
//!   `drain_interval` ([`Step::CheckDrains`]). A due sync always wins over a drain check
//!   (a sync re-checks drains itself).
//!
//! Nothing here reads a clock or sleeps: the caller passes `now` in and is told what to do
//! ([`Runner::poll`]), which makes whole sequences of decisions testable with made-up times.
//! `sync::daemon` drives it on tokio.

use std::time::{Duration, Instant};

/// The runner's intervals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunnerConfig {
    /// Least time from the end of one sync to the start of the next.
    pub min_interval: Duration,
    /// Longest time between the end of one sync and the start of the next.
    pub max_interval: Duration,
    /// First retry delay after a failed sync.
    pub retry_base: Duration,
    /// Largest retry delay.
    pub retry_max: Duration,
    /// How often draining real servers are checked between syncs.
    pub drain_interval: Duration,
}

impl RunnerConfig {
    /// Intervals from kube-proxy's two settings; retries start at 1 s and never wait longer
    /// than a sync period; drains are checked every 2 s (upstream: every minute, which keeps a
    /// finished real server up to a minute longer).
    pub fn from_periods(min_sync_period: Duration, sync_period: Duration) -> Self {
        let max_interval = sync_period.max(min_sync_period);
        Self {
            min_interval: min_sync_period,
            max_interval,
            retry_base: Duration::from_secs(1).min(max_interval),
            retry_max: max_interval,
            drain_interval: Duration::from_secs(2),
        }
    }
}

/// How a sync went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything was applied.
    Ok,
    /// The sync could not run, or at least one object failed.
    Failed,
}

/// What the caller should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Run one full sync, then call [`Runner::sync_finished`].
    Sync(Reason),
    /// Check the draining real servers, then call [`Runner::drains_checked`].
    CheckDrains,
    /// Nothing is due before this instant (or before the next [`Runner::request`]).
    Sleep(Instant),
}

/// Why a sync runs (logged, and asserted by the tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A change was requested (or this is the first sync).
    Requested,
    /// A retry after a failed sync.
    Retry,
    /// The periodic full resync.
    Periodic,
}

/// The runner's state. Create with [`Runner::new`]; the first sync is due at once.
#[derive(Debug, Clone)]
pub struct Runner {
    config: RunnerConfig,
    /// A change arrived that no started sync has seen yet.
    pending: bool,
    /// A sync was handed out and has not finished.
    running: bool,
    /// End of the last sync (start time for the very first one).
    last_end: Instant,
    /// Whether any sync has finished yet.
    synced_once: bool,
    /// When the failed sync is retried.
    retry_at: Option<Instant>,
    /// Consecutive failed syncs.
    failures: u32,
    /// Whether real servers are draining.
    draining: bool,
    next_drain_check: Instant,
}

impl Runner {
    /// A runner whose first sync is due at `now`.
    pub fn new(config: RunnerConfig, now: Instant) -> Self {
        Self {
            config,
            pending: true,
            running: false,
            last_end: now,
            synced_once: false,
            retry_at: None,
            failures: 0,
            draining: false,
            next_drain_check: now + config.drain_interval,
        }
    }

    pub fn config(&self) -> &RunnerConfig {
        &self.config
    }

    /// Consecutive failed syncs so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Something changed: one more sync is wanted. Coalesces with any request not yet served.
    pub fn request(&mut self) {
        self.pending = true;
    }

    /// Whether a requested sync has not started yet.
    pub fn is_pending(&self) -> bool {
        self.pending
    }

    /// The earliest start of the next sync allowed by `min_interval`.
    fn earliest(&self) -> Instant {
        if self.synced_once {
            self.last_end + self.config.min_interval
        } else {
            self.last_end
        }
    }

    /// When the next sync is due and why, if none is running.
    fn next_sync(&self) -> (Instant, Reason) {
        let earliest = self.earliest();
        let periodic = self.last_end + self.config.max_interval;
        let mut next = (periodic, Reason::Periodic);
        if let Some(at) = self.retry_at {
            let at = at.max(earliest);
            if at <= next.0 {
                next = (at, Reason::Retry);
            }
        }
        if self.pending && earliest <= next.0 {
            next = (earliest, Reason::Requested);
        }
        next
    }

    /// The decision at `now`. A returned [`Step::Sync`] counts as started: changes requested
    /// from here on are for the sync after it.
    pub fn poll(&mut self, now: Instant) -> Step {
        if self.running {
            // The caller polls again only after `sync_finished`; be safe anyway.
            return Step::Sleep(now + self.config.max_interval);
        }
        let (at, reason) = self.next_sync();
        if at <= now {
            self.running = true;
            self.pending = false;
            return Step::Sync(reason);
        }
        if self.draining {
            if self.next_drain_check <= now {
                return Step::CheckDrains;
            }
            return Step::Sleep(at.min(self.next_drain_check));
        }
        Step::Sleep(at)
    }

    /// The sync handed out by [`Runner::poll`] ended at `now`; `draining`: whether real
    /// servers are left draining.
    pub fn sync_finished(&mut self, now: Instant, outcome: Outcome, draining: bool) {
        self.running = false;
        self.synced_once = true;
        self.last_end = now;
        match outcome {
            Outcome::Ok => {
                self.failures = 0;
                self.retry_at = None;
            }
            Outcome::Failed => {
                self.failures = self.failures.saturating_add(1);
                self.retry_at = Some(now + self.backoff());
            }
        }
        self.set_draining(now, draining);
    }

    /// The drain check handed out by [`Runner::poll`] ended at `now`.
    pub fn drains_checked(&mut self, now: Instant, draining: bool) {
        self.set_draining(now, draining);
    }

    fn set_draining(&mut self, now: Instant, draining: bool) {
        self.draining = draining;
        self.next_drain_check = now + self.config.drain_interval;
    }

    /// The retry delay after `self.failures` consecutive failures.
    fn backoff(&self) -> Duration {
        let doublings = self.failures.saturating_sub(1).min(16);
        self.config
            .retry_base
            .saturating_mul(1 << doublings)
            .min(self.config.retry_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    const S: Duration = Duration::from_secs(1);

    /// What the simulated world does to the runner, at a time in ms since start.
    #[derive(Debug, Clone, Copy)]
    enum Event {
        /// A change notification.
        Change,
    }

    /// Drives a runner as the daemon does, with a fake clock: polls, "runs" each sync for
    /// `sync_ms` with the outcome `outcomes` gives for the n-th sync, sleeps until the next
    /// deadline or event, and logs every decision as `"<ms> <what>"` until `end_ms`.
    struct Sim {
        start: Instant,
        runner: Runner,
        sync_ms: u64,
        log: Vec<String>,
    }

    impl Sim {
        fn new(config: RunnerConfig, sync_ms: u64) -> Self {
            let start = Instant::now();
            Self {
                start,
                runner: Runner::new(config, start),
                sync_ms,
                log: Vec::new(),
            }
        }

        fn ms(&self, t: Instant) -> u64 {
            u64::try_from(t.duration_since(self.start).as_millis()).unwrap_or(u64::MAX)
        }

        fn run(
            &mut self,
            events: &[(u64, Event)],
            end_ms: u64,
            outcome: impl Fn(usize) -> Outcome,
            draining: impl Fn(u64) -> bool,
        ) -> Vec<String> {
            let mut now = self.start;
            let mut events = events.to_vec();
            events.sort_by_key(|(t, _)| *t);
            let mut events = events.into_iter().peekable();
            let mut syncs = 0;
            loop {
                // Deliver the events that happened by now (while the runner was busy too).
                while let Some(&(t, e)) = events.peek() {
                    if self.start + Duration::from_millis(t) > now {
                        break;
                    }
                    events.next();
                    match e {
                        Event::Change => self.runner.request(),
                    }
                }
                if self.ms(now) >= end_ms {
                    break;
                }
                match self.runner.poll(now) {
                    Step::Sync(reason) => {
                        let started = self.ms(now);
                        now += Duration::from_millis(self.sync_ms);
                        let result = outcome(syncs);
                        syncs += 1;
                        self.log
                            .push(format!("{started} sync {reason:?} -> {result:?}"));
                        let d = draining(self.ms(now));
                        self.runner.sync_finished(now, result, d);
                    }
                    Step::CheckDrains => {
                        self.log.push(format!("{} drains", self.ms(now)));
                        let d = draining(self.ms(now));
                        self.runner.drains_checked(now, d);
                    }
                    Step::Sleep(until) => {
                        let next_event = events
                            .peek()
                            .map(|(t, _)| self.start + Duration::from_millis(*t));
                        let end = self.start + Duration::from_millis(end_ms);
                        now = [Some(until), next_event, Some(end)]
                            .into_iter()
                            .flatten()
                            .min()
                            .unwrap_or(end);
                    }
                }
            }
            std::mem::take(&mut self.log)
        }
    }

    fn config(min_s: u64, max_s: u64) -> RunnerConfig {
        RunnerConfig::from_periods(Duration::from_secs(min_s), Duration::from_secs(max_s))
    }

    fn ok(_: usize) -> Outcome {
        Outcome::Ok
    }

    fn never(_: u64) -> bool {
        false
    }

    #[test]
    fn first_sync_at_once_then_periodic_from_completion() {
        let mut sim = Sim::new(config(0, 30), 100);
        let log = sim.run(&[], 65_000, ok, never);
        assert_eq!(
            log,
            [
                "0 sync Requested -> Ok",
                // 30 s after the END of the previous sync (100 ms long).
                "30100 sync Periodic -> Ok",
                "60200 sync Periodic -> Ok",
            ]
        );
    }

    #[test]
    fn a_burst_during_a_sync_coalesces_into_one_more_sync() {
        let mut sim = Sim::new(config(0, 30), 500);
        let burst: Vec<(u64, Event)> = (0..20).map(|i| (100 + i * 10, Event::Change)).collect();
        let log = sim.run(&burst, 5_000, ok, never);
        // min_interval 0: the next sync starts as soon as the first one is done, and the 20
        // notifications it missed are served by that one sync.
        assert_eq!(log, ["0 sync Requested -> Ok", "500 sync Requested -> Ok"]);
    }

    #[test]
    fn min_interval_counts_from_completion_and_coalesces() {
        let mut sim = Sim::new(config(2, 30), 300);
        let events = [
            (1_000, Event::Change),
            (1_200, Event::Change),
            (2_000, Event::Change),
            (5_000, Event::Change),
        ];
        let log = sim.run(&events, 10_000, ok, never);
        assert_eq!(
            log,
            [
                "0 sync Requested -> Ok",
                // first ended at 300: not before 2300, and the three changes are one sync
                "2300 sync Requested -> Ok",
                // previous ended at 2600, so 4600 would be allowed: the change at 5000 runs
                // at once
                "5000 sync Requested -> Ok",
            ]
        );
    }

    #[test]
    fn failures_retry_with_backoff_and_success_resets_it() {
        let mut sim = Sim::new(config(0, 30), 100);
        // syncs 0..=3 fail, then all succeed
        let log = sim.run(
            &[(20_000, Event::Change)],
            22_000,
            |n| {
                if n < 4 { Outcome::Failed } else { Outcome::Ok }
            },
            never,
        );
        assert_eq!(
            log,
            [
                "0 sync Requested -> Failed",
                "1100 sync Retry -> Failed",
                "3200 sync Retry -> Failed",
                "7300 sync Retry -> Failed",
                "15400 sync Retry -> Ok",
                "20000 sync Requested -> Ok",
            ]
        );
        assert_eq!(sim.runner.failures(), 0);
    }

    #[test]
    fn backoff_is_capped_by_the_sync_period_and_the_min_interval_still_applies() {
        let mut sim = Sim::new(config(3, 5), 0);
        let log = sim.run(&[], 25_000, |_| Outcome::Failed, never);
        assert_eq!(
            log,
            [
                "0 sync Requested -> Failed",
                // retry after 1 s, but not before min_interval (3 s)
                "3000 sync Retry -> Failed",
                // 2 s backoff, min 3 s
                "6000 sync Retry -> Failed",
                // 4 s
                "10000 sync Retry -> Failed",
                // 8 s capped at the sync period (5 s): a retry or the periodic sync, same time
                "15000 sync Retry -> Failed",
                "20000 sync Retry -> Failed",
            ]
        );
    }

    #[test]
    fn a_change_during_backoff_syncs_at_once() {
        let mut sim = Sim::new(config(0, 30), 0);
        let log = sim.run(
            &[(500, Event::Change)],
            3_000,
            |n| {
                if n == 0 { Outcome::Failed } else { Outcome::Ok }
            },
            never,
        );
        assert_eq!(
            log,
            ["0 sync Requested -> Failed", "500 sync Requested -> Ok"]
        );
    }

    #[test]
    fn drains_are_checked_between_syncs_only_while_draining() {
        let mut sim = Sim::new(config(0, 10), 0);
        // draining from the first sync until t=7s
        let log = sim.run(&[(3_000, Event::Change)], 14_000, ok, |t| t < 7_000);
        assert_eq!(
            log,
            [
                "0 sync Requested -> Ok",
                "2000 drains",
                // a sync re-checks drains itself; the next check is 2 s after it
                "3000 sync Requested -> Ok",
                "5000 drains",
                "7000 drains",
                // nothing drains any more: no more checks, only the periodic sync 10 s after
                // the last one
                "13000 sync Periodic -> Ok",
            ]
        );
    }

    #[test]
    fn poll_while_running_never_hands_out_a_second_sync() {
        let start = Instant::now();
        let mut r = Runner::new(config(0, 30), start);
        assert_eq!(r.poll(start), Step::Sync(Reason::Requested));
        r.request();
        assert!(matches!(r.poll(start), Step::Sleep(_)));
        assert!(r.is_pending());
        r.sync_finished(start + S, Outcome::Ok, false);
        assert_eq!(r.poll(start + S), Step::Sync(Reason::Requested));
    }
}
