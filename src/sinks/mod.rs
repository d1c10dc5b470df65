//! Where outputs go besides the stream threads' own producers: the encoding of gap events,
//! signals and dead letters (`records.rs`), alerts to Alertmanager (`alerts.rs`), and signals
//! POSTed to WorldService by a consumer of the signal topic (`worldservice.rs`).

pub mod alerts;
pub mod records;
pub mod world_alert;
pub mod worldservice;
