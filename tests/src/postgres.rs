//! A PostgreSQL server for catalog tests: `initdb` into a temporary directory, then `postgres`
//! on a free loopback port, killed when the guard drops.
//!
//! The binaries come from `PG_BINDIR`, else `pg_config --bindir`, else the newest
//! `/usr/lib/postgresql/*/bin` (Debian's `postgresql` package; `scripts/test` installs it when
//! missing). PostgreSQL refuses to run as root: when the tests run as root, the server runs as
//! the `postgres` user (created by the Debian package) through `setpriv`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::{
    ChildGuard, STARTUP_TIMEOUT, free_port, maybe_keep, retry_if_port_taken, temp_dir, wait_for_tcp,
};

/// A running PostgreSQL server with trust authentication for user `unitable`.
pub struct Postgres {
    port: u16,
    child: ChildGuard,
    dir: TempDir,
}

/// Where PostgreSQL's programs are.
pub fn postgres_bindir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BINDIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().context(
        "PostgreSQL is not installed (no PG_BINDIR, pg_config or /usr/lib/postgresql/*/bin); \
         scripts/test installs Debian's postgresql package",
    )
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program args...`, as the `postgres` user when we are root. `setpriv` execs the program
/// (no process in between), so killing the guard's child kills the server.
fn as_server_user(program: PathBuf, root: bool) -> Command {
    if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl Postgres {
    /// Initializes a fresh cluster and starts it; waits until it accepts connections.
    pub fn start() -> Result<Self> {
        let bin = postgres_bindir()?;
        let dir = temp_dir("postgres")?;
        let root = running_as_root();
        let data = dir.path().join("data");
        if root {
            // The server user must own its directory (and reach it).
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()?;
            if !status.success() {
                bail!("chown of {} to postgres failed", dir.path().display());
            }
            std::fs::set_permissions(
                dir.path(),
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )?;
        }
        let out = as_server_user(bin.join("initdb"), root)
            .args([
                "-A",
                "trust",
                "-U",
                "unitable",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output()
            .context("running initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let (port, child) = retry_if_port_taken(|| {
            let port = free_port();
            let mut command = as_server_user(bin.join("postgres"), root);
            command
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string()])
                .args(["-c", "listen_addresses=127.0.0.1"])
                .arg("-c")
                .arg(format!("unix_socket_directories={}", dir.path().display()))
                .args(["-c", "fsync=off", "-c", "max_connections=200"]);
            let mut child =
                ChildGuard::spawn("postgres", command, dir.path().join("postgres.log"))?;
            child.wait_until(
                &format!("postgres to accept connections on port {port}"),
                STARTUP_TIMEOUT,
                || wait_for_tcp(("127.0.0.1", port), Duration::from_millis(200)).is_ok(),
            )?;
            Ok((port, child))
        })?;
        Ok(Self { port, child, dir })
    }

    /// `postgres://unitable@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://unitable@127.0.0.1:{}/postgres", self.port)
    }

    /// The process guard.
    pub fn process(&mut self) -> &mut ChildGuard {
        &mut self.child
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        maybe_keep(&mut self.dir, "postgres");
    }
}
