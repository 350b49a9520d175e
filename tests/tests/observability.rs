//! Observability against a running server: `/metrics` after a known workload has exact counts
//! (writes, rejections and dead letters, reads by mode, rows out, LOOKUP keys, STREAM decoding,
//! active streams, subscriber lag), and the Grafana dashboard and the Prometheus alert rules in
//! `deploy/` reference only metric names that server exports (their PromQL checked by
//! `promtool`). The runtime log filter override is in `log_level.rs`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use support::read::subscribe;
use support::{TABLE, kv_line, write_lines};
use unitable_proto::v1::read_service_client::ReadServiceClient;
use unitable_proto::v1::stream_start::Kind;
use unitable_proto::v1::write_service_client::WriteServiceClient;
use unitable_proto::v1::{StreamStart, WriteOp};
use unitable_tests::Service;
use unitable_tests::bench::create_kv_table_as;

/// One scrape of `/metrics`: series (name plus labels) -> value.
struct Scrape(Vec<(String, BTreeMap<String, String>, f64)>);

impl Scrape {
    fn of(service: &Service) -> Result<Self> {
        let body = String::from_utf8(service.http_get("/metrics")?.body)?;
        Ok(Self::parse(&body))
    }

    fn parse(body: &str) -> Self {
        let mut series = Vec::new();
        for line in body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let Some((head, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match head.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                None => (head, BTreeMap::new()),
            };
            series.push((name.to_string(), labels, value));
        }
        Self(series)
    }

    /// The names of every series.
    fn names(&self) -> BTreeSet<String> {
        self.0.iter().map(|(n, _, _)| n.clone()).collect()
    }

    /// The sum of the series `name` whose labels include every pair of `labels`; `None` when
    /// there is no such series.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .0
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    /// Like [`Scrape::get`], failing when the series is missing.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        self.get(name, labels)
            .with_context(|| format!("no series {name} with {labels:?} in /metrics"))
    }
}

/// `a="x",b="y"` -> map (values in this server's metrics hold no quotes or commas).
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    text.split("\",")
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.to_string(), v.trim_matches('"').to_string()))
        })
        .collect()
}

