//! ackwatch's configuration: a TOML file plus `ACKWATCH__SECTION__KEY` environment overrides,
//! read with the `config` crate. Every key has a default; an unknown key is an error naming it.

use std::path::Path;

use ackwatch_topology::Policy;
use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Names of the topics ackwatch reads and writes (SPEC §1, §3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Topics {
    pub activation: String,
    pub ack: String,
    pub gap: String,
    pub signal: String,
    pub dead_letter: String,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            activation: "activation".into(),
            ack: "control.activation.ack".into(),
            gap: "control.activation.gap".into(),
            signal: "control.activation.signal".into(),
            dead_letter: "ackwatch.dlq".into(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub topics: Topics,
    pub policy: Policy,
}

impl Settings {
    /// Loads `path` (TOML) with environment overrides, and validates the result.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Settings> {
        let mut builder = config::Config::builder();
        if let Some(path) = path {
            anyhow::ensure!(path.exists(), "config file {} does not exist", path.display());
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        builder = builder.add_source(config::Environment::with_prefix("ACKWATCH").prefix_separator("__").separator("__"));
        let settings: Settings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .with_context(|| match path {
                Some(p) => format!("invalid configuration in {} (or ACKWATCH__* environment)", p.display()),
                None => "invalid configuration in ACKWATCH__* environment".to_string(),
            })?;
        settings.policy.validate().context("invalid configuration")?;
        Ok(settings)
    }
}
