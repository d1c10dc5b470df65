//! The producer's transaction under `exactly_once_v2`, as librdkafka's transactional API asks
//! to be driven through broker errors (as Kafka Streams drives it): a retriable error repeats
//! the same call later, an abortable one aborts the transaction (every task then restarts from
//! its last commit, so nothing is emitted twice), a fatal one stops the process.
//!
//! ```text
//!   Idle ──first record──> Open ──commit──> Committing ──offsets added, committed──> Idle
//!                           │                  │   └─ retriable: Committing (call again later)
//!                           │                  └── abortable ──┐
//!                           └── assignment lost / reset ───────┴──> Aborting ──aborted──> Idle
//! ```
//!
//! No record is produced while `Committing` or `Aborting` (processing waits), and no task
//! starts while `Aborting` (its restore must not read around an open transaction).

use std::time::Duration;

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaError};
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};
use rdkafka::TopicPartitionList;

/// Where the transaction is (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnState {
    Idle,
    Open,
    /// `offsets_added`: the input offsets are in the transaction; only the commit is left.
    Committing {
        offsets_added: bool,
    },
    Aborting,
}

/// What a step of the transaction came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnProgress {
    /// Committed (or aborted, for [`Transaction::abort`]): the transaction is idle.
    Done,
    /// The broker did not answer in time: the same step is taken again later.
    Retry,
    /// The transaction must be aborted; its records will never be visible.
    MustAbort,
}

/// The transaction state of one producer.
pub struct Transaction {
    pub state: TxnState,
}

impl Transaction {
    pub fn new() -> Self {
        Transaction {
            state: TxnState::Idle,
        }
    }

    /// Records may be produced (a transaction is begun if none is open).
    pub fn accepts_records(&self) -> bool {
        matches!(self.state, TxnState::Idle | TxnState::Open)
    }

    /// Begins a transaction unless one is open.
    pub fn begin_if_idle<C: ProducerContext>(
        &mut self,
        producer: &BaseProducer<C>,
    ) -> Result<(), KafkaError> {
        match self.state {
            TxnState::Idle => {
                producer.begin_transaction()?;
                self.state = TxnState::Open;
                Ok(())
            }
            TxnState::Open => Ok(()),
            state => panic!("invariant: no record is produced while {state:?}"),
        }
    }

    /// Adds `offsets` to the transaction (begun if needed, so offsets move even when nothing was
    /// produced) and commits it, each call waiting at most `wait`; call again on `Retry`.
    pub fn commit<C: ProducerContext>(
        &mut self,
        producer: &BaseProducer<C>,
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
        wait: Duration,
    ) -> anyhow::Result<TxnProgress> {
        if self.state == TxnState::Aborting {
            return Ok(TxnProgress::MustAbort);
        }
        if self.state == TxnState::Idle {
            if let Err(e) = self.begin_if_idle(producer) {
                return self.after_error(e, "cannot begin a transaction");
            }
        }
        if self.state == TxnState::Open {
            self.state = TxnState::Committing {
                offsets_added: false,
            };
        }
        if self.state
            == (TxnState::Committing {
                offsets_added: false,
            })
        {
            if let Err(e) = producer.send_offsets_to_transaction(offsets, group, wait) {
                return self.after_error(e, "cannot add offsets to the transaction");
            }
            self.state = TxnState::Committing {
                offsets_added: true,
            };
        }
        match producer.commit_transaction(wait) {
            Ok(()) => {
                self.state = TxnState::Idle;
                Ok(TxnProgress::Done)
            }
            Err(e) => self.after_error(e, "cannot commit the transaction"),
        }
    }

    /// The transaction will be aborted (the assignment was lost, or the tasks restart).
    /// A commit under way is left to finish: it either commits or must abort.
    pub fn abandon(&mut self) {
        if self.state == TxnState::Open {
            self.state = TxnState::Aborting;
        }
    }

    /// Aborts the transaction, waiting at most `wait`; `Retry` when the broker did not answer.
    pub fn abort<C: ProducerContext>(
        &mut self,
        producer: &BaseProducer<C>,
        wait: Duration,
    ) -> anyhow::Result<TxnProgress> {
        if self.state != TxnState::Aborting {
            return Ok(TxnProgress::Done);
        }
        match producer.abort_transaction(wait) {
            Ok(()) => {
                self.state = TxnState::Idle;
                Ok(TxnProgress::Done)
            }
            Err(e) => match self.after_error(e, "cannot abort the transaction")? {
                TxnProgress::MustAbort => Ok(TxnProgress::Retry),
                progress => Ok(progress),
            },
        }
    }

    /// Classifies a transactional error: fatal ones (a fenced producer, a broken transaction
    /// coordinator state) are returned as errors; the others say what to do next.
    fn after_error(&mut self, error: KafkaError, what: &str) -> anyhow::Result<TxnProgress> {
        let Some(txn) = transactional(&error) else {
            return Err(anyhow::Error::new(error).context(what.to_string()));
        };
        if txn.is_fatal() {
            return Err(anyhow::Error::new(error).context(format!(
                "{what} (fatal: the producer was fenced by another instance with the same \
                 instance id, or its transaction state is lost; a restart starts a new one)"
            )));
        }
        if txn.txn_requires_abort() {
            self.state = TxnState::Aborting;
            return Ok(TxnProgress::MustAbort);
        }
        if txn.is_retriable() {
            return Ok(TxnProgress::Retry);
        }
        Err(anyhow::Error::new(error).context(what.to_string()))
    }
}

impl Default for Transaction {
    fn default() -> Self {
        Self::new()
    }
}

fn transactional(error: &KafkaError) -> Option<&RDKafkaError> {
    match error {
        KafkaError::Transaction(e) => Some(e),
        _ => None,
    }
}
