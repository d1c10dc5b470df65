//! Whether a task has read its partitions to their ends (semantics §4 "caught up"). The
//! client's cached high watermarks (no request) are trusted only once the task's position has
//! been confirmed against the broker since the task started and since the last broker outage
//! ([`Confirmations`]); until then the partition group treats no partition as empty. Before the
//! wall clock fires anything, the position is confirmed again, every time.

use std::ffi::CString;
use std::time::{Duration, Instant};

use ackwatch_topology::{PerSide, Side};
use anyhow::Context as _;
use rdkafka::client::{Client, ClientContext};
use rdkafka::consumer::BaseConsumer;

use super::brokers::BrokerHealth;
use super::task::LiveTask;

/// Longest a watermark request confirming a task is caught up may take (it blocks processing).
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(1);
/// Shortest time between two confirmation requests of one side of a task that is not
/// confirmed yet (bounds the requests while a task catches up).
const CONFIRM_SPACING: Duration = Duration::from_millis(100);

/// What a task knows of its position against the broker, per side: the outage number at which
/// it was last confirmed caught up (a newer outage makes it stale), and when it last asked.
#[derive(Clone, Debug, Default)]
pub struct Confirmations {
    confirmed_in_outage: PerSide<Option<u64>>,
    asked_at: PerSide<Option<Instant>>,
}

impl Confirmations {
    /// Whether `side` was confirmed since the task started and since the last outage.
    pub fn holds(&self, side: Side, brokers: &BrokerHealth) -> bool {
        !brokers.is_down() && self.confirmed_in_outage[side] == Some(brokers.outages())
    }
}

/// The two input topics, as the watermark calls need them.
pub struct Watermarks {
    topics: PerSide<String>,
    topic_cnames: PerSide<CString>,
}

impl Watermarks {
    pub fn new(topics: PerSide<String>) -> anyhow::Result<Self> {
        let topic_cnames = PerSide::new(
            CString::new(topics.activation.clone()).context("topic name with NUL")?,
            CString::new(topics.ack.clone()).context("topic name with NUL")?,
        );
        Ok(Watermarks {
            topics,
            topic_cnames,
        })
    }

    pub fn topic(&self, side: Side) -> &str {
        &self.topics[side]
    }

    /// The side whose topic is `topic`, if it is an input.
    pub fn side_of(&self, topic: &str) -> Option<Side> {
        Side::BOTH.into_iter().find(|&s| self.topics[s] == topic)
    }

    /// The high watermark of `side` of `partition` as the client last saw it (no request).
    pub fn cached_high<C: rdkafka::consumer::ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        side: Side,
        partition: i32,
    ) -> Option<i64> {
        use rdkafka::consumer::Consumer;
        let (mut low, mut high) = (-1i64, -1i64);
        // SAFETY: a valid client pointer and a NUL-terminated topic name; librdkafka only reads
        // its cached watermarks and writes the two out-parameters.
        let err = unsafe {
            rdkafka::bindings::rd_kafka_get_watermark_offsets(
                consumer.client().native_ptr(),
                self.topic_cnames[side].as_ptr(),
                partition,
                &mut low,
                &mut high,
            )
        };
        (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
            .then_some(high)
    }

    /// Whether `side` of the task has been fetched up to its cached high watermark.
    pub fn caught_up_cached<C: rdkafka::consumer::ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        task: &LiveTask,
        side: Side,
    ) -> bool {
        self.cached_high(consumer, side, task.partition())
            .is_some_and(|high| task.offsets.fetched_next[side] >= high)
    }

    /// Whether the partition group may treat `side` of the task as read to its end: the cached
    /// watermark says so, and the position was confirmed against the broker since the task
    /// started and since the last outage (asked here, at most every `CONFIRM_SPACING`, never
    /// while the brokers are down).
    #[allow(clippy::too_many_arguments)]
    pub fn caught_up_for_merge<C: rdkafka::consumer::ConsumerContext, P: ClientContext>(
        &self,
        consumer: &BaseConsumer<C>,
        client: &Client<P>,
        brokers: &BrokerHealth,
        partition: i32,
        fetched_next: i64,
        side: Side,
        confirmations: &mut Confirmations,
    ) -> bool {
        let cached = self
            .cached_high(consumer, side, partition)
            .is_some_and(|high| fetched_next >= high);
        if !cached || brokers.is_down() {
            return false;
        }
        if confirmations.holds(side, brokers) {
            return true;
        }
        if confirmations.asked_at[side].is_some_and(|at| at.elapsed() < CONFIRM_SPACING) {
            return false;
        }
        confirmations.asked_at[side] = Some(Instant::now());
        self.confirm_side(
            client,
            brokers,
            partition,
            fetched_next,
            side,
            confirmations,
        )
    }

    /// Asks the broker for `side`'s high watermark; records a confirmation when the task has
    /// fetched up to it. A failed request means "not caught up".
    fn confirm_side<P: ClientContext>(
        &self,
        client: &Client<P>,
        brokers: &BrokerHealth,
        partition: i32,
        fetched_next: i64,
        side: Side,
        confirmations: &mut Confirmations,
    ) -> bool {
        // The outage number before the request: an outage that starts during it outdates it.
        let outage = brokers.outages();
        match client.fetch_watermarks(&self.topics[side], partition, WATERMARK_TIMEOUT) {
            Ok((_, high)) => {
                brokers.mark_up();
                let caught_up = fetched_next >= high;
                if caught_up {
                    confirmations.confirmed_in_outage[side] = Some(outage);
                }
                caught_up
            }
            Err(_) => false,
        }
    }

    /// Whether both sides of the task have been fetched to their high watermarks: first by the
    /// client's cached watermarks (no request), then, since a cached watermark can be stale
    /// (a slow fetch, a busy broker, an outage) and wall-clock stream time would then pass
    /// deadlines of records already on the broker, confirmed by asking the broker through
    /// `client`. Only asked when a deadline is about to fire by the wall clock; never while the
    /// brokers are down; a failed request means "not caught up".
    pub fn confirmed<C: rdkafka::consumer::ConsumerContext, P: ClientContext>(
        &self,
        consumer: &BaseConsumer<C>,
        client: &Client<P>,
        brokers: &BrokerHealth,
        task: &mut LiveTask,
    ) -> bool {
        if brokers.is_down()
            || !Side::BOTH
                .iter()
                .all(|&s| self.caught_up_cached(consumer, task, s))
        {
            return false;
        }
        // Asked through the producer's client: the broker answers a connection's requests in
        // order, and the consumer's connection usually has a long-poll fetch in flight
        // (`fetch.wait.max.ms`, 500 ms), which held each confirmation for up to that long.
        let (partition, fetched_next) = (task.partition(), task.offsets.fetched_next);
        Side::BOTH.iter().all(|&s| {
            self.confirm_side(
                client,
                brokers,
                partition,
                fetched_next[s],
                s,
                &mut task.confirmations,
            )
        })
    }
}
