//! MLflow's tracking REST API 2.0 (the calls `mnemo log mlflow` makes) and how a JSON Lines
//! record becomes MLflow metrics.
//!
//! Calls: `experiments/get-by-name` (then `experiments/create` when it is missing),
//! `runs/create`, `runs/log-batch` (at most [`MAX_BATCH`] metrics each), `runs/set-tag`,
//! `runs/update` (status and end time). Plain http only; a bearer token is sent when
//! `MLFLOW_TRACKING_TOKEN` is set, as MLflow's own client does.

use crate::error::{MnemoError, Result};
use serde_json::{json, Map, Value};
use std::time::Duration;

/// MLflow's limit of metrics in one `runs/log-batch` request.
pub const MAX_BATCH: usize = 1000;

/// One metric value: MLflow's `Metric` message.
#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    pub key: String,
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    pub step: i64,
}

/// How a run ended (MLflow's `RunStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunStatus {
    Finished,
    Failed,
    Killed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Finished => "FINISHED",
            RunStatus::Failed => "FAILED",
            RunStatus::Killed => "KILLED",
        }
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A tracking server at one URI.
pub struct Client {
    uri: String,
    agent: ureq::Agent,
    token: Option<String>,
}

impl Client {
    /// `uri` is the server's root (`http://127.0.0.1:5000`, optionally with a path prefix);
    /// each request may take at most `timeout`.
    pub fn new(uri: &str, timeout: Duration) -> Result<Client> {
        let uri = uri.trim_end_matches('/').to_string();
        if uri.starts_with("https://") {
            return Err(MnemoError::Mlflow {
                uri,
                reason: "https is not supported by this build (plain http only); put a local \
                         proxy in front, or use an http:// address"
                    .into(),
            });
        }
        if !uri.starts_with("http://") {
            return Err(MnemoError::Mlflow {
                uri,
                reason: "expected an http:// address (e.g. http://127.0.0.1:5000)".into(),
            });
        }
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .user_agent(concat!("mnemo/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Client {
            uri,
            agent: ureq::Agent::new_with_config(config),
            token: std::env::var("MLFLOW_TRACKING_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
        })
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    fn err(&self, reason: String) -> MnemoError {
        MnemoError::Mlflow {
            uri: self.uri.clone(),
            reason,
        }
    }

    /// One call: (HTTP status, the answer as JSON; `{}` when it is empty).
    fn call(
        &self,
        endpoint: &str,
        query: Option<(&str, &str)>,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        let url = format!("{}/api/2.0/mlflow/{endpoint}", self.uri);
        let method = if body.is_some() { "POST" } else { "GET" };
        let what = format!("{method} /api/2.0/mlflow/{endpoint}");
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let result = match body {
            Some(b) => {
                let mut req = self
                    .agent
                    .post(&url)
                    .header("Content-Type", "application/json");
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.send(b.to_string())
            }
            None => {
                let mut req = self.agent.get(&url);
                if let Some((k, v)) = query {
                    req = req.query(k, v);
                }
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.call()
            }
        };
        let resp = result.map_err(|e| self.err(format!("{what}: {e}")))?;
        let status = resp.status().as_u16();
        let text = resp
            .into_body()
            .read_to_string()
            .map_err(|e| self.err(format!("{what}: reading the answer: {e}")))?;
        let value = if text.trim().is_empty() {
            json!({})
        } else {
            match serde_json::from_str(&text) {
                Ok(v) => v,
                Err(_) if status >= 400 => json!({ "message": text }),
                Err(e) => {
                    return Err(self.err(format!(
                        "{what}: HTTP {status} with an answer that is not JSON ({e}): {}",
                        clip(&text)
                    )))
                }
            }
        };
        Ok((status, value))
    }

    /// A call that must succeed (HTTP 2xx); an error names the call, the status and the body.
    fn ok(&self, endpoint: &str, body: &Value) -> Result<Value> {
        let (status, v) = self.call(endpoint, None, Some(body))?;
        if (200..300).contains(&status) {
            Ok(v)
        } else {
            Err(self.http_err(&format!("POST /api/2.0/mlflow/{endpoint}"), status, &v))
        }
    }

    fn http_err(&self, what: &str, status: u16, body: &Value) -> MnemoError {
        self.err(format!(
            "{what}: HTTP {status}: {}",
            clip(&body.to_string())
        ))
    }

    /// The id of the experiment called `name`, created when it does not exist.
    pub fn experiment_id(&self, name: &str) -> Result<String> {
        let what = "GET /api/2.0/mlflow/experiments/get-by-name";
        for _ in 0..2 {
            let (status, v) = self.call(
                "experiments/get-by-name",
                Some(("experiment_name", name)),
                None,
            )?;
            if (200..300).contains(&status) {
                return v["experiment"]["experiment_id"]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| self.err(format!("{what}: no experiment_id in {v}")));
            }
            if status != 404 && v["error_code"] != "RESOURCE_DOES_NOT_EXIST" {
                return Err(self.http_err(what, status, &v));
            }
            let (status, v) =
                self.call("experiments/create", None, Some(&json!({ "name": name })))?;
            if (200..300).contains(&status) {
                return v["experiment_id"]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| {
                        self.err(format!(
                            "POST /api/2.0/mlflow/experiments/create: no experiment_id in {v}"
                        ))
                    });
            }
            // Created by someone else in between: look it up again.
            if v["error_code"] != "RESOURCE_ALREADY_EXISTS" {
                return Err(self.http_err("POST /api/2.0/mlflow/experiments/create", status, &v));
            }
        }
        Err(self.err(format!(
            "experiment '{name}' could be neither found nor created"
        )))
    }

