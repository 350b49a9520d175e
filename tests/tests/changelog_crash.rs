//! Crash test of `LocalChangelog`: a child process appends from several tasks and reports every
//! acknowledged append; the test kills it with SIGKILL at random moments, then checks that every
//! acknowledged record is there, intact, exactly once and in order, that unacknowledged batches
//! are whole or absent, and that the next child continues the log.
//!
//! `UNITABLE_CRASH_ROUNDS` sets the number of rounds (default 20); `UNITABLE_CRASH_SEED` replays a
//! failing run (the seed is printed).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use unitable_core::changelog::{Changelog, LocalChangelog, LocalConfig, StoredRecord};
use unitable_core::naming::TopicName;
use unitable_core::offsets::{Offset, PartitionId};
use unitable_tests::crash::{PARTITIONS, TOPIC, value_for};

struct Ack {
    partition: u32,
    first: i64,
    last: i64,
    batch: String,
}

/// xorshift64*: a small deterministic generator, so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

/// Runs the child until a random moment after its first acknowledgement, kills it, and returns
/// the acknowledgements it printed in full.
fn run_child(root: &std::path::Path, round: u64, rng: &mut Rng) -> Result<Vec<Ack>> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_changelog-appender"))
        .arg(root)
        .arg(round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("spawning changelog-appender")?;
    let stdout = child.stdout.take().context("child stdout")?;
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        // Only newline-terminated lines were printed whole before the kill.
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            if line.ends_with('\n') {
                if lines.is_empty() {
                    let _ = first_tx.send(());
                }
                lines.push(line.trim_end().to_string());
            }
            line.clear();
        }
        lines
    });
    // Kill at a random moment: sometimes during start-up and recovery, mostly while appending.
    if rng.below(4) > 0 {
        first_rx
            .recv_timeout(Duration::from_secs(60))
            .context("the child acknowledged nothing within 60 s")?;
    }
    std::thread::sleep(Duration::from_millis(rng.below(300)));
    child.kill().context("SIGKILL")?;
    child.wait()?;
    let lines = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader thread panicked"))?;
    lines
        .iter()
        .map(|line| {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.as_slice() {
                ["ack", p, first, last, batch] => Ok(Ack {
                    partition: p.parse()?,
                    first: first.parse()?,
                    last: last.parse()?,
                    batch: (*batch).to_string(),
                }),
                _ => bail!("unexpected child output `{line}`"),
            }
        })
        .collect()
}

async fn read_partition(log: &LocalChangelog, p: u32) -> Result<Vec<StoredRecord>> {
    let topic = TopicName::new(TOPIC);
    let high = log.watermarks(&topic, PartitionId(p)).await?.high;
    let mut out = Vec::new();
    let mut next = Offset(0);
    while next < high {
        let got = log
            .read(&topic, PartitionId(p), next, 10_000, Duration::ZERO)
            .await?;
        let Some(last) = got.last() else {
            bail!("read at {next} below the high watermark {high} returned nothing");
        };
        next = last.offset.next();
        out.extend(got);
    }
    Ok(out)
}

fn header<'a>(r: &'a StoredRecord, name: &str) -> Option<&'a [u8]> {
    r.record
        .headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_ref())
}

