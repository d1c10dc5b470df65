//! The instance's state, named as Kafka Streams names it (`KafkaStreams.State`), logged on every
//! change (`ackwatch state CREATED -> REBALANCING`) and exported as `ackwatch_state{state}`:
//!
//! ```text
//!   CREATED ──> REBALANCING <──> RUNNING
//!      │             │              │
//!      └─────────────┴──────┬───────┘
//!                           v
//!                   PENDING_SHUTDOWN ──> NOT_RUNNING
//!
//!   any state but NOT_RUNNING ──> ERROR (a fatal error; the process exits non-zero)
//! ```
//!
//! RUNNING is what `/readyz` answers 200 for: every stream thread is in the group with every
//! task of its assignment restored (an idle member owning nothing included). REBALANCING covers
//! a thread between assignments or restoring a task.

use std::sync::Mutex;

/// See the module doc for the transitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceState {
    Created,
    Rebalancing,
    Running,
    PendingShutdown,
    NotRunning,
    Error,
}

impl InstanceState {
    pub const ALL: [InstanceState; 6] = [
        InstanceState::Created,
        InstanceState::Rebalancing,
        InstanceState::Running,
        InstanceState::PendingShutdown,
        InstanceState::NotRunning,
        InstanceState::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Created => "CREATED",
            InstanceState::Rebalancing => "REBALANCING",
            InstanceState::Running => "RUNNING",
            InstanceState::PendingShutdown => "PENDING_SHUTDOWN",
            InstanceState::NotRunning => "NOT_RUNNING",
            InstanceState::Error => "ERROR",
        }
    }

    /// Whether the module doc draws `self -> next`.
    pub fn may_become(self, next: InstanceState) -> bool {
        use InstanceState::*;
        match (self, next) {
            (a, b) if a == b => false,
            (NotRunning, _) | (Error, _) => false,
            (_, Error) => true,
            (Created | Rebalancing | Running, PendingShutdown) => true,
            (PendingShutdown, NotRunning) => true,
            (Created, Rebalancing) | (Rebalancing, Running) | (Running, Rebalancing) => true,
            _ => false,
        }
    }
}

/// What the instance's flags say now; the caller feeds it to [`StateLine::observe`].
pub struct Flags {
    pub fatal: bool,
    pub stopped: bool,
    pub shutdown: bool,
    pub ready: bool,
    /// Any stream thread has seen a rebalance callback.
    pub joined: bool,
}

impl Flags {
    pub fn state(&self) -> InstanceState {
        match self {
            Flags { fatal: true, .. } => InstanceState::Error,
            Flags { stopped: true, .. } => InstanceState::NotRunning,
            Flags { shutdown: true, .. } => InstanceState::PendingShutdown,
            Flags { ready: true, .. } => InstanceState::Running,
            Flags { joined: true, .. } => InstanceState::Rebalancing,
            _ => InstanceState::Created,
        }
    }
}

/// The last state logged; moves only along the drawn transitions.
pub struct StateLine {
    current: Mutex<InstanceState>,
}

impl Default for StateLine {
    fn default() -> Self {
        StateLine {
            current: Mutex::new(InstanceState::Created),
        }
    }
}

impl StateLine {
    /// Moves to `next` when that is a drawn transition; returns the change made. A state the
    /// flags pass through between two observations (a rebalance quicker than one loop pass) is
    /// not reported; a start that goes from CREATED straight to RUNNING is reported through
    /// REBALANCING, as Kafka Streams does.
    pub fn observe(&self, next: InstanceState) -> Vec<(InstanceState, InstanceState)> {
        let mut current = self.current.lock().expect("not poisoned");
        let mut changes = Vec::new();
        if *current == InstanceState::Created && next == InstanceState::Running {
            changes.push((*current, InstanceState::Rebalancing));
            *current = InstanceState::Rebalancing;
        }
        if current.may_become(next) {
            changes.push((*current, next));
            *current = next;
        }
        changes
    }

    pub fn current(&self) -> InstanceState {
        *self.current.lock().expect("not poisoned")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use InstanceState::*;

    /// Feeds `observed` in order; `expected` is every change logged.
    fn check(observed: &[InstanceState], expected: &[(InstanceState, InstanceState)]) {
        let line = StateLine::default();
        let changes: Vec<_> = observed.iter().flat_map(|&s| line.observe(s)).collect();
        assert_eq!(changes, expected, "{observed:?}");
    }

    #[test]
    fn the_state_line_follows_the_drawn_transitions() {
        check(&[Created, Rebalancing, Rebalancing, Running], &[(Created, Rebalancing), (Rebalancing, Running)]);
        check(&[Running], &[(Created, Rebalancing), (Rebalancing, Running)]);
        check(
            &[Rebalancing, Running, Rebalancing, Running, PendingShutdown, NotRunning],
            &[
                (Created, Rebalancing),
                (Rebalancing, Running),
                (Running, Rebalancing),
                (Rebalancing, Running),
                (Running, PendingShutdown),
                (PendingShutdown, NotRunning),
            ],
        );
        // Terminal states stay; a shutdown does not go back to running.
        check(&[Error, Running, NotRunning], &[(Created, Error)]);
        check(&[PendingShutdown, Running, NotRunning, Error], &[(Created, PendingShutdown), (PendingShutdown, NotRunning)]);
    }

    #[test]
    fn the_flags_name_one_state_in_priority_order() {
        let flags = |fatal, stopped, shutdown, ready, joined| Flags { fatal, stopped, shutdown, ready, joined };
        assert_eq!(flags(false, false, false, false, false).state(), Created);
        assert_eq!(flags(false, false, false, false, true).state(), Rebalancing);
        assert_eq!(flags(false, false, false, true, true).state(), Running);
        assert_eq!(flags(false, false, true, true, true).state(), PendingShutdown);
        assert_eq!(flags(false, true, true, false, true).state(), NotRunning);
        assert_eq!(flags(true, true, true, true, true).state(), Error);
    }
}
