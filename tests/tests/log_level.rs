//! The runtime log filter override (`unitable admin log-level`) against a running server with
//! authentication on: only `admin ON ALL` may change it; the server's log really turns to
//! DEBUG while an override is in force and back to the start-up filter when it expires; a
//! later override is not undone by an earlier one's expiry; `--reset` restores at once; every
//! change and denial is in the audit log.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use unitable_tests::{CliOutput, Service};

/// Polls the server log until `ready` holds for it (two minutes at most).
async fn log_until(service: &Service, what: &str, ready: impl Fn(&str) -> bool) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let log = service.log();
        if ready(&log) {
            return Ok(log);
        }
        if Instant::now() > deadline {
            bail!("the server log never showed {what}; it holds:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Lines of the server log at level DEBUG.
fn debug_lines(log: &str) -> usize {
    log.lines().filter(|l| l.contains(" DEBUG ")).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn log_level_override_changes_the_log_then_reverts() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let token_file = tmp.path().join("admin.token");
    let audit = tmp.path().join("audit.log");
    let args = [
        "--bootstrap-admin-token-file".to_string(),
        token_file.display().to_string(),
        "--audit-log".to_string(),
        audit.display().to_string(),
    ];
    let service = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Service::start_secure(&args)
    })
    .await??;
    let admin_token = std::fs::read_to_string(&token_file)?.trim().to_string();
    let cli_as = |token: &str, args: &[&str]| -> Result<CliOutput> {
        let mut all = vec!["--token", token];
        all.extend_from_slice(args);
        service.cli(&all)
    };
    let admin = |args: &[&str]| cli_as(&admin_token, args);

    // The start-up filter is `info`: no DEBUG lines.
    let shown = admin(&["admin", "log-level"])?.ok()?;
    ensure!(
        shown == "log filter: info\n(the start-up filter)\n",
        "{shown}"
    );
    ensure!(debug_lines(&service.log()) == 0, "{}", service.log());

    // A user without admin ON ALL is refused, and the refusal is audited.
    let gus_token = admin(&["token", "create", "gus"])?.ok()?.trim().to_string();
    let denied = cli_as(&gus_token, &["admin", "log-level", "debug", "--for", "1m"])?;
    ensure!(denied.code() == Some(1), "{denied:?}");
    ensure!(
        denied.stderr.contains("permission denied") && denied.stderr.contains("admin ON ALL"),
        "{}",
        denied.stderr
    );
    let denied = cli_as(&gus_token, &["admin", "log-level"])?;
    ensure!(denied.code() == Some(1), "{denied:?}");
    // Bad directives and durations are refused with what is wrong.
    let bad = admin(&["admin", "log-level", "debug=x=y", "--for", "1m"])?;
    ensure!(
        bad.code() == Some(1) && bad.stderr.contains("is not a log filter"),
        "{bad:?}"
    );
    let bad = admin(&["admin", "log-level", "debug", "--for", "25h"])?;
    ensure!(
        bad.code() == Some(1) && bad.stderr.contains("from 1s to 24h"),
        "{bad:?}"
    );
    ensure!(debug_lines(&service.log()) == 0, "{}", service.log());

    // DEBUG for 3 seconds: the log turns to DEBUG (the lease rounds log their SQL at debug),
    // then the override expires and the start-up filter is back.
    let set = admin(&[
        "admin",
        "log-level",
        "debug",
        "--for",
        "3s",
        "--format",
        "json",
    ])?
    .ok()?;
    let set: serde_json::Value = serde_json::from_str(&set)?;
    ensure!(set["directives"] == "debug", "{set}");
    ensure!(set["startup_directives"] == "info", "{set}");
    ensure!(set["expires_at_ms"].as_i64().is_some(), "{set}");
    log_until(&service, "DEBUG lines", |log| debug_lines(log) > 0).await?;
    let log = log_until(&service, "the override expiring", |log| {
        log.contains("log filter override expired")
    })
    .await?;
    let expired_at = log
        .find("log filter override expired")
        .context("expiry line")?;
    let shown = admin(&["admin", "log-level"])?.ok()?;
    ensure!(
        shown == "log filter: info\n(the start-up filter)\n",
        "{shown}"
    );
    // Work that logs at DEBUG when DEBUG is on (catalog SQL, a committer starting), then its
    // INFO line: nothing at DEBUG since the expiry.
    admin(&[
        "table",
        "create",
        "ops.after",
        "--column",
        "id:int64!",
        "--primary-key",
        "id",
    ])?
    .ok()?;
    let log = log_until(&service, "the new table's committer starting", |log| {
        log[expired_at..]
            .lines()
            .any(|l| l.contains("committer started") && l.contains("ops.after"))
    })
    .await?;
    let after = &log[expired_at..];
    ensure!(
        debug_lines(after) == 0,
        "DEBUG lines after the override expired:\n{after}"
    );

    // A later override replaces an earlier one and its expiry: once the first one's 2 s are
    // over, the second is still in force. A reset restores the start-up filter at once.
    admin(&["admin", "log-level", "debug", "--for", "2s"])?.ok()?;
    let second = admin(&[
        "admin",
        "log-level",
        "warn,unitable_writer=debug",
        "--for",
        "1h",
    ])?
    .ok()?;
    ensure!(
        second.starts_with("log filter: warn,unitable_writer=debug\nuntil "),
        "{second}"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let shown = admin(&["admin", "log-level", "--format", "json"])?.ok()?;
    let shown: serde_json::Value = serde_json::from_str(&shown)?;
    ensure!(
        shown["directives"] == "warn,unitable_writer=debug",
        "{shown}"
    );
    let reset = admin(&["admin", "log-level", "--reset"])?.ok()?;
    ensure!(
        reset == "log filter: info\n(the start-up filter)\n",
        "{reset}"
    );

    // The audit log has every change and both refusals.
    let audit = std::fs::read_to_string(&audit)?;
    let entries: Vec<serde_json::Value> = audit
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let of = |action: &str| {
        entries
            .iter()
            .filter(|e| e["action"] == action)
            .map(|e| {
                format!(
                    "{} {} {}",
                    e["principal"].as_str().unwrap_or("?"),
                    e["outcome"].as_str().unwrap_or("?"),
                    e["detail"].as_str().unwrap_or("-")
                )
            })
            .collect::<Vec<_>>()
    };
    ensure!(
        of("SetLogLevel")
            == [
                "gus denied -",
                "admin failed `debug=x=y` is not a log filter (error parsing level filter: \
                 expected one of \"off\", \"error\", \"warn\", \"info\", \"debug\", \
                 \"trace\", or a number 0-5); write e.g. `info,unitable_writer=debug`",
                "admin failed the override must last from 1s to 24h, not 90000000 ms",
                "admin ok directives `debug` for 3000 ms",
                "admin ok directives `debug` for 2000 ms",
                "admin ok directives `warn,unitable_writer=debug` for 3600000 ms",
                "admin ok reset to the start-up filter",
            ],
        "{:#?}",
        of("SetLogLevel")
    );
    ensure!(
        of("GetLogLevel") == ["gus denied -"],
        "{:#?}",
        of("GetLogLevel")
    );
    Ok(())
}