/// Checks the whole log against every acknowledgement so far.
async fn verify(root: &std::path::Path, acks: &[Ack]) -> Result<usize> {
    let mut config = LocalConfig::new(root);
    config.segment_bytes = 64 * 1024;
    let log = LocalChangelog::open(config)
        .await
        .context("reopening after SIGKILL")?;
    if acks.is_empty() && log.partition_count(&TopicName::new(TOPIC)).await.is_err() {
        // Killed before the topic was created, and nothing was acknowledged: nothing to check.
        return Ok(0);
    }
    let mut total = 0;
    for p in 0..PARTITIONS {
        let records = read_partition(&log, p).await?;
        total += records.len();
        let mut keys = HashSet::new();
        let mut batches: HashMap<String, Vec<(i64, usize, usize)>> = HashMap::new();
        for (i, r) in records.iter().enumerate() {
            ensure!(
                r.offset.0 == i as i64,
                "partition {p}: offsets not dense at {i}"
            );
            let key = std::str::from_utf8(r.record.key.as_deref().unwrap_or_default())?;
            ensure!(
                keys.insert(key.to_string()),
                "partition {p}: `{key}` appears twice"
            );
            ensure!(
                r.record.value.as_deref() == Some(value_for(key).as_ref()),
                "partition {p}: `{key}` damaged"
            );
            let batch = std::str::from_utf8(header(r, "batch").unwrap_or_default())?.to_string();
            let size: usize =
                std::str::from_utf8(header(r, "size").unwrap_or_default())?.parse()?;
            let index: usize = key.rsplit('-').next().unwrap_or_default().parse()?;
            batches
                .entry(batch)
                .or_default()
                .push((r.offset.0, index, size));
        }
        for (batch, members) in &batches {
            let size = members[0].2;
            ensure!(
                members.len() == size,
                "partition {p}: batch {batch} is torn ({} of {size} records)",
                members.len()
            );
            for (j, (offset, index, _)) in members.iter().enumerate() {
                ensure!(
                    *index == j && *offset == members[0].0 + j as i64,
                    "partition {p}: batch {batch} out of order"
                );
            }
        }
        for ack in acks.iter().filter(|a| a.partition == p) {
            for (j, offset) in (ack.first..=ack.last).enumerate() {
                let r = records.get(offset as usize).with_context(|| {
                    format!(
                        "partition {p}: acknowledged offset {offset} of batch {} is missing",
                        ack.batch
                    )
                })?;
                let expected = format!("{}-{j}", ack.batch);
                ensure!(
                    r.record.key.as_deref() == Some(expected.as_bytes()),
                    "partition {p}: offset {offset} holds another record than acknowledged `{expected}`"
                );
            }
        }
    }
    Ok(total)
}

#[test]
fn acknowledged_appends_survive_sigkill() -> Result<()> {
    crash_rounds(env_u64("UNITABLE_CRASH_ROUNDS").unwrap_or(20))
}

#[test]
#[ignore = "slow: 200-round soak; scripts/test runs it, scripts/test --fast skips it"]
fn acknowledged_appends_survive_sigkill_soak() -> Result<()> {
    crash_rounds(200)
}

/// Rounds share one log in blocks of this many; each block starts a fresh log, so the soak's
/// cost grows linearly (every round re-reads the whole log of its block).
const ROUNDS_PER_LOG: u64 = 20;

fn crash_rounds(rounds: u64) -> Result<()> {
    let seed = env_u64("UNITABLE_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1
    });
    println!("crash test: {rounds} rounds, seed {seed} (UNITABLE_CRASH_SEED to replay)");
    let mut rng = Rng(seed);
    let runtime = tokio::runtime::Runtime::new()?;
    let started = Instant::now();
    let (mut appends, mut records) = (0usize, 0i64);
    let mut round = 0;
    while round < rounds {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("changelog");
        let mut acks = Vec::new();
        for _ in 0..ROUNDS_PER_LOG.min(rounds - round) {
            acks.extend(run_child(&root, round, &mut rng)?);
            let total = runtime
                .block_on(verify(&root, &acks))
                .with_context(|| format!("round {round} (seed {seed})"))?;
            let acked: usize = acks.iter().map(|a| (a.last - a.first + 1) as usize).sum();
            ensure!(
                total >= acked,
                "round {round}: fewer records than acknowledged"
            );
            round += 1;
        }
        appends += acks.len();
        records += acks.iter().map(|a| a.last - a.first + 1).sum::<i64>();
    }
    println!(
        "crash test: {rounds} rounds, {appends} acknowledged appends ({records} records) all intact, in {:?}",
        started.elapsed()
    );
    ensure!(appends > 0, "the child never acknowledged anything");
    Ok(())
}
