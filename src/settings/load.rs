//! Loading the configuration: the TOML file, then the environment, then the files of
//! `[kafka.property_files]`; then validation. Every configuration value that could be a
//! credential is registered with `crate::secrets` before anything can echo it, and no error
//! quotes a source line.
//!
//! The environment: `ACKWATCH__SECTION__KEY` sets `section.key`. Three kinds of keys the
//! `config` crate cannot express are read here:
//! - `ACKWATCH__KAFKA__PROPERTIES__<NAME>` sets the librdkafka property `<name>`, lower-cased,
//!   with every `_` read as `.` (`SASL_PASSWORD` → `sasl.password`; librdkafka's names use
//!   dots, except `log_level` and `enabled_events`, which are kept);
//! - `ACKWATCH__KAFKA__PROPERTY_FILES__<NAME>` likewise, for `[kafka.property_files]`;
//! - `ACKWATCH__ALERTS__ALERTMANAGER_URLS` is a comma-separated list.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::Settings;
use crate::secrets;

const ENV_PREFIX: &str = "ACKWATCH__";
const ENV_PROPERTIES: &str = "ACKWATCH__KAFKA__PROPERTIES__";
const ENV_PROPERTY_FILES: &str = "ACKWATCH__KAFKA__PROPERTY_FILES__";
const ENV_ALERTMANAGER_URLS: &str = "ACKWATCH__ALERTS__ALERTMANAGER_URLS";
/// librdkafka properties whose names hold `_` (kept as they are from the environment).
const UNDERSCORE_PROPERTIES: [&str; 2] = ["log_level", "enabled_events"];

/// The environment's part of the configuration, split as the module docs say.
#[derive(Default)]
struct FromEnv {
    /// For the `config` crate: every `ACKWATCH__*` variable not handled here.
    rest: HashMap<String, String>,
    properties: BTreeMap<String, String>,
    property_files: BTreeMap<String, PathBuf>,
    alertmanager_urls: Option<Vec<String>>,
}

impl FromEnv {
    fn split(env: impl IntoIterator<Item = (String, String)>) -> FromEnv {
        let mut from = FromEnv::default();
        for (key, value) in env {
            if let Some(name) = key.strip_prefix(ENV_PROPERTIES) {
                from.properties.insert(property_name(name), value);
            } else if let Some(name) = key.strip_prefix(ENV_PROPERTY_FILES) {
                from.property_files
                    .insert(property_name(name), PathBuf::from(value));
            } else if key == ENV_ALERTMANAGER_URLS {
                from.alertmanager_urls = Some(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|u| !u.is_empty())
                        .map(str::to_string)
                        .collect(),
                );
            } else if key.starts_with(ENV_PREFIX) {
                from.rest.insert(key, value);
            }
        }
        from
    }
}

/// A librdkafka property name from its environment spelling (module docs).
fn property_name(env_name: &str) -> String {
    let lower = env_name.to_ascii_lowercase();
    if UNDERSCORE_PROPERTIES.contains(&lower.as_str()) {
        lower
    } else {
        lower.replace('_', ".")
    }
}

impl Settings {
    /// Loads `path` (TOML) with the process's environment overrides, and validates the result.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Settings> {
        Self::load_with_env(path, std::env::vars())
    }

    /// [`Self::load`] with the given environment.
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Settings> {
        let from_env = FromEnv::split(env);
        register_env_secrets(&from_env);
        let text = match path {
            Some(path) => Some(read_toml(path)?),
            None => None,
        };
        let mut builder = config::Config::builder();
        if let Some(text) = &text {
            builder = builder.add_source(config::File::from_str(text, config::FileFormat::Toml));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("ACKWATCH")
                .prefix_separator("__")
                .separator("__")
                .source(Some(from_env.rest.clone())),
        );
        let mut settings: Settings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| anyhow::anyhow!(secrets::scrub(&e.to_string())))
            .with_context(|| match path {
                Some(p) => format!(
                    "invalid configuration in {} (or ACKWATCH__* environment)",
                    p.display()
                ),
                None => "invalid configuration in ACKWATCH__* environment".to_string(),
            })?;
        settings.kafka.properties.extend(from_env.properties);
        settings
            .kafka
            .property_files
            .extend(from_env.property_files);
        if let Some(urls) = from_env.alertmanager_urls {
            settings.alerts.alertmanager_urls = urls;
        }
        read_property_files(&mut settings)?;
        register_secrets(&settings);
        settings.validate().context("invalid configuration")?;
        Ok(settings)
    }
}

/// Reads the TOML file and checks its syntax here, so that a syntax error says where without
/// quoting the line (which may hold a password); its strings are registered as secrets first.
fn read_toml(path: &Path) -> anyhow::Result<String> {
    anyhow::ensure!(
        path.exists(),
        "config file {} does not exist",
        path.display()
    );
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    match text.parse::<toml::Table>() {
        Ok(table) => {
            register_toml_secrets(&table);
            Ok(text)
        }
        Err(e) => {
            let (line, column) = e.span().map_or((0, 0), |span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                (line, column)
            });
            anyhow::bail!(
                "invalid configuration in {}: TOML syntax error at line {line}, column {column}: \
                 {} (the line is not shown: it may hold a secret)",
                path.display(),
                e.message()
            )
        }
    }
}

