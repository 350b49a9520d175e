//! [`Tansu`]: the tansu 0.6.0 Kafka-compatible broker with SQLite storage.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use tempfile::TempDir;

use crate::{
    ChildGuard, STARTUP_TIMEOUT, free_port, maybe_keep, retry_if_port_taken, tansu_bin, temp_dir,
    wait_for_tcp,
};

/// The broker's SQLite file, in its working directory.
const STORAGE_FILE: &str = "tansu.db";

/// A running tansu broker on 127.0.0.1, storing its log in a SQLite file in its own temporary
/// directory. Killed on drop.
///
/// [`Tansu::kill`] and [`Tansu::restart`] keep the storage and the port, so durability tests can
/// crash the broker (SIGKILL) and bring the same cluster back.
///
/// Known tansu gaps (see shared/NOTES.md): no transactions, and DeleteTopics deletes every topic.
pub struct Tansu {
    port: u16,
    child: ChildGuard,
    dir: TempDir,
}

impl Tansu {
    /// Starts a broker on a free port and waits until it accepts connections.
    pub fn start() -> Result<Self> {
        let bin = tansu_bin()?;
        let dir = temp_dir("tansu")?;
        let (port, child) = retry_if_port_taken(|| {
            let port = free_port();
            // Always an IP address: a hostname makes tansu listen on every interface.
            let url = format!("tcp://127.0.0.1:{port}");
            let mut command = Command::new(&bin);
            command
                .arg("broker")
                .args(["--listener-url", &url])
                .args(["--advertised-listener-url", &url])
                // tansu resolves the SQLite path against its working directory, even a
                // path that looks absolute, so name the file relative to the temp dir.
                .args([
                    "--storage-engine",
                    &format!("sqlite://{STORAGE_FILE}?maintenance_interval=5s"),
                ])
                .current_dir(dir.path());
            let mut child = ChildGuard::spawn("tansu", command, dir.path().join("tansu.log"))?;
            wait_ready(&mut child, port)?;
            Ok((port, child))
        })?;
        Ok(Self { port, child, dir })
    }

    /// The bootstrap servers string for Kafka clients: `127.0.0.1:PORT`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port the broker listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The SQLite file that holds the broker's data.
    pub fn storage_path(&self) -> PathBuf {
        self.dir.path().join(STORAGE_FILE)
    }

    /// Kills the broker with SIGKILL (a crash). The storage stays for [`Tansu::restart`].
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()
    }

    /// Starts the broker again on the same port and storage (killing it first if it runs) and
    /// waits until it accepts connections.
    pub fn restart(&mut self) -> Result<()> {
        self.child.respawn()?;
        wait_ready(&mut self.child, self.port)
    }

    /// Whether the broker process is running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// The process guard (log file, SIGTERM).
    pub fn process(&mut self) -> &mut ChildGuard {
        &mut self.child
    }
}

/// Waits until the broker accepts TCP connections. tansu prints "listening on" before it binds,
/// so the port is the reliable signal.
fn wait_ready(child: &mut ChildGuard, port: u16) -> Result<()> {
    child.wait_until(
        &format!("tansu to accept connections on port {port}"),
        STARTUP_TIMEOUT,
        || wait_for_tcp(("127.0.0.1", port), Duration::from_millis(200)).is_ok(),
    )
}

impl Drop for Tansu {
    fn drop(&mut self) {
        maybe_keep(&mut self.dir, "tansu");
    }
}
