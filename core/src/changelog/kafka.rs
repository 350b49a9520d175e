//! `KafkaChangelog`: the changelog on a Kafka cluster (being written).

/// Kafka connection settings.
#[derive(Debug, Clone, Default)]
pub struct KafkaConfig;

/// A changelog on Kafka.
#[derive(Debug)]
pub struct KafkaChangelog;
