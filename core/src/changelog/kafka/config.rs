//! [`KafkaConfig`] and the librdkafka settings of each client built from it.

use std::fmt;
use std::time::Duration;

use rdkafka::ClientConfig;

/// The fixed `group.id` of the internal readers. librdkafka needs a group to `assign`
/// partitions, but the readers never join it and never commit offsets to it.
pub(super) const READER_GROUP: &str = "unitable-internal-reader";

/// The consumer group whose committed offsets mirror what the Iceberg committer has committed
/// for `topic` (see [`KafkaConfig::publish_group_offsets`]).
pub(super) fn committer_group(topic: &str) -> String {
    format!("unitable-committer.{topic}")
}

/// Settings of a [`super::KafkaChangelog`].
#[derive(Clone)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// librdkafka settings passed to every client (producer, readers, admin), such as
    /// `security.protocol`, `sasl.mechanisms`, `sasl.username`, `ssl.ca.location`. They override
    /// unitable's tuning defaults, but not the settings the guarantees rest on
    /// (`enable.idempotence`, `acks`, offset-commit and topic auto-creation settings).
    pub options: Vec<(String, String)>,
    /// How long the producer waits to fill a batch (`linger.ms`).
    pub linger: Duration,
    /// Producer compression codec (`compression.type`: `none`, `gzip`, `snappy`, `lz4`).
    pub compression: String,
    /// Bound on every network operation: metadata and watermark look-ups, topic admin, and the
    /// whole delivery of an append (`message.timeout.ms`). An operation that cannot finish in
    /// time fails with a retryable [`crate::changelog::ChangelogError::Unavailable`].
    pub request_timeout: Duration,
    /// Replication factor of the topics [`super::KafkaChangelog`] creates (a table property
    /// may ask for another); `None`: the smaller of 3 and the cluster's broker count. `acks=all`
    /// makes an append durable on every in-sync replica, so durability is only as good as
    /// this.
    pub replication_factor: Option<i32>,
    /// Topic-level settings of created topics, e.g. `retention.ms`, `min.insync.replicas`
    /// (table properties override them). Unless set here or by the table,
    /// `min.insync.replicas` is 2 for 3 or more replicas and 1 below.
    pub topic_config: Vec<(String, String)>,
    /// Whether `publish_committed` also commits the offsets as the consumer-group offsets of
    /// `unitable-committer.<topic>`, so standard Kafka tools show how far the Iceberg committer
    /// lags behind the log.
    pub publish_group_offsets: bool,
    /// How many idle readers (one librdkafka consumer per partition read, each with its own
    /// threads and up to 4 MiB of prefetched records) are kept for reuse. A process that
    /// tails more partitions than this re-creates readers as it goes round.
    pub max_idle_readers: usize,
}

impl KafkaConfig {
    /// Settings for the brokers `brokers` with unitable's defaults: 5 ms linger, lz4, a 30 s
    /// request timeout, replication factor min(3, brokers) and committer group offsets on.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            options: Vec::new(),
            linger: Duration::from_millis(5),
            compression: "lz4".to_string(),
            request_timeout: Duration::from_secs(30),
            replication_factor: None,
            topic_config: Vec::new(),
            publish_group_offsets: true,
            max_idle_readers: 128,
        }
    }

    /// Adds a librdkafka client setting (see [`KafkaConfig::options`]).
    pub fn with_option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.push((key.into(), value.into()));
        self
    }

    /// `request_timeout` in whole milliseconds for librdkafka (at least 1).
    pub(super) fn timeout_ms(&self) -> String {
        millis(self.request_timeout).to_string()
    }

    /// Settings every client shares; `role` names the client in broker logs.
    fn base(&self, role: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", format!("unitable-{role}"))
            // librdkafka backs off up to 10 s between reconnects by default; a changelog
            // should notice a restarted broker sooner.
            .set("reconnect.backoff.max.ms", "2000");
        config
    }

    /// Applies the pass-through options, then `enforced` (which the options may not override).
    fn finish(&self, mut config: ClientConfig, enforced: &[(&str, &str)]) -> ClientConfig {
        for (key, value) in &self.options {
            config.set(key, value);
        }
        // Never let a metadata request create a topic: a missing topic must be reported.
        config.set("allow.auto.create.topics", "false");
        for (key, value) in enforced {
            config.set(*key, *value);
        }
        config
    }

    /// The producer: idempotent, `acks=all`, every record's partition chosen by the caller.
    pub(super) fn producer(&self) -> ClientConfig {
        let mut config = self.base("producer");
        config
            .set("linger.ms", self.linger.as_millis().to_string())
            .set("compression.type", &self.compression)
            .set("message.timeout.ms", self.timeout_ms())
            .set("request.timeout.ms", self.timeout_ms());
        self.finish(
            config,
            // librdkafka's idempotent producer keeps each partition's order across retries
            // (and caps in-flight requests at 5 for that).
            &[("enable.idempotence", "true"), ("acks", "all")],
        )
    }

    /// A reader: a consumer used only with `assign` and explicit offsets.
    pub(super) fn reader(&self) -> ClientConfig {
        let mut config = self.base("reader");
        config
            // Tail reads are woken by the broker's fetch long-poll; keep it short so a reader
            // at the head notices a new record quickly even where the broker does not answer
            // a fetch early.
            .set("fetch.wait.max.ms", "100")
            // Each reader prefetches one partition; bound what it buffers.
            .set("queued.max.messages.kbytes", "4096")
            .set("socket.timeout.ms", self.timeout_ms());
        self.finish(
            config,
            &[
                ("group.id", READER_GROUP),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                // Fetching an offset the broker no longer has is an error to report, not a
                // reason to jump to the start or the end.
                ("auto.offset.reset", "error"),
                ("enable.partition.eof", "false"),
            ],
        )
    }

    /// The client for metadata, watermarks and offsets-for-times look-ups.
    pub(super) fn lookup(&self) -> ClientConfig {
        let mut config = self.base("lookup");
        config.set("socket.timeout.ms", self.timeout_ms());
        self.finish(
            config,
            &[("group.id", READER_GROUP), ("enable.auto.commit", "false")],
        )
    }

    /// The admin client.
    pub(super) fn admin(&self) -> ClientConfig {
        let mut config = self.base("admin");
        config.set("socket.timeout.ms", self.timeout_ms());
        self.finish(config, &[])
    }

    /// A consumer that only commits offsets for `group`.
    pub(super) fn committer(&self, group: &str) -> ClientConfig {
        let mut config = self.base("committer");
        config.set("socket.timeout.ms", self.timeout_ms());
        self.finish(
            config,
            &[
                ("group.id", group),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
            ],
        )
    }
}

/// Hides the values of settings that look like secrets.
impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let options: Vec<(&str, &str)> = self
            .options
            .iter()
            .map(|(key, value)| {
                let secret = ["password", "secret", "token", "key"]
                    .iter()
                    .any(|word| key.to_ascii_lowercase().contains(word));
                (
                    key.as_str(),
                    if secret { "<redacted>" } else { value.as_str() },
                )
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("options", &options)
            .field("linger", &self.linger)
            .field("compression", &self.compression)
            .field("request_timeout", &self.request_timeout)
            .field("replication_factor", &self.replication_factor)
            .field("topic_config", &self.topic_config)
            .field("publish_group_offsets", &self.publish_group_offsets)
            .field("max_idle_readers", &self.max_idle_readers)
            .finish()
    }
}

/// Whole milliseconds, at least 1 (librdkafka reads 0 as "no timeout" in places).
pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