/// Polls `/metrics` until `ready` holds (a minute at most).
async fn scrape_until(
    service: &Service,
    what: &str,
    ready: impl Fn(&Scrape) -> bool,
) -> Result<Scrape> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let scrape = Scrape::of(service)?;
        if ready(&scrape) {
            return Ok(scrape);
        }
        if Instant::now() > deadline {
            bail!("/metrics never showed {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks that `name{labels}` is exactly `want`.
fn expect(scrape: &Scrape, name: &str, labels: &[(&str, &str)], want: f64) -> Result<()> {
    let got = scrape.value(name, labels)?;
    ensure!(got == want, "{name}{labels:?} = {got}, expected {want}");
    Ok(())
}

fn lines(ids: std::ops::Range<i64>, tag: &str) -> String {
    ids.map(|id| kv_line(id, &format!("{tag}{id}"), id))
        .collect()
}

/// A known workload, then exact counts: 5 rows and a bad one (dead-lettered), 2 more rows,
/// then one read of each mode, a STREAM of all 7 changes, and an open stream that follows 3
/// more.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_a_known_workload_exactly() -> Result<()> {
    let service = tokio::task::spawn_blocking(|| {
        Service::start(&[
            "--commit-interval",
            "100ms",
            "--compaction-interval",
            "200ms",
            "--consumer-group-session",
            "1s",
        ])
    })
    .await??;
    create_kv_table_as(
        &service,
        TABLE,
        4,
        &[("unitable.write.dead-letter", "true")],
        Vec::new(),
    )
    .await?;
    let table = ("table", TABLE);
    let mut writer = WriteServiceClient::connect(service.grpc_url()).await?;

    // Writes: 5 good rows and one that fails validation, then 2 more, waiting for a snapshot.
    let first = lines(0..5, "a") + "{\"id\":\"not a number\"}\n";
    let resp = write_lines(&mut writer, WriteOp::Upsert, &first, false).await?;
    ensure!(resp.errors.len() == 1, "{:?}", resp.errors);
    let resp = write_lines(&mut writer, WriteOp::Upsert, &lines(5..7, "b"), true).await?;
    ensure!(resp.errors.is_empty(), "{:?}", resp.errors);
    let s = Scrape::of(&service)?;
    expect(
        &s,
        "unitable_writer_rows_total",
        &[table, ("op", "upsert")],
        7.0,
    )?;
    expect(
        &s,
        "unitable_writer_rejected_rows_total",
        &[table, ("reason", "invalid")],
        1.0,
    )?;
    expect(
        &s,
        "unitable_writer_rejected_rows_total",
        &[table, ("reason", "changelog")],
        0.0,
    )?;
    expect(
        &s,
        "unitable_writer_dead_letter_rows_total",
        &[table, ("outcome", "sent")],
        1.0,
    )?;
    expect(
        &s,
        "unitable_writer_dead_letter_rows_total",
        &[table, ("outcome", "failed")],
        0.0,
    )?;
    expect(
        &s,
        "unitable_grpc_requests_total",
        &[("method", "Write")],
        2.0,
    )?;
    expect(&s, "unitable_committer_fenced_total", &[table], 0.0)?;
    expect(&s, "unitable_committer_panics_total", &[table], 0.0)?;
    ensure!(s.value("unitable_committer_last_commit_timestamp_seconds", &[table])? > 1.7e9);

    // One read of each bounded mode through the CLI.
    let cli = |args: &[&str]| service.cli(args)?.ok();
    cli(&["scan", TABLE])?;
    cli(&["scan", TABLE, "--mode", "fresh"])?;
    cli(&[
        "lookup",
        TABLE,
        "--key",
        "{\"id\":1}",
        "--key",
        "{\"id\":2}",
        "--key",
        "{\"id\":99}",
    ])?;
    cli(&["sql", &format!("SELECT count(*) FROM {TABLE}")])?;
    // A read of a table that does not exist fails with NOT_FOUND.
    let missing = service.cli(&["scan", "ops.nothing"])?;
    ensure!(missing.code() == Some(1), "{missing:?}");
    // A STREAM of every change so far, ending at its limit.
    let out = cli(&["subscribe", TABLE, "--from", "earliest", "--limit", "7"])?;
    ensure!(out.lines().count() == 7, "{out}");

    let mode = |m: &'static str| ("mode", m);
    let s = scrape_until(&service, "the ended STREAM inactive", |s| {
        s.get("unitable_read_active", &[table, ("mode", "STREAM")]) == Some(0.0)
    })
    .await?;
    for (m, rows) in [
        ("SNAPSHOT", 7.0),
        ("FRESH", 7.0),
        ("LOOKUP", 2.0),
        ("STREAM", 7.0),
    ] {
        expect(&s, "unitable_read_rows_total", &[table, mode(m)], rows)?;
        expect(
            &s,
            "unitable_read_open_seconds_count",
            &[table, mode(m)],
            1.0,
        )?;
        expect(&s, "unitable_read_active", &[table, mode(m)], 0.0)?;
        ensure!(s.value("unitable_read_bytes_total", &[table, mode(m)])? > 0.0);
    }
    expect(&s, "unitable_read_rows_total", &[table, mode("SQL")], 1.0)?;
    expect(
        &s,
        "unitable_grpc_errors_total",
        &[("code", "NotFound")],
        1.0,
    )?;
    // A read that failed before it opened adds no read series.
    ensure!(
        s.get("unitable_read_active", &[("table", "ops.nothing")])
            .is_none()
    );
    // The bounded modes' full latency; a STREAM has none.
    for m in ["SNAPSHOT", "FRESH", "LOOKUP", "SQL"] {
        expect(&s, "unitable_read_seconds_count", &[table, mode(m)], 1.0)?;
    }
    ensure!(
        s.get("unitable_read_seconds_count", &[mode("STREAM")])
            .is_none()
    );
    // LOOKUP: one request of three keys.
    expect(&s, "unitable_lookup_keys_count", &[table], 1.0)?;
    expect(&s, "unitable_lookup_keys_sum", &[table], 3.0)?;
    expect(
        &s,
        "unitable_lookup_keys_bucket",
        &[table, ("le", "2")],
        0.0,
    )?;
    expect(
        &s,
        "unitable_lookup_keys_bucket",
        &[table, ("le", "5")],
        1.0,
    )?;
    expect(&s, "unitable_lookup_seconds_count", &[table], 1.0)?;
    // STREAM: 7 records read and decoded, none skipped, by subscriber `anonymous`.
    let sub = ("subscriber", "anonymous");
    expect(&s, "unitable_stream_records_read_total", &[table, sub], 7.0)?;
    expect(
        &s,
        "unitable_stream_rows_delivered_total",
        &[table, sub],
        7.0,
    )?;
    let stream_path = ("path", "stream");
    expect(
        &s,
        "unitable_changelog_decoded_records_total",
        &[table, stream_path],
        7.0,
    )?;
    expect(
        &s,
        "unitable_changelog_decode_errors_total",
        &[table, stream_path],
        0.0,
    )?;
    ensure!(
        s.value(
            "unitable_changelog_decode_seconds_count",
            &[table, stream_path]
        )? >= 1.0
    );

    // An open stream: active while it follows, lag 0 once it has read everything, and 3 more
    // rows written while it follows arrive and are counted.
    let mut reader = ReadServiceClient::connect(service.grpc_url()).await?;
    let start = StreamStart {
        kind: Kind::Earliest as i32,
        ..StreamStart::default()
    };
    let mut changes = subscribe(&mut reader, start, "", 0).await?;
    let mut seen = 0;
    while seen < 7 {
        seen += changes.next_batch().await?.context("stream ended")?.len();
    }
    scrape_until(&service, "an open STREAM caught up", |s| {
        s.get("unitable_read_active", &[table, ("mode", "STREAM")]) == Some(1.0)
            && s.get("unitable_stream_lag_records", &[table, sub]) == Some(0.0)
    })
    .await?;
    let resp = write_lines(&mut writer, WriteOp::Upsert, &lines(7..10, "c"), false).await?;
    ensure!(resp.errors.is_empty(), "{:?}", resp.errors);
    while seen < 10 {
        seen += changes.next_batch().await?.context("stream ended")?.len();
    }
    ensure!(
        seen == 10,
        "the open stream delivered {seen} changes, expected 10"
    );
    let s = scrape_until(&service, "the followed rows counted", |s| {
        s.get("unitable_read_rows_total", &[table, ("mode", "STREAM")]) == Some(17.0)
    })
    .await?;
    expect(
        &s,
        "unitable_read_open_seconds_count",
        &[table, mode("STREAM")],
        2.0,
    )?;
    expect(
        &s,
        "unitable_stream_records_read_total",
        &[table, sub],
        17.0,
    )?;
    expect(
        &s,
        "unitable_writer_rows_total",
        &[table, ("op", "upsert")],
        10.0,
    )?;
    drop(changes);
    let s = scrape_until(&service, "the dropped STREAM inactive", |s| {
        s.get("unitable_read_active", &[table, ("mode", "STREAM")]) == Some(0.0)
    })
    .await?;
    expect(&s, "unitable_stream_lag_records", &[table, sub], 0.0)?;

    // A consumer group and the compactor's plans add their gauges; then every name the
    // dashboard and the alert rules use must be among the server's.
    cli(&[
        "subscribe",
        TABLE,
        "--from",
        "earliest",
        "--limit",
        "10",
        "--group",
        "billing",
        "--auto-commit",
    ])?;
    let live = scrape_until(&service, "consumer group and compaction gauges", |s| {
        s.get(
            "unitable_consumer_group_lag_records",
            &[table, ("group", "billing")],
        )
        .is_some()
            && s.get("unitable_compactor_backlog_small_files", &[table])
                .is_some()
    })
    .await?
    .names();
    check_deploy_files(&live)
}

/// Every metric the dashboard and the alert rules name is in `live`; the dashboard's queries
/// and the rules pass `promtool check rules`.
fn check_deploy_files(live: &BTreeSet<String>) -> Result<()> {
    let deploy = unitable_tests::workspace_root().join("deploy");
    let dashboard_path = deploy.join("grafana/unitable-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&dashboard_path)
            .with_context(|| format!("reading {}", dashboard_path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", dashboard_path.display()))?;
    let dashboard_exprs = dashboard_queries(&dashboard)?;
    ensure!(
        dashboard_exprs.len() >= 30,
        "only {} queries",
        dashboard_exprs.len()
    );
    let rules_path = deploy.join("prometheus/unitable-alerts.yml");
    let rules = std::fs::read_to_string(&rules_path)?;
    let rule_exprs = rule_expressions(&rules);
    ensure!(
        rule_exprs.len() == 13,
        "{} alert expressions",
        rule_exprs.len()
    );

    let mut unknown = BTreeSet::new();
    let mut used = BTreeSet::new();
    for (place, expr) in dashboard_exprs.iter().chain(&rule_exprs) {
        let names = metric_names(expr);
        ensure!(
            !names.is_empty(),
            "{place}: `{expr}` names no unitable metric"
        );
        for name in names {
            if !live.contains(&name) {
                unknown.insert(format!("{name} ({place})"));
            }
            used.insert(name);
        }
    }
    ensure!(
        unknown.is_empty(),
        "metrics the server does not export: {unknown:#?}"
    );
    ensure!(used.len() >= 35, "only {} metrics used", used.len());

    // The dashboard's PromQL, with Grafana's variables filled in, as recording rules.
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    // Template variables use Grafana's `label_values(...)`, not PromQL: only the panels' go.
    let panel_exprs = dashboard_exprs
        .iter()
        .filter(|(place, _)| place.starts_with("panel"));
    for (i, (_, expr)) in panel_exprs.enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$table", ".*")
            .replace("$instance", ".*");
        file.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr)?
        ));
    }
    let dir = tempfile::tempdir()?;
    let checked = dir.path().join("dashboard-queries.yml");
    std::fs::write(&checked, file)?;
    promtool(&["check", "rules"], &checked)?;
    promtool(&["check", "rules"], &rules_path)?;
    Ok(())
}

