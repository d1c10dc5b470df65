//! Every codec and SASL mechanism a Kafka cluster may use (issue: rdkafka was built without
//! zstd, GSSAPI and OIDC). The build offers them all (`builtin.features`), and inputs produced
//! with each compression codec to the real broker are processed: the same facts as the audit of
//! the same records, nothing dead-lettered, no consumption error.

mod support;

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use support::facts::*;
use support::{LiveTopics, Processor};

/// librdkafka's `builtin.features` property, read from a fresh configuration.
fn builtin_features() -> String {
    use rdkafka::bindings as rd;
    // SAFETY: a configuration owned here and destroyed before returning; the name is a
    // NUL-terminated literal and the buffer's size is passed along with it.
    unsafe {
        let conf = rd::rd_kafka_conf_new();
        let mut buffer = vec![0u8; 1024];
        let mut size = buffer.len();
        let result = rd::rd_kafka_conf_get(
            conf,
            c"builtin.features".as_ptr(),
            buffer.as_mut_ptr().cast(),
            &mut size,
        );
        rd::rd_kafka_conf_destroy(conf);
        assert_eq!(result, rd::rd_kafka_conf_res_t::RD_KAFKA_CONF_OK);
        std::ffi::CStr::from_bytes_until_nul(&buffer)
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }
}

#[test]
fn the_build_offers_every_codec_and_sasl_mechanism() {
    let features = builtin_features();
    let features: Vec<&str> = features.split(',').collect();
    for wanted in [
        "gzip",
        "snappy",
        "lz4",
        "zstd",
        "ssl",
        "sasl",
        "sasl_plain",
        "sasl_scram",
        "sasl_gssapi",
        "sasl_oauthbearer",
        "http",
        "oidc",
    ] {
        assert!(
            features.contains(&wanted),
            "librdkafka lacks {wanted}: {features:?}"
        );
    }
}

#[test]
fn inputs_in_every_compression_codec_are_processed() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let topics = rt.block_on(LiveTopics::create("codecs", 2));
    // Faulty traffic (so it has findings to compare), each record produced by one of four
    // producers in turn, one per codec, each delivery awaited so the topics keep their order.
    let records = traffic(4000, 2, 17, now_ms() - 120_000, "codec_");
    let producers: Vec<(&str, FutureProducer)> = ["gzip", "snappy", "lz4", "zstd"]
        .into_iter()
        .map(|codec| {
            let producer = support::client_config()
                .set("compression.type", codec)
                .set("linger.ms", "0")
                .create()
                .unwrap();
            (codec, producer)
        })
        .collect();
    rt.block_on(async {
        for (i, r) in records.iter().enumerate() {
            let (_, producer) = &producers[i % producers.len()];
            let mut record = FutureRecord::<str, str>::to(topics.input(&r.topic))
                .partition(r.partition)
                .timestamp(r.ts.unwrap());
            if let (Some(key), Some(payload)) = (&r.key, &r.payload) {
                record = record.key(key).payload(payload);
            }
            producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
                .expect("delivered");
        }
    });
    let app = support::unique("app-codecs");
    let (config, http) = support::live_config(dir.path(), &topics, &app, "i1", "at_least_once", "");
    let mut processor = Processor::start(&config, &http);
    processor.wait_ready(Duration::from_secs(60));
    assert_same_facts(&topics, &records, dir.path(), false, &processor.log_text());
    let metrics = support::http_get(&http, "/metrics").unwrap().1;
    let processed: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("ackwatch_records_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        processed as usize,
        records.len(),
        "every record processed\n{metrics}"
    );
    assert!(
        metrics.contains("ackwatch_dead_letters_total 0"),
        "nothing dead-lettered\n{metrics}"
    );
    let log = processor.log_text();
    assert!(
        !log.contains("Decompression") && !log.contains("Not implemented"),
        "no decompression error\n{log}"
    );
    assert!(processor.terminate(Duration::from_secs(30)).success());
}
