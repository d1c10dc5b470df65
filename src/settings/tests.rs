//! The settings' loading and validation, through one `check(toml, expected)`.

use super::*;

fn check(toml: &str, expected: Result<Settings, &str>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ackwatch.toml");
    std::fs::write(&path, toml).unwrap();
    match (Settings::load(Some(&path)), expected) {
        (Ok(got), Ok(want)) => assert_eq!(got, want, "{toml}"),
        (Err(got), Err(want)) => {
            let text = format!("{got:#}");
            assert!(
                text.contains(want),
                "{toml}: error {text:?} should mention {want:?}"
            );
        }
        (got, want) => panic!("{toml}: got {got:?}, expected {want:?}"),
    }
}

#[test]
fn the_shipped_example_is_every_default() {
    let example = include_str!("../../deploy/ackwatch.example.toml");
    check(example, Ok(Settings::default()));
    // And it names every key the settings have.
    let keys = serde_json::to_value(Settings::default()).unwrap();
    for (section, fields) in keys.as_object().unwrap() {
        assert!(
            example.contains(&format!("[{section}]")),
            "example lacks [{section}]"
        );
        for key in fields.as_object().unwrap().keys() {
            let table = format!("[{section}.{key}]");
            assert!(
                example.contains(&format!("\n{key} = ")) || example.contains(&table),
                "example lacks {section}.{key}"
            );
        }
    }
}

#[test]
fn only_property_names_are_shown() {
    let kafka = Kafka {
        properties: [("sasl.password", "hunter2"), ("sasl.username", "me")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Kafka::default()
    };
    assert_eq!(kafka.property_names(), ["sasl.password", "sasl.username"]);
    let shown = format!("{kafka:?}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("\"me\""),
        "{shown}"
    );
    assert!(shown.contains("sasl.password"), "{shown}");
}

