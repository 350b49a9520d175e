//! Compactor unit tests: settings from table properties.

use std::collections::HashMap;

use unitable_core::naming::{TableName, props};

use crate::config::{DEFAULT_TARGET_FILE_BYTES, TableSettings};
use crate::error::CompactError;

fn settings(pairs: &[(&str, &str)]) -> Result<TableSettings, CompactError> {
    let name: TableName = "a.b".parse().expect("name");
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    TableSettings::from_properties(&name, &map)
}

#[test]
fn defaults_apply_when_nothing_is_set() {
    let s = settings(&[]).expect("defaults");
    assert_eq!(s, TableSettings::default());
    assert_eq!(s.target_file_bytes, DEFAULT_TARGET_FILE_BYTES);
    assert_eq!(
        s.small_file_bytes(),
        (DEFAULT_TARGET_FILE_BYTES as f64 * 0.75) as u64
    );
}

#[test]
fn the_write_target_is_the_default_and_compaction_overrides_it() {
    let s = settings(&[(props::WRITE_TARGET_FILE_SIZE, "1000")]).expect("write target");
    assert_eq!(s.target_file_bytes, 1000);
    let s = settings(&[
        (props::WRITE_TARGET_FILE_SIZE, "1000"),
        (props::COMPACTION_TARGET_FILE_SIZE, "5000"),
        (props::COMPACTION_ENABLED, "false"),
        (props::COMPACTION_MIN_INPUT_FILES, "2"),
        (props::COMPACTION_DELETE_RATIO, "0.5"),
    ])
    .expect("overrides");
    assert_eq!(s.target_file_bytes, 5000);
    assert!(!s.enabled);
    assert_eq!(s.min_input_files, 2);
    assert_eq!(s.delete_ratio, 0.5);
}

#[test]
fn bad_values_name_the_property_and_never_panic() {
    for (key, value) in [
        (props::COMPACTION_TARGET_FILE_SIZE, "0"),
        (props::COMPACTION_TARGET_FILE_SIZE, "-5"),
        (props::COMPACTION_SMALL_FILE_FRACTION, "1.5"),
        (props::COMPACTION_DELETE_RATIO, "0"),
        (props::COMPACTION_DELETE_RATIO, "lots"),
        (props::COMPACTION_MIN_SNAPSHOTS, "0"),
        (props::COMPACTION_ORPHAN_AGE_MS, "1000"),
        (props::COMPACTION_ENABLED, "yes"),
    ] {
        let e = settings(&[(key, value)]).expect_err(value);
        assert!(matches!(e, CompactError::BadProperty { .. }), "{e}");
        assert!(e.to_string().contains(key), "{e}");
        assert!(!e.is_retryable());
    }
}
