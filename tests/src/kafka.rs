//! [`Kafka`]: a real Apache Kafka cluster (KRaft, combined broker + controller nodes) on
//! loopback, from the install `scripts/test` puts in the cache (`scripts/kafka/install.sh`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::{ChildGuard, STARTUP_TIMEOUT, maybe_keep, temp_dir, workspace_root};

/// The line a node logs once it is unfenced and serves clients.
const READY_LINE: &str = "Kafka Server started";

/// A running Kafka cluster of one or more nodes, each a broker and a controller, in its own
/// temporary directory on free loopback ports. Killed on drop.
///
/// Nodes can be killed (SIGKILL) and restarted on the same ports and data, one at a time or
/// all together, so durability and fail-over tests can crash brokers for real.
pub struct Kafka {
    dir: TempDir,
    bootstrap: String,
    nodes: Vec<Node>,
}

struct Node {
    child: ChildGuard,
    server_log: PathBuf,
    port: u16,
    /// The size of `server.log` when the node was last started: readiness is looked for after.
    log_offset: u64,
}

/// The Kafka install (`KAFKA_HOME`, falling back to the cache that `scripts/test` fills).
pub fn kafka_home() -> Result<PathBuf> {
    let home = match std::env::var_os("KAFKA_HOME").filter(|h| !h.is_empty()) {
        Some(h) => PathBuf::from(h),
        None => crate::cache_dir()?.join("kafka-4.4.0"),
    };
    if home.join(".complete").is_file() {
        Ok(home)
    } else {
        bail!(
            "no Kafka install at {} (KAFKA_HOME); run scripts/test, which installs Apache Kafka there",
            home.display()
        )
    }
}

fn script(name: &str) -> PathBuf {
    workspace_root().join("scripts/kafka").join(name)
}

impl Kafka {
    /// Starts a one-node cluster and waits until it serves clients.
    pub fn start() -> Result<Self> {
        Self::cluster(1)
    }

    /// Starts an `n`-node cluster (all nodes in the controller quorum; new topics default to
    /// min(3, n) replicas) and waits until every node serves clients.
    pub fn cluster(n: usize) -> Result<Self> {
        let home = kafka_home()?;
        let dir = temp_dir("kafka")?;
        let out = Command::new("bash")
            .arg(script("start.sh"))
            .args(["--nodes", &n.to_string(), "--init-only"])
            .arg(dir.path())
            .env("KAFKA_HOME", &home)
            .output()
            .context("running scripts/kafka/start.sh")?;
        if !out.status.success() {
            bail!(
                "scripts/kafka/start.sh --init-only failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let env = std::fs::read_to_string(dir.path().join("cluster.env"))
            .context("reading the cluster's cluster.env")?;
        let bootstrap = env
            .lines()
            .find_map(|l| l.strip_prefix("KAFKA_BOOTSTRAP="))
            .context("cluster.env has no KAFKA_BOOTSTRAP")?
            .to_string();
        let ports: Vec<u16> = bootstrap
            .split(',')
            .map(|a| a.rsplit(':').next().unwrap_or_default().parse())
            .collect::<Result<_, _>>()
            .context("parsing KAFKA_BOOTSTRAP")?;
        let mut nodes = Vec::with_capacity(n);
        for (i, port) in ports.into_iter().enumerate() {
            let id = i + 1;
            let node_dir = dir.path().join(format!("node-{id}"));
            let mut command = Command::new("bash");
            command
                .arg(script("node.sh"))
                .args(["run", &dir.path().display().to_string(), &id.to_string()])
                .env("KAFKA_HOME", &home);
            let server_log = node_dir.join("logs/server.log");
            let log_offset = file_len(&server_log);
            let child = ChildGuard::spawn(
                &format!("kafka node {id}"),
                command,
                node_dir.join("logs/stdout.log"),
            )?;
            nodes.push(Node {
                child,
                server_log,
                port,
                log_offset,
            });
        }
        let mut cluster = Self {
            dir,
            bootstrap,
            nodes,
        };
        // All nodes run before any is waited for: a quorum elects a leader only with a majority.
        for i in 0..n {
            cluster.wait_ready(i)?;
        }
        Ok(cluster)
    }

    /// The bootstrap servers string for Kafka clients: every node, `127.0.0.1:PORT,...`.
    pub fn bootstrap(&self) -> String {
        self.bootstrap.clone()
    }

    /// The number of nodes.
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// The client port of node `i` (0-based; the node's broker id is `i + 1`).
    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// The directory of the cluster (node data and logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills node `i` with SIGKILL (a crash); its data stays for [`Kafka::restart`].
    pub fn kill(&mut self, i: usize) -> Result<()> {
        self.nodes[i].child.kill()
    }

    /// Kills every node (SIGKILL).
    pub fn kill_all(&mut self) -> Result<()> {
        for node in &mut self.nodes {
            node.child.kill()?;
        }
        Ok(())
    }

    /// Starts node `i` again on its ports and data (killing it first if it runs) and waits
    /// until it serves clients.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.respawn(i)?;
        self.wait_ready(i)
    }

    /// Starts every node again (after [`Kafka::kill_all`]) and waits for all of them.
    pub fn restart_all(&mut self) -> Result<()> {
        for i in 0..self.nodes.len() {
            self.respawn(i)?;
        }
        for i in 0..self.nodes.len() {
            self.wait_ready(i)?;
        }
        Ok(())
    }

    /// Whether node `i`'s process is running.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.nodes[i].child.is_running()
    }

    fn respawn(&mut self, i: usize) -> Result<()> {
        let node = &mut self.nodes[i];
        node.log_offset = file_len(&node.server_log);
        node.child.respawn()
    }

    fn wait_ready(&mut self, i: usize) -> Result<()> {
        let node = &mut self.nodes[i];
        let (log, offset) = (node.server_log.clone(), node.log_offset);
        node.child.wait_until(
            &format!("kafka node {} to log `{READY_LINE}`", i + 1),
            STARTUP_TIMEOUT * 2,
            || logged_since(&log, offset, READY_LINE),
        )
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Whether `needle` appears in `path` after byte `offset`.
fn logged_since(path: &Path, offset: u64, needle: &str) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    let from = (offset as usize).min(bytes.len());
    String::from_utf8_lossy(&bytes[from..]).contains(needle)
}

impl Drop for Kafka {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.child.kill();
        }
        maybe_keep(&mut self.dir, "kafka");
    }
}
