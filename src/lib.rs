//! The `ackwatch` binary's library: the glue around the pure engine (`ackwatch-topology`) and
//! the state stores (`ackwatch-state`). Everything that decides *what* a record means lives in
//! `ackwatch-topology`; this crate decides where records come from and where outputs go.
//!
//! - [`runtime`]: the live processor (`ackwatch run`): stream threads, tasks, the commit
//!   protocol, the changelog, the HTTP endpoint;
//! - [`audit`]: `ackwatch audit` over kcat files or a cluster's retained topics, and the report
//!   as text, JSON or a page;
//! - [`sim`]: simulated WorldService and Gateway traffic with its ground truth, `ackwatch loadgen`
//!   and `ackwatch demo`;
//! - [`sinks`]: what leaves the processor besides Kafka records' bytes: output encoding, alerts
//!   to Alertmanager, signals to WorldService over HTTP;
//! - [`settings`], [`metrics`], [`events`]: configuration, Prometheus metrics, and one struct per
//!   internal occurrence whose `emit` logs and counts together;
//! - [`secrets`]: configuration values scrubbed from everything written, URLs shown without
//!   their credentials.

pub mod audit;
pub mod events;
pub mod metrics;
pub mod runtime;
pub mod secrets;
pub mod settings;
pub mod sim;
pub mod sinks;

/// The allocator of the ackwatch binary and its benchmarks: the engine allocates small, short
/// lived values per record (run keys, etags, outputs); mimalloc handles that pattern well.
pub type Allocator = mimalloc::MiMalloc;
