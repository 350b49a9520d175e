//! Reading `/metrics`: one scrape as series, exact-value checks, polling.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use unitable_tests::Service;

/// One scrape of `/metrics`: series (name plus labels) -> value.
pub(crate) struct Scrape(Vec<(String, BTreeMap<String, String>, f64)>);

impl Scrape {
    pub(crate) fn of(service: &Service) -> Result<Self> {
        let body = String::from_utf8(service.http_get("/metrics")?.body)?;
        Ok(Self::parse(&body))
    }

    pub(crate) fn parse(body: &str) -> Self {
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
    pub(crate) fn names(&self) -> BTreeSet<String> {
        self.0.iter().map(|(n, _, _)| n.clone()).collect()
    }

    /// The sum of the series `name` whose labels include every pair of `labels`; `None` when
    /// there is no such series.
    pub(crate) fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
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
    pub(crate) fn value(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
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
pub(crate) async fn scrape_until(
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
pub(crate) fn expect(
    scrape: &Scrape,
    name: &str,
    labels: &[(&str, &str)],
    want: f64,
) -> Result<()> {
    let got = scrape.value(name, labels)?;
    ensure!(got == want, "{name}{labels:?} = {got}, expected {want}");
    Ok(())
}
