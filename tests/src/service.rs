//! [`Service`]: `unitable serve` in a temporary data directory, plus its command-line client.

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::http::{HttpResponse, http_request};
use crate::process::output_file;
use crate::{
    ChildGuard, STARTUP_TIMEOUT, free_port, maybe_keep, retry_if_port_taken, temp_dir, unitable_bin,
};

/// How long one client command may run before it is killed and the call fails.
const CLI_TIMEOUT: Duration = Duration::from_secs(120);

/// How long [`Service::stop`] waits for a graceful exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `unitable serve`, killed on drop.
///
/// It is started as `unitable serve --data-dir DIR/data --grpc-addr 127.0.0.1:P1 --http-addr
/// 127.0.0.1:P2 ARGS...` and counts as ready when `GET /healthz` on the HTTP address answers 200.
/// [`Service::restart`] reuses the data directory, the ports and the arguments.
pub struct Service {
    bin: PathBuf,
    grpc_port: u16,
    http_port: u16,
    cli_runs: AtomicU32,
    child: ChildGuard,
    dir: TempDir,
}

/// What a client command printed and how it exited.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// The exit status.
    pub status: ExitStatus,
    /// Standard output (lossy UTF-8).
    pub stdout: String,
    /// Standard error (lossy UTF-8).
    pub stderr: String,
}

impl CliOutput {
    /// The exit code (`None` if a signal ended the process).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// stdout if the command succeeded, otherwise an error carrying its status and stderr.
    pub fn ok(self) -> Result<String> {
        if self.status.success() {
            Ok(self.stdout)
        } else {
            bail!(
                "command failed with {}\nstderr:\n{}\nstdout:\n{}",
                self.status,
                self.stderr,
                self.stdout
            )
        }
    }
}

impl Service {
    /// Starts serve node `id` of a deployment on the Kafka cluster `brokers`, with `args` after
    /// the node's own flags; with `first`, on `first`'s catalog database and warehouse (so
    /// several nodes share tables, as in a scaled-out deployment).
    pub async fn start_node(
        brokers: &str,
        id: &str,
        first: Option<&Service>,
        args: &[&str],
    ) -> Result<Self> {
        let mut all: Vec<String> = ["--node-id", id, "--kafka-brokers", brokers]
            .iter()
            .chain(args)
            .map(ToString::to_string)
            .collect();
        if let Some(first) = first {
            let data = first.data_dir();
            all.extend([
                "--catalog".into(),
                format!("sqlite://{}/catalog.db", data.display()),
                "--warehouse".into(),
                format!("file://{}/warehouse", data.display()),
            ]);
        }
        tokio::task::spawn_blocking(move || {
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            Self::start(&all)
        })
        .await?
    }

    /// Starts `unitable serve` with `args` after the harness's own flags and waits until it is
    /// healthy.
    pub fn start(args: &[&str]) -> Result<Self> {
        Self::start_with_env(args, &[])
    }

