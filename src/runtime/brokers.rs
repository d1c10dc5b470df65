//! Whether the brokers can be reached, as far as this process can tell, and since when: the
//! rule that a broker outage raises no finding the records do not justify (docs/semantics.md
//! §4 "Caught up") hangs on it.
//!
//! ```text
//!   Up ──AllBrokersDown from any client──> Down (outage number + 1)
//!   Down ──a request the broker answered (probe, watermark, acknowledged commit)──> Up (since now)
//! ```
//!
//! While down, the poll clock (`max_task_idle_ms`) stands still, no task starts, and nothing
//! fires by the wall clock. After an outage the wall clock fires nothing for
//! `runtime.outage_grace_ms`, so the producers that buffered records through the outage
//! deliver them first; every task's caught-up position is confirmed against the broker again
//! (the outage number tells a task its earlier confirmation is outdated).
//!
//! Records fetched after an outage began say nothing about the broker (they may have been
//! prefetched before it), so they never count as "up".

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::IntGauge;

/// Shortest time between two probes of a thread while the brokers are down.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Longest a probe (a metadata request) may block its stream thread.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// The reachability of the brokers, shared by every client of the process.
pub struct BrokerHealth {
    state: Mutex<State>,
    /// `ackwatch_kafka_all_brokers_down`: set and cleared here only.
    gauge: IntGauge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct State {
    down: bool,
    /// Outages seen so far; a confirmation taken before the current outage number is stale.
    outages: u64,
    /// When the last outage ended (None: no outage yet).
    up_since: Option<Instant>,
}

impl BrokerHealth {
    pub fn new(gauge: IntGauge) -> Self {
        BrokerHealth {
            state: Mutex::new(State {
                down: false,
                outages: 0,
                up_since: None,
            }),
            gauge,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("never poisoned: no panic under it")
    }

    /// A client reported that it reaches no broker.
    pub fn mark_down(&self) {
        let mut state = self.state();
        if !state.down {
            state.down = true;
            state.outages += 1;
            self.gauge.set(1);
        }
    }

    /// A broker answered a request.
    pub fn mark_up(&self) {
        let mut state = self.state();
        if state.down {
            state.down = false;
            state.up_since = Some(Instant::now());
            self.gauge.set(0);
        }
    }

    pub fn is_down(&self) -> bool {
        self.state().down
    }

    /// The current outage number: a caught-up confirmation holds only while it is unchanged.
    pub fn outages(&self) -> u64 {
        self.state().outages
    }

    /// Up, and for at least `grace` since the last outage ended (always, without an outage).
    pub fn settled(&self, grace: Duration) -> bool {
        let state = self.state();
        !state.down && state.up_since.is_none_or(|since| since.elapsed() >= grace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_counts_once_and_settles_after_the_grace() {
        let health = BrokerHealth::new(IntGauge::new("g", "g").unwrap());
        let grace = Duration::from_millis(200);
        assert!(health.settled(grace), "no outage yet: settled");
        assert_eq!(health.outages(), 0);
        health.mark_down();
        health.mark_down();
        assert!(health.is_down() && !health.settled(Duration::ZERO));
        assert_eq!(health.outages(), 1, "one outage, however often reported");
        assert_eq!(health.gauge.get(), 1);
        health.mark_up();
        assert_eq!(health.gauge.get(), 0);
        assert!(!health.is_down());
        assert!(!health.settled(grace), "up, but within the grace");
        std::thread::sleep(grace);
        assert!(health.settled(grace));
        health.mark_up();
        assert!(
            health.settled(grace),
            "a second 'up' does not restart the grace"
        );
        health.mark_down();
        assert_eq!(health.outages(), 2);
    }
}
