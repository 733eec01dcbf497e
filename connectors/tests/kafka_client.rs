//! librdkafka is built with what production clusters need: TLS, SASL
//! (PLAIN, SCRAM, OAUTHBEARER) and every compression codec.

use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::BaseProducer;

#[test]
fn librdkafka_has_tls_sasl_and_every_codec() {
    let native = ClientConfig::new().create_native_config().unwrap();
    let features = native.get("builtin.features").unwrap();
    for feature in [
        "ssl",
        "sasl_plain",
        "sasl_scram",
        "sasl_oauthbearer",
        "gzip",
        "snappy",
        "lz4",
        "zstd",
    ] {
        assert!(
            features.split(',').any(|f| f == feature),
            "{feature} missing: {features}"
        );
    }
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", "broker.example:9093")
        .set("security.protocol", "SASL_SSL")
        .set("sasl.mechanism", "SCRAM-SHA-512")
        .set("sasl.username", "etl")
        .set("sasl.password", "secret")
        .set("group.id", "g");
    let _: BaseConsumer = config.create().expect("a SASL_SSL consumer");
    let _: BaseProducer = config
        .clone()
        .set("compression.type", "zstd")
        .create()
        .expect("a zstd SASL_SSL producer");
}
