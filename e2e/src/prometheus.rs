//! Instant queries against the harness' real Prometheus HTTP API.

use std::collections::BTreeMap;

use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Deserialize;

/// One sample of an instant-vector result.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The series' labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

#[derive(Deserialize)]
struct Response {
    status: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    data: Option<Data>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<RawSample>,
}

#[derive(Deserialize)]
struct RawSample {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

/// Runs `promql` at the current time; the result must be an instant vector.
pub async fn query(base_url: &str, promql: &str) -> anyhow::Result<Vec<Sample>> {
    let url = format!("{base_url}/api/v1/query");
    let response: Response = reqwest::Client::new()
        .get(&url)
        .query(&[("query", promql)])
        .send()
        .await
        .with_context(|| format!("querying {url}"))?
        .json()
        .await
        .with_context(|| format!("decoding the answer of {url}"))?;
    if response.status != "success" {
        bail!(
            "Prometheus rejected {promql:?}: {}",
            response.error.unwrap_or_default()
        );
    }
    let data = response.data.context("Prometheus answered without data")?;
    if data.result_type != "vector" {
        bail!(
            "{promql:?} gave a {} result, not a vector",
            data.result_type
        );
    }
    data.result
        .into_iter()
        .map(|s| {
            let value = s
                .value
                .1
                .parse()
                .with_context(|| format!("sample value {:?}", s.value.1))?;
            Ok(Sample {
                labels: s.metric,
                value,
            })
        })
        .collect()
}

/// Waits until the samples of `promql` satisfy `accept` (which says what it
/// saw when they do not); returns them.
pub async fn await_samples(
    base_url: &str,
    promql: &str,
    what: &str,
    limit: Duration,
    every: Duration,
    accept: impl Fn(&[Sample]) -> Result<(), String>,
) -> anyhow::Result<Vec<Sample>> {
    crate::wait_for(&format!("{promql} {what}"), limit, every, || async {
        let samples = query(base_url, promql).await?;
        accept(&samples).map_err(anyhow::Error::msg)?;
        Ok(Some(samples))
    })
    .await
}

/// Waits until `promql` returns at least one sample; returns them.
pub async fn await_series(
    base_url: &str,
    promql: &str,
    every: Duration,
) -> anyhow::Result<Vec<Sample>> {
    await_samples(
        base_url,
        promql,
        "to have a sample",
        Duration::from_secs(90),
        every,
        |s| {
            if s.is_empty() {
                Err("no sample".into())
            } else {
                Ok(())
            }
        },
    )
    .await
}

/// Waits until the first sample of `promql` equals `want`.
pub async fn await_value(
    base_url: &str,
    promql: &str,
    want: f64,
    every: Duration,
) -> anyhow::Result<()> {
    await_samples(
        base_url,
        promql,
        &format!("to be {want}"),
        Duration::from_secs(60),
        every,
        |s| match s.first() {
            Some(first) if first.value == want => Ok(()),
            Some(first) => Err(format!("it is {}", first.value)),
            None => Err("no sample".into()),
        },
    )
    .await
    .map(drop)
}

/// Every expression of the dashboard, with Grafana's variables replaced as
/// Grafana would for "All" and a 1m step.
pub fn dashboard_queries() -> anyhow::Result<Vec<(String, String)>> {
    let dashboard: serde_json::Value = serde_json::from_slice(&std::fs::read(
        crate::repo_root()
            .join("charts/freshen")
            .join("files/dashboard.json"),
    )?)?;
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().context("panels")? {
        for target in panel["targets"].as_array().context("targets")? {
            let expr = target["expr"].as_str().context("expr")?;
            out.push((
                panel["title"].as_str().unwrap_or_default().to_owned(),
                expr.replace("$__rate_interval", "1m")
                    .replace("$namespace", ".*"),
            ));
        }
    }
    Ok(out)
}
