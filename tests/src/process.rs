//! [`ChildGuard`]: a child process whose output goes to a log file and which dies with its guard.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Lines of log shown when a process fails to start or a test panics.
const TAIL_LINES: usize = 40;

/// A child process that is killed (SIGKILL) and reaped when the guard drops.
///
/// stdout and stderr are appended to one log file; each start writes a header line, so the
/// log of a restarted process reads in order. The command is kept, so [`ChildGuard::respawn`]
/// can start the same process again (same arguments, same environment) after a kill.
pub struct ChildGuard {
    name: String,
    command: Command,
    log_path: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl ChildGuard {
    /// Starts `command` with stdin closed and stdout/stderr appended to `log_path`.
    ///
    /// `name` identifies the process in errors and log headers. An existing file at `log_path`
    /// is truncated; later [`ChildGuard::respawn`]s append to it.
    pub fn spawn(name: &str, command: Command, log_path: impl Into<PathBuf>) -> Result<Self> {
        let log_path = log_path.into();
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut guard = Self {
            name: name.to_owned(),
            command,
            log_path,
            child: None,
            starts: 0,
        };
        guard.respawn()?;
        Ok(guard)
    }

    /// Starts the command again. Kills the running process first, if there is one.
    pub fn respawn(&mut self) -> Result<()> {
        self.kill()?;
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {} for {}", self.log_path.display(), self.name))?;
        writeln!(
            log,
            "=== {} start #{}: {:?} ===",
            self.name, self.starts, self.command
        )
        .with_context(|| format!("writing to {}", self.log_path.display()))?;
        let stderr = log
            .try_clone()
            .with_context(|| format!("duplicating the handle of {}", self.log_path.display()))?;
        let child = self
            .command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}: {:?}", self.name, self.command))?;
        self.child = Some(child);
        Ok(())
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The log file that receives stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log so far (lossy UTF-8; empty if it cannot be read).
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The OS process id, while a process is running or not yet reaped.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_)) | Err(_)) | None => false,
        }
    }

    /// Polls `ready` every 50 ms until it returns true. Fails, with the log's tail in the error,
    /// when the process exits first or `timeout` passes. `what` says what is awaited.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready() {
                return Ok(());
            }
            let Some(child) = self.child.as_mut() else {
                bail!("{} is not running (waiting for {what})", self.name);
            };
            if let Some(status) = child
                .try_wait()
                .with_context(|| format!("checking whether {} is alive", self.name))?
            {
                self.child = None;
                bail!(
                    "{} exited with {status} before {what}; last lines of {}:\n{}",
                    self.name,
                    self.log_path.display(),
                    self.log_tail(TAIL_LINES)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what} ({}); last lines of {}:\n{}",
                    self.name,
                    self.log_path.display(),
                    self.log_tail(TAIL_LINES)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the process with SIGKILL and reaps it. Does nothing if it is not running.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            if child
                .try_wait()
                .with_context(|| format!("checking whether {} is alive", self.name))?
                .is_none()
            {
                // Fails only if the process exited in the meantime; `wait` reaps it either way.
                let _ = child.kill();
            }
            child
                .wait()
                .with_context(|| format!("waiting for {} to exit", self.name))?;
        }
        Ok(())
    }

    /// Asks the process to stop with SIGTERM and waits up to `timeout` for it to exit. Kills it
    /// and fails if it does not exit in time; returns its exit status otherwise.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("{} is not running", self.name);
        };
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .context("running `kill -TERM`")?;
        if !sent.success() {
            self.child = Some(child);
            bail!("`kill -TERM` for {} failed with {sent}", self.name);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child
                .try_wait()
                .with_context(|| format!("waiting for {} to exit", self.name))?
            {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} did not exit within {timeout:?} of SIGTERM and was killed; last lines of {}:\n{}",
                    self.name,
                    self.log_path.display(),
                    self.log_tail(TAIL_LINES)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- last lines of {} ({}) ---\n{}\n--- end of {} log ---",
                self.name,
                self.log_path.display(),
                self.log_tail(TAIL_LINES),
                self.name
            );
        }
        if let Err(err) = self.kill() {
            eprintln!("could not kill {}: {err:#}", self.name);
        }
    }
}

/// Creates (truncating) a file for a command's captured output.
pub(crate) fn output_file(path: &Path) -> Result<File> {
    File::create(path).with_context(|| format!("creating {}", path.display()))
}
