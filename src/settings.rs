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

#[cfg(test)]
mod tests {
    use super::*;

    fn check(toml: &str, expected: Result<Settings, &str>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ackwatch.toml");
        std::fs::write(&path, toml).unwrap();
        match (Settings::load(Some(&path)), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{toml}"),
            (Err(got), Err(want)) => {
                let text = format!("{got:#}");
                assert!(text.contains(want), "{toml}: error {text:?} should mention {want:?}");
            }
            (got, want) => panic!("{toml}: got {got:?}, expected {want:?}"),
        }
    }

    #[test]
    fn the_shipped_example_is_every_default() {
        let example = include_str!("../deploy/ackwatch.example.toml");
        check(example, Ok(Settings::default()));
        // And it names every key the settings have.
        let keys = serde_json::to_value(Settings::default()).unwrap();
        for (section, fields) in keys.as_object().unwrap() {
            assert!(example.contains(&format!("[{section}]")), "example lacks [{section}]");
            for key in fields.as_object().unwrap().keys() {
                assert!(example.contains(&format!("\n{key} = ")), "example lacks {section}.{key}");
            }
        }
    }

    #[test]
    fn bad_configuration_names_the_key() {
        check("[policy]\nack_timeout_ms = 5000\n", Ok(Settings { policy: Policy { ack_timeout_ms: 5000, ..Policy::default() }, ..Settings::default() }));
        check("[policy]\nack_timeout_msec = 5000\n", Err("ack_timeout_msec"));
        check("[policy]\nack_timeout_ms = \"soon\"\n", Err("ack_timeout_ms"));
        check("[policy]\ngap_timeout_ms = 0\n", Err("policy key `gap_timeout_ms`: 0 is not between 1 ms and one year"));
        check("[policy]\nrun_retention_ms = 1000\n", Err("run_retention_ms"));
        check("[topic]\nack = \"x\"\n", Err("topic"));
        check("not toml at all [", Err("ackwatch.toml"));
    }
}