/// The strings of `[kafka.properties]` and every URL's credentials, before the `config` crate
/// can quote any of them in an error.
fn register_toml_secrets(table: &toml::Table) {
    if let Some(properties) = table
        .get("kafka")
        .and_then(|k| k.get("properties"))
        .and_then(|p| p.as_table())
    {
        for value in properties.values() {
            // Properties are strings; anything else is refused later, and may be quoted then.
            match value {
                toml::Value::String(s) => secrets::register(s),
                toml::Value::Integer(i) => secrets::register(&i.to_string()),
                toml::Value::Float(f) => secrets::register(&f.to_string()),
                _ => {}
            }
        }
    }
    fn urls(value: &toml::Value) {
        match value {
            toml::Value::String(s) if s.contains("://") => secrets::register_url(s),
            toml::Value::Array(items) => items.iter().for_each(urls),
            toml::Value::Table(t) => t.values().for_each(urls),
            _ => {}
        }
    }
    table.values().for_each(urls);
}

fn register_env_secrets(from_env: &FromEnv) {
    from_env
        .properties
        .values()
        .for_each(|v| secrets::register(v));
    for value in from_env.rest.values() {
        if value.contains("://") {
            secrets::register_url(value);
        }
    }
    for url in from_env.alertmanager_urls.iter().flatten() {
        secrets::register_url(url);
    }
}

fn register_secrets(settings: &Settings) {
    settings
        .kafka
        .properties
        .values()
        .for_each(|v| secrets::register(v));
    for url in &settings.alerts.alertmanager_urls {
        secrets::register_url(url);
    }
    secrets::register_url(&settings.worldservice.url);
}

/// Each `[kafka.property_files]` entry's file becomes its property's value (without a final
/// line break, as `kubectl create secret` files and `echo` leave one).
fn read_property_files(settings: &mut Settings) -> anyhow::Result<()> {
    let kafka = &mut settings.kafka;
    for (name, path) in &kafka.property_files {
        anyhow::ensure!(
            !kafka.properties.contains_key(name),
            "kafka.property_files.\"{name}\": the property is also set in kafka.properties; \
             set it in one place"
        );
        let value = std::fs::read_to_string(path).with_context(|| {
            format!(
                "kafka.property_files.\"{name}\": cannot read {}",
                path.display()
            )
        })?;
        let value = value.trim_end_matches(['\n', '\r']).to_string();
        secrets::register(&value);
        kafka.properties.insert(name.clone(), value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_names_map_to_properties_lists_and_the_rest() {
        let env = [
            ("ACKWATCH__KAFKA__PROPERTIES__SASL_PASSWORD", "pw-from-env"),
            ("ACKWATCH__KAFKA__PROPERTIES__LOG_LEVEL", "6"),
            (
                "ACKWATCH__KAFKA__PROPERTY_FILES__SSL_KEY_PASSWORD",
                "/run/secret",
            ),
            (
                "ACKWATCH__ALERTS__ALERTMANAGER_URLS",
                "http://a:9093, http://b:9093,",
            ),
            ("ACKWATCH__RUNTIME__LATENESS_MS", "700"),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let from = FromEnv::split(env);
        assert_eq!(
            from.properties.into_iter().collect::<Vec<_>>(),
            [
                ("log_level".to_string(), "6".to_string()),
                ("sasl.password".to_string(), "pw-from-env".to_string())
            ]
        );
        assert_eq!(
            from.property_files.keys().collect::<Vec<_>>(),
            ["ssl.key.password"]
        );
        assert_eq!(
            from.alertmanager_urls.unwrap(),
            ["http://a:9093", "http://b:9093"]
        );
        assert_eq!(
            from.rest.len(),
            1,
            "only ACKWATCH__ variables, the rest left"
        );
    }

    #[test]
    fn the_environment_and_files_reach_the_settings() {
        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("password");
        std::fs::write(&secret_file, "pw-from-a-file\n").unwrap();
        let env = [
            (
                "ACKWATCH__KAFKA__PROPERTIES__SECURITY_PROTOCOL".to_string(),
                "SASL_PLAINTEXT".to_string(),
            ),
            (
                "ACKWATCH__KAFKA__PROPERTY_FILES__SASL_PASSWORD".to_string(),
                secret_file.display().to_string(),
            ),
            (
                "ACKWATCH__ALERTS__ALERTMANAGER_URLS".to_string(),
                "http://a:9093,http://b:9093".to_string(),
            ),
            (
                "ACKWATCH__RUNTIME__LATENESS_MS".to_string(),
                "700".to_string(),
            ),
        ];
        let settings = Settings::load_with_env(None, env).unwrap();
        assert_eq!(
            settings.kafka.properties["security.protocol"],
            "SASL_PLAINTEXT"
        );
        assert_eq!(settings.kafka.properties["sasl.password"], "pw-from-a-file");
        assert_eq!(settings.alerts.alertmanager_urls.len(), 2);
        assert_eq!(settings.runtime.lateness_ms, 700);
        assert!(secrets::scrub("x pw-from-a-file y").contains(secrets::REDACTED));
    }
}
