//! Process harness for unitable's integration tests (`tests/tests/*.rs`).
//!
//! Integration tests exercise the real processes the system is made of and talks to: the
//! `unitable` binary ([`Service`]), Apache Kafka ([`Kafka`], one node or a cluster), an S3 endpoint
//! ([`Moto`]) and PostgreSQL for the catalog ([`Postgres`]). Each helper starts its process in a fresh temporary directory on ports picked by
//! [`free_port`], sends the process's stdout and stderr to a log file in that directory, waits
//! until the process is ready, and kills it (SIGKILL) when the guard is dropped. A test never
//! assumes that something is already running.
//!
//! The executables are found through environment variables that `scripts/test` exports:
//!
//! | variable          | what                                    | fallback when unset                         |
//! |-------------------|-----------------------------------------|---------------------------------------------|
//! | `UNITABLE_BIN`    | the `unitable` binary                   | `$CARGO_TARGET_DIR/debug/unitable`, then `<workspace>/target/debug/unitable` |
//! | `KAFKA_HOME`      | Apache Kafka 4.4 (jars, from Maven)     | `$UNITABLE_CACHE/kafka-4.4.0` (`UNITABLE_CACHE` defaults to `~/.cache/unitable`) |
//! | `MOTO_SERVER_BIN` | moto's `moto_server` (local S3)         | none                                        |
//! | `UNITABLE_PYTHON` | the test venv's Python (PyIceberg etc.) | none                                        |
//!
//! The fallback for `UNITABLE_BIN` may be stale: `scripts/test` builds the binary before it runs
//! the tests; when running tests by hand, build it first (`cargo build -p unitable-table-service`).
//!
//! Every helper here blocks the calling thread. From an async test, start processes before the
//! async work begins or inside `tokio::task::spawn_blocking`.
//!
//! When a test panics, the guards print the tail of each process's log. Set
//! `UNITABLE_KEEP_TEST_DIRS=1` to keep the temporary directories (data and full logs) as well.

use std::env;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub mod bench;
pub mod crash;
mod http;
pub mod iceberg_oracle;
mod kafka;
mod moto;
mod postgres;
mod process;
mod service;

pub use http::{HttpResponse, http_get, http_request};
pub use kafka::{Kafka, kafka_home};
pub use moto::Moto;
pub use postgres::{Postgres, postgres_bindir};
pub use process::ChildGuard;
pub use service::{CliOutput, Service};

/// How long the helpers wait for a process to become ready. Generous, because CI machines
/// have two cores and may be busy linking other test binaries.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
///
/// The port is found by binding port 0 and closing the listener, so another process may take
/// it before the caller binds it; the process helpers retry with new ports when that happens.
///
/// # Panics
/// If the loopback interface cannot bind any port, which no test could survive anyway.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .expect("binding 127.0.0.1:0 to find a free port (is the loopback interface up?)");
    listener
        .local_addr()
        .expect("reading the local address of a listener bound to 127.0.0.1:0")
        .port()
}