/// Runs `promtool ARGS FILE` (Debian's `prometheus` package; scripts/test installs it).
fn promtool(args: &[&str], file: &Path) -> Result<()> {
    let out = Command::new("promtool")
        .args(args)
        .arg(file)
        .output()
        .context("running promtool (install Debian's `prometheus` package; scripts/test does)")?;
    ensure!(
        out.status.success(),
        "promtool {args:?} {} failed:\n{}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Every PromQL query of the dashboard (panel targets and template variables), with where it
/// is.
fn dashboard_queries(dashboard: &serde_json::Value) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let panels = dashboard["panels"].as_array().context("no panels")?;
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("?");
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"]
            .as_array()
            .with_context(|| format!("panel `{title}` has no targets"))?;
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .with_context(|| format!("panel `{title}` has a target without expr"))?;
            out.push((format!("panel `{title}`"), expr.to_string()));
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .context("no templating")?
    {
        if let Some(query) = variable["query"]["query"].as_str() {
            out.push((
                format!("variable `{}`", variable["name"]),
                query.to_string(),
            ));
        }
    }
    Ok(out)
}

/// The `expr:` of every rule in a rules file (one line, or a block scalar's indented lines).
fn rule_expressions(yaml: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    let mut alert = String::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            alert = name.trim().to_string();
        }
        if let Some(rest) = trimmed.strip_prefix("expr:") {
            let rest = rest.trim();
            let indent = line.len() - trimmed.len();
            let expr = if rest.starts_with('|') || rest.starts_with('>') {
                let mut block = Vec::new();
                while i + 1 < lines.len() {
                    let next = lines[i + 1];
                    let next_indent = next.len() - next.trim_start().len();
                    if !next.trim().is_empty() && next_indent <= indent {
                        break;
                    }
                    block.push(next.trim());
                    i += 1;
                }
                block.join(" ")
            } else {
                rest.to_string()
            };
            out.push((format!("alert {alert}"), expr));
        }
        i += 1;
    }
    out
}

