//! Consumer lag in time (`ackwatch_consumer_lag_seconds`): how long the next record to process
//! has been waiting, read from ackwatch's own clock rather than the producers' timestamps,
//! which may run minutes ahead or behind (SPEC "clocks ahead").
//!
//! A task's side samples the high watermark as the client sees it, with the wall-clock time it
//! was first seen. The record at the processed position was appended after the last sample at
//! or below that position and at or before the first sample above it, so "now minus the first
//! sample above the position" is a lower bound of its wait: the figure never claims more lag
//! than there is (no false `AckwatchConsumerLagHigh`), and it reads 0 while caught up.

use std::collections::VecDeque;

use ackwatch_topology::Millis;

/// High-watermark samples kept per side of a task. Cost: 16 bytes each. With one sample per
/// [`LAG_SAMPLE_SPACING_MS`] this covers 10 minutes; a longer wait reads as the oldest kept
/// sample's age (still a lower bound), and the dropped samples are counted as the cut `lag_samples`.
pub const LAG_SAMPLES_MAX: usize = 600;

/// A new sample is taken at most this often (ms); a watermark that moves sooner is taken at
/// the next one, which can only make the figure smaller, never larger.
pub const LAG_SAMPLE_SPACING_MS: Millis = 1_000;

const _: () = assert!(LAG_SAMPLES_MAX as Millis * LAG_SAMPLE_SPACING_MS >= 600_000);

/// One side of one task's watermark history (see the module doc).
#[derive(Debug, Default)]
pub struct LagClock {
    /// `(high watermark, wall ms first seen)`, both increasing; only highs above the processed
    /// position are kept (the position only moves forward within a task).
    samples: VecDeque<(i64, Millis)>,
}

impl LagClock {
    /// Notes the high watermark `high` seen at `now_ms`, with the processed position `next`.
    /// Returns whether an old sample had to be dropped for room.
    pub fn observe(&mut self, high: i64, next: i64, now_ms: Millis) -> bool {
        while self.samples.front().is_some_and(|&(h, _)| h <= next) {
            self.samples.pop_front();
        }
        if high <= next {
            return false;
        }
        match self.samples.back() {
            Some(&(h, at)) if h >= high || now_ms - at < LAG_SAMPLE_SPACING_MS => return false,
            _ => {}
        }
        let cut = self.samples.len() == LAG_SAMPLES_MAX;
        if cut {
            self.samples.pop_front();
        }
        self.samples.push_back((high, now_ms));
        cut
    }

    /// Milliseconds the record at `next` has waited at least, by `now_ms`; 0 when none waits.
    pub fn lag_ms(&self, next: i64, now_ms: Millis) -> Millis {
        self.samples
            .iter()
            .find(|&&(h, _)| h > next)
            .map_or(0, |&(_, at)| (now_ms - at).max(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Steps of `(high watermark, processed position, now)`, each with the lag it must read.
    fn check(steps: &[(i64, i64, Millis, Millis)]) {
        let mut clock = LagClock::default();
        for (i, &(high, next, now, expected)) in steps.iter().enumerate() {
            clock.observe(high, next, now);
            assert_eq!(clock.lag_ms(next, now), expected, "step {i}: {steps:?}");
        }
    }

    #[test]
    fn lag_is_the_wait_of_the_next_record_by_our_clock() {
        // Caught up: no lag, however long it has been quiet.
        check(&[(10, 10, 0, 0), (10, 10, 3_600_000, 0)]);
        // A record appears after an hour's quiet: its wait counts from when it was seen.
        check(&[(10, 10, 0, 0), (11, 10, 3_600_000, 0), (11, 10, 3_602_500, 2_500)]);
        // A backlog drained in part: the next record was seen at the second sample.
        check(&[
            (100, 0, 0, 0),
            (200, 50, 1_000, 1_000),
            (300, 150, 2_000, 1_000),
            (300, 250, 2_500, 500),
            (300, 300, 2_600, 0),
        ]);
        // A watermark moving sooner than the spacing is sampled later: a lower bound, never more
        // (record 15 was seen at 400 ms, but its wait counts from 900 ms).
        check(&[(10, 0, 0, 0), (20, 5, 400, 400), (20, 15, 900, 0), (20, 15, 1_900, 1_000)]);
    }

    #[test]
    fn the_history_is_bounded_and_the_figure_stays_a_lower_bound() {
        let mut clock = LagClock::default();
        let mut cut = 0;
        for i in 0..(LAG_SAMPLES_MAX as i64 + 5) {
            cut += clock.observe(i + 1, 0, i * LAG_SAMPLE_SPACING_MS) as usize;
        }
        assert_eq!(cut, 5);
        let now = (LAG_SAMPLES_MAX as i64 + 5) * LAG_SAMPLE_SPACING_MS;
        let lag = clock.lag_ms(0, now);
        assert!(lag > 0 && lag <= now, "{lag}");
        assert_eq!(lag, now - 5 * LAG_SAMPLE_SPACING_MS);
    }
}
