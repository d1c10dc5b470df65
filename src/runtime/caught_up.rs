//! Whether a task has read its partitions to their ends (semantics §4 "caught up"): the client's
//! cached high watermarks (no request) decide what the partition group waits for; a request to
//! the broker confirms it before the wall clock fires anything.

use std::ffi::CString;
use std::time::Duration;

use ackwatch_topology::{PerSide, Side};
use anyhow::Context as _;
use rdkafka::client::{Client, ClientContext};
use rdkafka::consumer::BaseConsumer;

use super::task::LiveTask;

/// Longest a watermark request confirming a task is caught up may take (it blocks processing).
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(1);

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

    /// Whether both sides of the task have been fetched to their high watermarks: first by the
    /// client's cached watermarks (no request), then, since a cached watermark can be stale
    /// (a slow fetch, a busy broker) and wall-clock stream time would then pass deadlines of
    /// records already on the broker, confirmed by asking the broker through `client`. Only
    /// asked when a deadline is about to fire by the wall clock; a failed request means "not
    /// caught up".
    pub fn confirmed<C: rdkafka::consumer::ConsumerContext, P: ClientContext>(
        &self,
        consumer: &BaseConsumer<C>,
        client: &Client<P>,
        task: &LiveTask,
    ) -> bool {
        if !Side::BOTH
            .iter()
            .all(|&s| self.caught_up_cached(consumer, task, s))
        {
            return false;
        }
        // Asked through the producer's client: the broker answers a connection's requests in
        // order, and the consumer's connection usually has a long-poll fetch in flight
        // (`fetch.wait.max.ms`, 500 ms), which held each confirmation for up to that long.
        Side::BOTH.iter().all(|&s| {
            client
                .fetch_watermarks(&self.topics[s], task.partition(), WATERMARK_TIMEOUT)
                .is_ok_and(|(_, high)| task.offsets.fetched_next[s] >= high)
        })
    }
}
