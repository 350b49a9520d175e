//! The files in `deploy/`: every metric the Grafana dashboard and the Prometheus alert rules
//! name must be one a live server exports, and their PromQL must pass `promtool check rules`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};

/// Every metric the dashboard and the alert rules name is in `live`; the dashboard's queries
/// and the rules pass `promtool check rules`.
pub(crate) fn check_deploy_files(live: &BTreeSet<String>) -> Result<()> {
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

/// Every metric in `live` (histograms by their base name) is named in docs/operations.md.
pub(crate) fn check_documented(live: &BTreeSet<String>) -> Result<()> {
    let path = unitable_tests::workspace_root().join("docs/operations.md");
    let doc = std::fs::read_to_string(&path)?;
    let undocumented: Vec<&String> = live
        .iter()
        .filter(|name| name.starts_with("unitable_"))
        .filter(|name| {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|base| live.contains(&format!("{base}_bucket")))
                .unwrap_or(name);
            !doc.contains(&format!("`{base}`"))
        })
        .collect();
    ensure!(
        undocumented.is_empty(),
        "metrics missing from docs/operations.md: {undocumented:#?}"
    );
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrape::Scrape;

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
}
