//! [`Moto`]: moto's `moto_server`, a local S3 endpoint that accepts any credentials.

use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};
use tempfile::TempDir;

use crate::http::http_request;
use crate::{
    ChildGuard, STARTUP_TIMEOUT, free_port, maybe_keep, moto_server_bin, retry_if_port_taken,
    temp_dir, wait_for_tcp,
};

/// A running `moto_server -H 127.0.0.1 -p PORT`, killed on drop.
///
/// S3 clients should use [`Moto::endpoint`] with path-style addressing, region `us-east-1` and
/// any access key / secret (moto does not check signatures).
pub struct Moto {
    port: u16,
    child: ChildGuard,
    dir: TempDir,
}

impl Moto {
    /// Starts moto on a free port and waits until it accepts connections.
    pub fn start() -> Result<Self> {
        let bin = moto_server_bin()?;
        let dir = temp_dir("moto")?;
        let (port, child) = retry_if_port_taken(|| {
            let port = free_port();
            let mut command = Command::new(&bin);
            command
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .current_dir(dir.path());
            let mut child = ChildGuard::spawn("moto_server", command, dir.path().join("moto.log"))?;
            child.wait_until(
                &format!("moto_server to accept connections on port {port}"),
                STARTUP_TIMEOUT,
                || wait_for_tcp(("127.0.0.1", port), Duration::from_millis(200)).is_ok(),
            )?;
            Ok((port, child))
        })?;
        Ok(Self { port, child, dir })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port moto listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates bucket `name` (an unsigned `PUT /name`).
    pub fn create_bucket(&self, name: &str) -> Result<()> {
        let addr = format!("127.0.0.1:{}", self.port);
        let response = http_request(
            "PUT",
            &addr,
            &format!("/{name}"),
            &[],
            Duration::from_secs(30),
        )?;
        if response.status != 200 {
            bail!(
                "creating bucket {name} on moto failed with HTTP {}: {}",
                response.status,
                response.text()
            );
        }
        Ok(())
    }

    /// The process guard (log file, kill).
    pub fn process(&mut self) -> &mut ChildGuard {
        &mut self.child
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        maybe_keep(&mut self.dir, "moto");
    }
}