    /// Like [`Service::start`], with extra environment variables for the server process.
    ///
    /// [`Service::start`] and this pass `--allow-anonymous` (calls without credentials have full
    /// access), as the suite predates authentication; [`Service::start_secure`] does not.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let mut all = vec!["--allow-anonymous"];
        all.extend_from_slice(args);
        Self::spawn(&all, env)
    }

    /// Starts `unitable serve` with authentication on (no `--allow-anonymous`): pass
    /// `--bootstrap-admin-token-file` or TLS flags in `args` as the test needs.
    pub fn start_secure(args: &[&str]) -> Result<Self> {
        Self::spawn(args, &[])
    }

    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let bin = unitable_bin()?;
        let dir = temp_dir("service")?;
        let data_dir = dir.path().join("data");
        fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let (grpc_port, http_port, child) = retry_if_port_taken(|| {
            let grpc_port = free_port();
            let mut http_port = free_port();
            while http_port == grpc_port {
                http_port = free_port();
            }
            let mut command = Command::new(&bin);
            command
                .arg("serve")
                .arg("--data-dir")
                .arg(&data_dir)
                .args(["--grpc-addr", &format!("127.0.0.1:{grpc_port}")])
                .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
                .args(args)
                .envs(env.iter().copied())
                .current_dir(dir.path());
            let mut child =
                ChildGuard::spawn("unitable serve", command, dir.path().join("serve.log"))?;
            wait_healthy(&mut child, http_port)?;
            Ok((grpc_port, http_port, child))
        })?;
        Ok(Self {
            bin,
            grpc_port,
            http_port,
            cli_runs: AtomicU32::new(0),
            child,
            dir,
        })
    }

    /// The temporary directory the service runs in (holds `data/`, logs, client outputs).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// `http://127.0.0.1:P1`, the gRPC endpoint.
    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// The gRPC listen address.
    pub fn grpc_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.grpc_port))
    }

    /// The HTTP listen address (health, metrics).
    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.http_port))
    }

    /// The directory passed as `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `GET http://HTTP_ADDR{path}`.
    pub fn http_get(&self, path: &str) -> Result<HttpResponse> {
        http_request(
            "GET",
            &self.http_addr().to_string(),
            path,
            &[],
            Duration::from_secs(10),
        )
    }

    /// Kills the server with SIGKILL (a crash). [`Service::restart`] brings it back.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()
    }

    /// Stops the server gracefully (SIGTERM) and returns its exit status; fails if it does not
    /// exit within 30 s.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.stop_within(STOP_TIMEOUT)
    }

    /// [`Service::stop`] that waits up to `timeout` (a final checkpoint of a large index takes
    /// longer than 30 s).
    pub fn stop_within(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.child.terminate(timeout)
    }

    /// Starts the server again with the same data directory, ports and arguments, killing it
    /// first (SIGKILL) if it is running, and waits until it is healthy.
    pub fn restart(&mut self) -> Result<()> {
        self.child.respawn()?;
        wait_healthy(&mut self.child, self.http_port)
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// The server's log so far (stdout and stderr of every start).
    pub fn log(&self) -> String {
        self.child.log()
    }

    /// The process guard.
    pub fn process(&mut self) -> &mut ChildGuard {
        &mut self.child
    }

    /// Runs `unitable --server GRPC_URL ARGS...` and returns what it printed. A non-zero exit
    /// is not an error here (tests check error cases); use [`CliOutput::ok`] to require success.
    /// Fails if the command cannot start or runs longer than two minutes.
    pub fn cli(&self, args: &[&str]) -> Result<CliOutput> {
        let run = self.cli_runs.fetch_add(1, Ordering::Relaxed) + 1;
        let cli_dir = self.dir.path().join("cli");
        fs::create_dir_all(&cli_dir).with_context(|| format!("creating {}", cli_dir.display()))?;
        let stdout_path = cli_dir.join(format!("{run}.stdout"));
        let stderr_path = cli_dir.join(format!("{run}.stderr"));
        let what = format!("`unitable --server {} {}`", self.grpc_url(), args.join(" "));
        let mut child = Command::new(&self.bin)
            .arg("--server")
            .arg(self.grpc_url())
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(output_file(&stdout_path)?)
            .stderr(output_file(&stderr_path)?)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let deadline = Instant::now() + CLI_TIMEOUT;
        let status = loop {
            if let Some(status) = child
                .try_wait()
                .with_context(|| format!("waiting for {what}"))?
            {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{what} did not finish within {CLI_TIMEOUT:?} and was killed");
            }
            thread::sleep(Duration::from_millis(20));
        };
        let read = |path: &PathBuf| -> Result<String> {
            let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        };
        Ok(CliOutput {
            status,
            stdout: read(&stdout_path)?,
            stderr: read(&stderr_path)?,
        })
    }
}

/// Waits until `GET /healthz` answers 200.
fn wait_healthy(child: &mut ChildGuard, http_port: u16) -> Result<()> {
    let addr = format!("127.0.0.1:{http_port}");
    child.wait_until(
        &format!("GET http://{addr}/healthz to answer 200"),
        STARTUP_TIMEOUT,
        || {
            http_request("GET", &addr, "/healthz", &[], Duration::from_secs(1))
                .is_ok_and(|response| response.status == 200)
        },
    )
}

impl Drop for Service {
    fn drop(&mut self) {
        maybe_keep(&mut self.dir, "service");
    }
}