/// The `unitable_*` identifiers in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("unitable_") {
        let before_ok = rest[..at]
            .chars()
            .last()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'));
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        if before_ok {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

#[test]
fn rule_expressions_and_names_are_extracted() {
    let yaml = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: rate(unitable_a_total[5m]) > 0\n        for: 1m\n      - alert: B\n        expr: |\n          unitable_b > 0\n          and on (table) unitable_c_bucket\n        labels:\n          x: y\n";
    let exprs = rule_expressions(yaml);
    assert_eq!(
        exprs,
        vec![
            (
                "alert A".to_string(),
                "rate(unitable_a_total[5m]) > 0".to_string()
            ),
            (
                "alert B".to_string(),
                "unitable_b > 0 and on (table) unitable_c_bucket".to_string()
            ),
        ]
    );
    let names = metric_names("sum(rate(unitable_x_total{table=~\"$table\"}[1m])) / unitable_y");
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        vec!["unitable_x_total", "unitable_y"]
    );
    let scrape =
        Scrape::parse("# HELP x\nunitable_q{table=\"a.b\",mode=\"SQL\"} 3\nunitable_r 1.5\n");
    assert_eq!(scrape.get("unitable_q", &[("mode", "SQL")]), Some(3.0));
    assert_eq!(scrape.get("unitable_q", &[("mode", "FRESH")]), None);
    assert_eq!(scrape.get("unitable_r", &[]), Some(1.5));
}