    /// Starts a run; its id.
    pub fn create_run(
        &self,
        experiment_id: &str,
        run_name: Option<&str>,
        start_time: i64,
        tags: &[(String, String)],
    ) -> Result<String> {
        let mut body = json!({
            "experiment_id": experiment_id,
            "start_time": start_time,
            "tags": tags.iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>(),
        });
        if let Some(n) = run_name {
            body["run_name"] = json!(n);
        }
        let v = self.ok("runs/create", &body)?;
        v["run"]["info"]["run_id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| {
                self.err(format!(
                    "POST /api/2.0/mlflow/runs/create: no run_id in {v}"
                ))
            })
    }

    /// Logs metrics, [`MAX_BATCH`] per request.
    pub fn log_batch(&self, run_id: &str, metrics: &[Metric]) -> Result<()> {
        for chunk in metrics.chunks(MAX_BATCH) {
            let ms: Vec<Value> = chunk
                .iter()
                .map(|m| json!({"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step}))
                .collect();
            self.ok("runs/log-batch", &json!({"run_id": run_id, "metrics": ms}))?;
        }
        Ok(())
    }

    pub fn set_tag(&self, run_id: &str, key: &str, value: &str) -> Result<()> {
        self.ok(
            "runs/set-tag",
            &json!({"run_id": run_id, "key": key, "value": value}),
        )?;
        Ok(())
    }

    /// Ends a run with its status.
    pub fn end_run(&self, run_id: &str, status: RunStatus, end_time: i64) -> Result<()> {
        self.ok(
            "runs/update",
            &json!({"run_id": run_id, "status": status.as_str(), "end_time": end_time}),
        )?;
        Ok(())
    }
}

/// At most 500 characters of a server's answer, for messages.
fn clip(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(500) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// The step of a record: its `step`, else `epoch`, else `batch` (the first that is a
/// whole number ≥ 0), else `line`.
pub fn step_of(rec: &Map<String, Value>, line: u64) -> i64 {
    for k in ["step", "epoch", "batch"] {
        if let Some(x) = rec.get(k).and_then(Value::as_f64) {
            if x >= 0.0 && x.fract() == 0.0 && x < 9.0e18 {
                return x as i64;
            }
        }
    }
    line as i64
}

/// A metric name MLflow accepts: letters, digits, `_ - . / :` and spaces; anything else
/// becomes `_`; at most 250 characters.
pub fn metric_key(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_-./: ".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(250)
        .collect()
}

/// Every number in a record as a metric at its step: nested objects are flattened with
/// dots (`buffer.size`); strings, booleans, nulls and arrays are not metrics. A record
/// with a string `event` (mnemo's training streams) gets it as a prefix, `epoch/task_loss`,
/// so per-update, per-epoch and summary values are separate series.
pub fn record_metrics(rec: &Map<String, Value>, line: u64, timestamp: i64) -> Vec<Metric> {
    let step = step_of(rec, line);
    let prefix = match rec.get("event") {
        Some(Value::String(e)) => format!("{e}/"),
        _ => String::new(),
    };
    let mut out = Vec::new();
    flatten(&prefix, rec, &mut |key, value| {
        out.push(Metric {
            key: metric_key(&key),
            value,
            timestamp,
            step,
        })
    });
    out
}

fn flatten(prefix: &str, rec: &Map<String, Value>, f: &mut dyn FnMut(String, f64)) {
    for (k, v) in rec {
        match v {
            Value::Number(n) => {
                if let Some(x) = n.as_f64().filter(|x| x.is_finite()) {
                    f(format!("{prefix}{k}"), x);
                }
            }
            Value::Object(o) => flatten(&format!("{prefix}{k}."), o, f),
            _ => {}
        }
    }
}

/// The tags a summary record gives a run: each top-level string field as `mnemo.<field>`
/// (`mnemo.command`, `mnemo.output`, ...). Other records give none.
pub fn summary_tags(rec: &Map<String, Value>) -> Vec<(String, String)> {
    if rec.get("event").and_then(Value::as_str) != Some("summary") {
        return Vec::new();
    }
    rec.iter()
        .filter(|(k, _)| k.as_str() != "event")
        .filter_map(|(k, v)| {
            v.as_str()
                .map(|s| (format!("mnemo.{}", metric_key(k)), s.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(s: &str) -> Map<String, Value> {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn steps_and_keys() {
        let r = rec(
            r#"{"event":"epoch","epoch":2,"task_loss":1.5,"best":true,"buffer":{"size":3,"classes":{"0":1}},"x":[1,2],"s":"a","n":null}"#,
        );
        let m = record_metrics(&r, 9, 5);
        let keys: Vec<_> = m
            .iter()
            .map(|m| (m.key.as_str(), m.value, m.step))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("epoch/epoch", 2.0, 2),
                ("epoch/task_loss", 1.5, 2),
                ("epoch/buffer.size", 3.0, 2),
                ("epoch/buffer.classes.0", 1.0, 2),
            ]
        );
        assert_eq!(step_of(&rec(r#"{"step":4,"epoch":1}"#), 9), 4);
        assert_eq!(step_of(&rec(r#"{"epoch":1.5,"batch":3}"#), 9), 3);
        assert_eq!(step_of(&rec(r#"{"loss":1}"#), 9), 9);
        assert_eq!(metric_key("a+b é"), "a_b _");
        let t = summary_tags(&rec(
            r#"{"event":"summary","command":"mnemo x","output":"o","epochs":3}"#,
        ));
        assert_eq!(
            t,
            vec![
                ("mnemo.command".to_string(), "mnemo x".to_string()),
                ("mnemo.output".to_string(), "o".to_string())
            ]
        );
        assert!(summary_tags(&rec(r#"{"event":"epoch","command":"x"}"#)).is_empty());
    }

    /// Values travel bit for bit: serde_json's float_roundtrip parser (the default one was
    /// 1 ulp off on this value from a real training stream).
    #[test]
    fn numbers_are_read_exactly() {
        let text = "1.4149450735535913";
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(v.as_f64().unwrap(), text.parse::<f64>().unwrap());
        assert_eq!(v.to_string(), text);
    }

    #[test]
    fn https_and_other_schemes_are_refused() {
        assert!(Client::new("https://x", Duration::from_secs(1)).is_err());
        assert!(Client::new("file:///tmp/mlruns", Duration::from_secs(1)).is_err());
        assert_eq!(
            Client::new("http://h:5000/", Duration::from_secs(1))
                .unwrap()
                .uri(),
            "http://h:5000"
        );
    }
}