/// Waits until a TCP connection to `addr` succeeds, polling every 50 ms for at most `timeout`.
pub fn wait_for_tcp(addr: impl ToSocketAddrs, timeout: Duration) -> Result<()> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .context("resolving the address to wait for")?
        .collect();
    let Some(first) = addrs.first().copied() else {
        bail!("the address to wait for resolved to nothing");
    };
    let deadline = Instant::now() + timeout;
    loop {
        for addr in &addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = left.min(Duration::from_millis(500));
            if attempt.is_zero() {
                break;
            }
            if TcpStream::connect_timeout(addr, attempt).is_ok() {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            bail!("nothing accepted TCP connections on {first} within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The `unitable` binary under test (`UNITABLE_BIN`, see the crate docs for the fallback).
pub fn unitable_bin() -> Result<PathBuf> {
    if let Some(path) = bin_from_env("UNITABLE_BIN")? {
        return Ok(path);
    }
    let mut candidates = Vec::new();
    if let Some(target) = env::var_os("CARGO_TARGET_DIR").filter(|dir| !dir.is_empty()) {
        candidates.push(PathBuf::from(target).join("debug/unitable"));
    }
    candidates.push(workspace_root().join("target/debug/unitable"));
    candidates
        .into_iter()
        .find(|path| path.is_file())
        .with_context(|| {
            "UNITABLE_BIN is not set and no built `unitable` binary was found; run scripts/test, \
         or `cargo build -p unitable-table-service` and set UNITABLE_BIN"
        })
}

/// The cache `scripts/test` fills (`UNITABLE_CACHE`, default `~/.cache/unitable`).
pub fn cache_dir() -> Result<PathBuf> {
    match env::var_os("UNITABLE_CACHE").filter(|dir| !dir.is_empty()) {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => Ok(PathBuf::from(
            env::var_os("HOME").context("neither UNITABLE_CACHE nor HOME is set")?,
        )
        .join(".cache/unitable")),
    }
}

/// moto's `moto_server` from the test venv (`MOTO_SERVER_BIN`).
pub fn moto_server_bin() -> Result<PathBuf> {
    bin_from_env("MOTO_SERVER_BIN")?.context(
        "MOTO_SERVER_BIN is not set; run scripts/test, which installs moto_server into the test venv",
    )
}

/// The test venv's Python, which has PyIceberg, pyarrow, confluent-kafka and grpcio
/// (`UNITABLE_PYTHON`).
pub fn python_bin() -> Result<PathBuf> {
    bin_from_env("UNITABLE_PYTHON")?.context(
        "UNITABLE_PYTHON is not set; run scripts/test, which creates the test venv and exports it",
    )
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.to_path_buf(), Path::to_path_buf)
}

/// Reads an executable's path from `var`: `None` when unset or empty, an error when it names a
/// file that does not exist.
fn bin_from_env(var: &str) -> Result<Option<PathBuf>> {
    let Some(value) = env::var_os(var).filter(|value| !value.is_empty()) else {
        return Ok(None);
    };
    let path = PathBuf::from(value);
    if !path.is_file() {
        bail!("{var}={} does not name an existing file", path.display());
    }
    Ok(Some(path))
}

/// Whether `UNITABLE_KEEP_TEST_DIRS` asks to keep temporary directories after a test.
fn keep_test_dirs() -> bool {
    env::var_os("UNITABLE_KEEP_TEST_DIRS").is_some_and(|value| !value.is_empty() && value != "0")
}

/// A fresh temporary directory for one process; `what` appears in its name.
fn temp_dir(what: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("unitable-{what}-"))
        .tempdir()
        .with_context(|| format!("creating a temporary directory for {what}"))
}

/// Keeps `dir` after the test when `UNITABLE_KEEP_TEST_DIRS` is set, saying where it is.
fn maybe_keep(dir: &mut tempfile::TempDir, what: &str) {
    if keep_test_dirs() {
        dir.disable_cleanup(true);
        eprintln!("kept {what} directory {}", dir.path().display());
    }
}

/// Runs `start` up to three times while it fails because a port picked by [`free_port`] was
/// taken by someone else in the meantime.
fn retry_if_port_taken<T>(mut start: impl FnMut() -> Result<T>) -> Result<T> {
    let mut attempt = 1;
    loop {
        match start() {
            Err(err) if attempt < 3 && format!("{err:#}").contains("in use") => {
                eprintln!("a port was taken while starting (attempt {attempt}), retrying: {err:#}");
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_returns_a_port_that_can_be_bound() {
        let first = free_port();
        let second = free_port();
        assert_ne!(first, 0);
        assert_ne!(second, 0);
        let listener = TcpListener::bind(("127.0.0.1", first));
        assert!(
            listener.is_ok(),
            "port {first} from free_port() is not free: {listener:?}"
        );
    }

    #[test]
    fn wait_for_tcp_returns_once_something_listens() {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("binding a listener");
        let addr = listener.local_addr().expect("listener address");
        let started = Instant::now();
        let waited = wait_for_tcp(addr, Duration::from_secs(5));
        assert!(waited.is_ok(), "{waited:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn wait_for_tcp_returns_when_a_listener_appears_later() {
        let port = free_port();
        let binder = thread::spawn(move || {
            thread::sleep(Duration::from_millis(300));
            let listener =
                TcpListener::bind(("127.0.0.1", port)).expect("binding the late listener");
            thread::sleep(Duration::from_secs(2));
            drop(listener);
        });
        let waited = wait_for_tcp(("127.0.0.1", port), Duration::from_secs(10));
        assert!(waited.is_ok(), "{waited:?}");
        binder.join().expect("the binder thread panicked");
    }

    #[test]
    fn wait_for_tcp_times_out_when_nothing_listens() {
        let port = free_port();
        let started = Instant::now();
        let waited = wait_for_tcp(("127.0.0.1", port), Duration::from_millis(400));
        let elapsed = started.elapsed();
        let err = waited.expect_err("nothing listens, so waiting must fail");
        assert!(err.to_string().contains(&port.to_string()), "{err}");
        assert!(
            elapsed >= Duration::from_millis(400),
            "gave up early after {elapsed:?}"
        );
        assert!(
            elapsed < Duration::from_secs(3),
            "overran the timeout: {elapsed:?}"
        );
    }

    #[test]
    fn retry_if_port_taken_retries_only_port_errors() {
        let mut calls = 0;
        let result: Result<()> = retry_if_port_taken(|| {
            calls += 1;
            bail!("Address already in use (os error 98)")
        });
        assert!(result.is_err());
        assert_eq!(calls, 3);

        let mut calls = 0;
        let result: Result<()> = retry_if_port_taken(|| {
            calls += 1;
            bail!("bad flag")
        });
        assert!(result.is_err());
        assert_eq!(calls, 1);
    }
}
