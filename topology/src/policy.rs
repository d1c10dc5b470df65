//! Detection policy: the timeouts and switches of docs/semantics.md, with their defaults.

use serde::{Deserialize, Serialize};

use crate::limits::{RECORD_VALUE_BYTES_DEFAULT, RECORD_VALUE_BYTES_MAX, RECORD_VALUE_BYTES_MIN};
use crate::time::Millis;

/// What the engine is told to enforce. Every field has its documented default; an unknown key is
/// an error that names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// An activation without an ACK after this long raises `ack_missing` (RFC default 3000).
    #[serde(deserialize_with = "crate::time::duration_ms")]
    pub ack_timeout_ms: Millis,
    /// A sequence missing this long after a later one was seen raises `activation_gap`.
    #[serde(deserialize_with = "crate::time::duration_ms")]
    pub gap_timeout_ms: Millis,
    /// An ACK without its activation after this long raises `orphan_ack`.
    #[serde(deserialize_with = "crate::time::duration_ms")]
    pub orphan_timeout_ms: Millis,
    /// A paused run still failing this long after the pause is rolled back or escalated.
    #[serde(deserialize_with = "crate::time::duration_ms")]
    pub rollback_after_ms: Millis,
    /// Request a rollback (true) or escalate to an operator (false, the RFC's Q3 default).
    pub auto_rollback: bool,
    /// The first sequence of every run; lower missing sequences count as a leading gap.
    pub sequence_start: u64,
    /// A run's state is dropped this long after its last event, once nothing is pending.
    #[serde(deserialize_with = "crate::time::duration_ms")]
    pub run_retention_ms: Millis,
    /// An event time more than this after its record's timestamp (live: also after the wall
    /// clock) is clamped to it (a producer clock ahead, semantics §1 "Clocks ahead").
    #[serde(deserialize_with = "crate::time::duration_ms")]
    pub max_clock_lead_ms: Millis,
    /// Largest record value parsed; larger ones are classified by their envelope type alone.
    pub max_record_bytes: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            ack_timeout_ms: 3000,
            gap_timeout_ms: 3000,
            orphan_timeout_ms: 3000,
            rollback_after_ms: 30_000,
            auto_rollback: false,
            sequence_start: 1,
            run_retention_ms: 24 * 60 * 60 * 1000,
            max_clock_lead_ms: 1000,
            max_record_bytes: RECORD_VALUE_BYTES_DEFAULT,
        }
    }
}

/// A policy value that cannot work, with the key to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("policy key `{key}`: {why}")]
pub struct PolicyError {
    pub key: &'static str,
    pub why: String,
}

impl Policy {
    /// Checks that every duration is positive and at most a year (so sums cannot overflow).
    pub fn validate(&self) -> Result<(), PolicyError> {
        const YEAR_MS: Millis = 366 * 24 * 60 * 60 * 1000;
        for (key, value) in [
            ("ack_timeout_ms", self.ack_timeout_ms),
            ("gap_timeout_ms", self.gap_timeout_ms),
            ("orphan_timeout_ms", self.orphan_timeout_ms),
            ("rollback_after_ms", self.rollback_after_ms),
            ("run_retention_ms", self.run_retention_ms),
        ] {
            if !(1..=YEAR_MS).contains(&value) {
                return Err(PolicyError {
                    key,
                    why: format!("{value} is not between 1 ms and one year"),
                });
            }
        }
        if !(0..=YEAR_MS).contains(&self.max_clock_lead_ms) {
            return Err(PolicyError {
                key: "max_clock_lead_ms",
                why: format!(
                    "{} is not between 0 ms and one year",
                    self.max_clock_lead_ms
                ),
            });
        }
        if !(RECORD_VALUE_BYTES_MIN..=RECORD_VALUE_BYTES_MAX).contains(&self.max_record_bytes) {
            return Err(PolicyError {
                key: "max_record_bytes",
                why: format!(
                    "{} is not between {RECORD_VALUE_BYTES_MIN} and {RECORD_VALUE_BYTES_MAX}",
                    self.max_record_bytes
                ),
            });
        }
        if self.run_retention_ms <= self.rollback_after_ms.max(self.ack_timeout_ms) {
            return Err(PolicyError {
                key: "run_retention_ms",
                why: "must exceed rollback_after_ms and every timeout, or runs are dropped while pending".into(),
            });
        }
        Ok(())
    }
}
