//! The canary analysis's Prometheus queries, over the HTTP API
//! (`GET /api/v1/query`).

use std::time::Duration;

use freshen_core::rollout::MetricReading;
use serde::Deserialize;

/// Asks one Prometheus server instant queries.
#[derive(Debug, Clone)]
pub struct PrometheusClient {
    base: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    data: Option<Data>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    result_type: String,
    result: serde_json::Value,
}

impl PrometheusClient {
    /// A client of the server at `base` (e.g. `http://prometheus:9090`).
    pub fn new(base: &str, timeout: Duration) -> Result<Self, reqwest::Error> {
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder().timeout(timeout).build()?,
        })
    }

    /// Runs an instant query: the first sample's value, no data, or why it
    /// failed.
    pub async fn query(&self, query: &str) -> MetricReading {
        let response = self
            .http
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", query)])
            .send()
            .await;
        let body = match response {
            Ok(r) => match capped_body(r, MAX_ANSWER_BYTES).await {
                Ok(body) => body,
                Err(e) => return MetricReading::Error(e),
            },
            Err(e) => return MetricReading::Error(format!("request failed: {e}")),
        };
        read_answer(&body)
    }
}

/// What a Prometheus query answer (`/api/v1/query`'s body) says: the first
/// sample's value, no data, or why it cannot be read. Any bytes give one of
/// the three.
pub fn read_answer(body: &[u8]) -> MetricReading {
    let answer: Answer = match serde_json::from_slice(body) {
        Ok(a) => a,
        Err(e) => return MetricReading::Error(format!("unreadable answer: {e}")),
    };
    if answer.status != "success" {
        let why = answer.error.unwrap_or(answer.status);
        return MetricReading::Error(why.chars().take(256).collect());
    }
    match answer.data {
        Some(data) => reading(&data.result_type, &data.result),
        None => MetricReading::Error("answer without data".into()),
    }
}

/// The largest answer read: a canary check needs one number, and a query
/// that returns every series of a large Prometheus must not fill the
/// operator's memory.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// The body of `response`, read chunk by chunk and refused as soon as it
/// grows past `limit` bytes (whatever Content-Length says).
async fn capped_body(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(format!("answer larger than {limit} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading the answer failed: {e}"))?
    {
        if body.len() + chunk.len() > limit {
            return Err(format!("answer larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The first sample of a query result: vectors take their first element's
/// value, scalars their value.
fn reading(result_type: &str, result: &serde_json::Value) -> MetricReading {
    let value = match result_type {
        "vector" => match result.as_array().and_then(|v| v.first()) {
            None => return MetricReading::NoData,
            Some(sample) => sample.get("value").and_then(|v| v.get(1)),
        },
        "scalar" => result.get(1),
        other => {
            let other: String = other.chars().take(32).collect();
            return MetricReading::Error(format!(
                "a {other} result; the query must return an instant vector or a scalar"
            ));
        }
    };
    match value.and_then(|v| v.as_str()).map(str::parse::<f64>) {
        Some(Ok(v)) => MetricReading::Value(v),
        _ => MetricReading::Error("a sample without a numeric value".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn any_answer_reads_as_a_value_no_data_or_an_error() {
        let ok = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"2"]}]}}"#;
        assert_eq!(read_answer(ok), MetricReading::Value(2.0));
        assert!(
            matches!(read_answer(b"<html>"), MetricReading::Error(e) if e.contains("unreadable"))
        );
        let failed = format!(r#"{{"status":"error","error":"{}"}}"#, "x".repeat(5000));
        assert!(
            matches!(read_answer(failed.as_bytes()), MetricReading::Error(e) if e.len() == 256),
            "a Prometheus error is bounded"
        );
        assert!(matches!(
            read_answer(br#"{"status":"success"}"#),
            MetricReading::Error(e) if e.contains("without data")
        ));
    }

    #[test]
    fn results_read_as_the_first_sample() {
        let vector = json!([{"metric": {}, "value": [1.7e9, "0.25"]}, {"value": [1.7e9, "9"]}]);
        assert_eq!(reading("vector", &vector), MetricReading::Value(0.25));
        assert_eq!(reading("vector", &json!([])), MetricReading::NoData);
        assert_eq!(
            reading("scalar", &json!([1.7e9, "3"])),
            MetricReading::Value(3.0)
        );
        assert!(
            matches!(reading("scalar", &json!([1.7e9, "NaN"])), MetricReading::Value(v) if v.is_nan())
        );
        assert!(
            matches!(reading("matrix", &json!([])), MetricReading::Error(e) if e.contains("matrix"))
        );
        assert!(
            matches!(reading("string", &json!([1.7e9, "x"])), MetricReading::Error(e) if e.contains("string"))
        );
        assert!(
            matches!(reading("vector", &json!([{"value": [1, "+Inf"]}])), MetricReading::Value(v) if v.is_infinite())
        );
        assert!(matches!(
            reading("vector", &json!([{"value": [1, "x"]}])),
            MetricReading::Error(_)
        ));
    }
}