/// `consumer.` / `producer.` / `admin.` properties reach only that kind of client (without
/// the prefix, over the unprefixed ones); every client says whose it is in `client.id`.
#[test]
fn prefixed_properties_reach_one_kind_of_client_and_client_ids_say_whose() {
    let mut settings = Settings::default();
    settings.runtime.instance_id = "pod-1".into();
    settings.kafka.properties = [
        ("linger.ms", "7"),
        ("producer.linger.ms", "20"),
        ("consumer.fetch.max.bytes", "1048576"),
        ("admin.socket.timeout.ms", "9000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    settings.kafka.validate().unwrap();
    fn get(settings: &Settings, kind: ClientKind, key: &str) -> Option<String> {
        settings
            .client_config(kind, "r")
            .get(key)
            .map(str::to_string)
    }
    use ClientKind::*;
    assert_eq!(get(&settings, Producer, "linger.ms").as_deref(), Some("20"));
    assert_eq!(get(&settings, Consumer, "linger.ms").as_deref(), Some("7"));
    assert_eq!(
        get(&settings, Consumer, "fetch.max.bytes").as_deref(),
        Some("1048576")
    );
    assert_eq!(get(&settings, Producer, "fetch.max.bytes"), None);
    assert_eq!(
        get(&settings, Admin, "socket.timeout.ms").as_deref(),
        Some("9000")
    );
    for kind in ClientKind::ALL {
        assert_eq!(
            get(&settings, kind, "producer.linger.ms"),
            None,
            "never passed prefixed"
        );
        assert_eq!(
            get(&settings, kind, "client.id").as_deref(),
            Some("ackwatch-pod-1-r")
        );
    }
    settings
        .kafka
        .properties
        .insert("client.id".into(), "cp-eu".into());
    assert_eq!(
        get(&settings, Admin, "client.id").as_deref(),
        Some("cp-eu-r")
    );
    settings
        .kafka
        .properties
        .insert("producer.no.such.property".into(), "1".into());
    let error = settings.kafka.validate().unwrap_err().to_string();
    assert!(error.contains("producer.no.such.property"), "{error}");
}

/// `*_ms` keys take integers (milliseconds) or durations as people write them.
#[test]
fn durations_may_be_written_with_units() {
    let mut want = Settings::default();
    want.policy.ack_timeout_ms = 5000;
    want.policy.run_retention_ms = 2 * 86_400_000;
    want.runtime.commit_interval_ms = 250;
    want.worldservice.max_signal_age_ms = 600_000;
    check(
        "[policy]\nack_timeout_ms = \"5s\"\nrun_retention_ms = \"2d\"\n\
         [runtime]\ncommit_interval_ms = \"250ms\"\n[worldservice]\nmax_signal_age_ms = \"10m\"\n",
        Ok(want),
    );
    check(
        "[policy]\nack_timeout_ms = \"soon\"\n",
        Err("policy.ack_timeout_ms"),
    );
    check("[runtime]\nlateness_ms = \"2w\"\n", Err("unknown unit"));
}

#[test]
fn bad_configuration_names_the_key() {
    check(
        "[policy]\nack_timeout_ms = 5000\n",
        Ok(Settings {
            policy: Policy {
                ack_timeout_ms: 5000,
                ..Policy::default()
            },
            ..Settings::default()
        }),
    );
    check(
        "[policy]\nack_timeout_msec = 5000\n",
        Err("ack_timeout_msec"),
    );
    check(
        "[policy]\nack_timeout_ms = \"soon\"\n",
        Err("ack_timeout_ms"),
    );
    check(
        "[policy]\ngap_timeout_ms = 0\n",
        Err("policy key `gap_timeout_ms`: 0 is not between 1 ms and one year"),
    );
    check(
        "[policy]\nrun_retention_ms = 1000\n",
        Err("run_retention_ms"),
    );
    check("[topic]\nack = \"x\"\n", Err("topic"));
    check("not toml at all [", Err("ackwatch.toml"));
    check(
        "[runtime]\ncommit_interval_ms = 0\n",
        Err("runtime.commit_interval_ms = 0 is not between 10 and 600000"),
    );
    check(
        "[runtime]\nnum_stream_threads = 0\n",
        Err("runtime.num_stream_threads = 0 is not between 1 and 64"),
    );
    check(
        "[runtime]\nprocessing_guarantee = \"exactly_once\"\n",
        Err("processing_guarantee"),
    );
    check("[http]\nlisten = \"localhost\"\n", Err("http.listen"));
    check(
        "[alerts]\nalertmanager_urls = [\"am:9093\"]\n",
        Err("alerts.alertmanager_urls: \"am:9093\" is not an http:// URL"),
    );
    check(
        "[worldservice]\nurl = \"worldservice:8080\"\n",
        Err("worldservice.url: \"worldservice:8080\" is not an http:// URL"),
    );
    check(
        "[worldservice]\nretry_initial_ms = 1000\nretry_max_ms = 500\n",
        Err("worldservice.retry_max_ms = 500 is not between 1000 and 3600000"),
    );
    check(
        "[worldservice]\nidempotency_header = \"Idempotency Key\"\n",
        Err("worldservice.idempotency_header"),
    );
    check(
        "[topics]\nactivation = \"a\"\nack = \"a\"\n",
        Err("topics.activation and topics.ack must differ"),
    );
    check(
        "[runtime]\nprocessing_guarantee = \"exactly_once_v2\"\n[kafka.properties]\n\"security.protocol\" = \"SSL\"\n",
        Ok(Settings {
            runtime: Runtime { processing_guarantee: Guarantee::ExactlyOnceV2, ..Runtime::default() },
            kafka: Kafka { properties: [("security.protocol".to_string(), "SSL".to_string())].into(), ..Kafka::default() },
            ..Settings::default()
        }),
    );
}

/// `http.advertised_url`: where the group sends queries for this instance's worlds.
#[test]
fn the_advertised_url_defaults_to_a_listen_address_that_names_a_host() {
    let check = |listen: &str, advertised: &str, expected: Result<&str, &str>| {
        let mut settings = Settings::default();
        settings.http.listen = listen.into();
        settings.http.advertised_url = advertised.into();
        match (settings.validate(), expected) {
            (Ok(()), Ok(url)) => assert_eq!(settings.http.advertised(), url, "{listen} {advertised}"),
            (Err(e), Err(says)) => assert!(format!("{e:#}").contains(says), "{e:#}"),
            (got, expected) => panic!("{listen} {advertised}: {got:?}, expected {expected:?}"),
        }
    };
    check("127.0.0.1:9464", "", Ok("http://127.0.0.1:9464"));
    check("0.0.0.0:9464", "", Ok(""));
    check("[::]:9464", "", Ok(""));
    check("0.0.0.0:9464", "http://ackwatch-0.ackwatch:9464/", Ok("http://ackwatch-0.ackwatch:9464"));
    check("0.0.0.0:9464", "https://a.example:443", Ok("https://a.example:443"));
    check("0.0.0.0:9464", "ackwatch-0:9464", Err("http.advertised_url"));
    check("0.0.0.0:9464", "http://user:pw@ackwatch-0:9464", Err("without credentials"));
    check("0.0.0.0:9464", "http://", Err("http.advertised_url"));
}