/// A committer fenced by another claim on its table (here the test claims a higher committer
/// epoch in the catalog, as a node that took the lease over would) is counted once in
/// `unitable_committer_fenced_total`, the metric the `UnitableCommitterFenced` alert watches.
#[tokio::test(flavor = "multi_thread")]
async fn a_fenced_committer_is_counted() -> Result<()> {
    use std::sync::Arc;

    use unitable_core::catalog::{CatalogConfig, TableCatalog};
    use unitable_core::commit::pointer::SqlMetadataPointer;
    use unitable_core::commit::row_delta::Committer;
    use unitable_core::naming::{TableName, props};

    let service = tokio::task::spawn_blocking(|| {
        Service::start(&["--commit-interval", "100ms", "--compaction-interval", "0"])
    })
    .await??;
    create_kv_table_as(&service, TABLE, 2, &[], Vec::new()).await?;
    let table = ("table", TABLE);
    let mut writer = WriteServiceClient::connect(service.grpc_url()).await?;
    let resp = write_lines(&mut writer, WriteOp::Upsert, &lines(0..3, "a"), true).await?;
    ensure!(resp.errors.is_empty(), "{:?}", resp.errors);
    let s = Scrape::of(&service)?;
    expect(&s, "unitable_committer_fenced_total", &[table], 0.0)?;

    // Another owner claims the table under a higher epoch.
    let config = CatalogConfig::embedded(&service.data_dir());
    let catalog = TableCatalog::open(config.clone()).await?;
    let name: TableName = TABLE.parse()?;
    let current = catalog.load(&name).await?;
    let epoch: u64 = current
        .metadata()
        .properties()
        .get(props::COMMITTER_EPOCH)
        .context("no committer epoch")?
        .parse()?;
    let committer = Committer::new(
        catalog,
        Arc::new(SqlMetadataPointer::connect(&config).await?),
    );
    committer
        .commit_properties(
            &name,
            Some("observability-test-claim"),
            BTreeMap::from([
                (props::COMMITTER_EPOCH.to_string(), (epoch + 1).to_string()),
                (
                    props::COMMITTER_OWNER.to_string(),
                    "another-node/test".to_string(),
                ),
            ]),
            BTreeMap::new(),
        )
        .await?;
    let s = scrape_until(&service, "the fenced committer counted", |s| {
        s.get("unitable_committer_fenced_total", &[table]) == Some(1.0)
    })
    .await?;
    expect(&s, "unitable_committer_fenced_total", &[table], 1.0)?;
    ensure!(
        service.log().contains("committer stopped"),
        "{}",
        service.log()
    );
    Ok(())
}
