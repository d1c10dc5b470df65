//! The `ackwatch` binary's library: the glue around the pure engine (`ackwatch-topology`) and
//! the state stores (`ackwatch-state`): inputs (kcat files, Kafka), configuration, the CLI.
//! Everything that decides *what* a record means lives in `ackwatch-topology`; this crate only
//! decides where records come from and where outputs go.

pub mod alerts;
pub mod audit;
pub mod changelog;
pub mod cluster_audit;
pub mod demo;
pub mod events;
pub mod html;
pub mod kcat;
pub mod loadgen;
pub mod metrics;
pub mod runtime;
pub mod settings;
pub mod sim;
pub mod simulator;
pub mod sink;
pub mod worldservice;

/// The allocator of the ackwatch binary and its benchmarks: the engine allocates small, short
/// lived values per record (run keys, etags, outputs); mimalloc handles that pattern well.
pub type Allocator = mimalloc::MiMalloc;
