//! `LocalChangelog`: the durable local log (being written).

/// Local log settings.
#[derive(Debug, Clone, Default)]
pub struct LocalConfig;

/// A changelog in local segment files.
#[derive(Debug)]
pub struct LocalChangelog;
