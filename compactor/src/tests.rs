//! Compactor unit tests.
