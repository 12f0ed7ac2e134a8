//! Firecracker-style metrics: one JSON object per line, written to the file or named
//! pipe given by `PUT /metrics` (or `--metrics-path`) on `FlushMetrics` and every 60 s.
//! Counters are written as increments since the previous line, as Firecracker does;
//! `block` and `net` sum the per-device `block_<drive_id>` / `net_<iface_id>` groups.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use vmm::handle::VmMetrics;

/// How often metrics are written without a `FlushMetrics`.
pub const PERIOD: std::time::Duration = std::time::Duration::from_secs(60);

/// Counts of API requests by verb and resource (`put_api_requests.drive_count`, …).
#[derive(Debug, Default)]
pub struct ApiCounters {
    counts: BTreeMap<(&'static str, String), u64>,
}

impl ApiCounters {
    /// Counts one request to `resource` with `verb` (`get`, `put`, `patch`), and a
    /// failure when it failed.
    pub fn count(&mut self, verb: &'static str, resource: &str, failed: bool) {
        *self
            .counts
            .entry((verb, format!("{resource}_count")))
            .or_default() += 1;
        if failed {
            *self
                .counts
                .entry((verb, format!("{resource}_fails")))
                .or_default() += 1;
        }
    }

    fn to_json(&self, out: &mut Map<String, Value>) {
        for verb in ["get", "put", "patch"] {
            let group: Map<String, Value> = self
                .counts
                .iter()
                .filter(|((v, _), _)| *v == verb)
                .map(|((_, k), n)| (k.clone(), Value::from(*n)))
                .collect();
            out.insert(format!("{verb}_api_requests"), Value::Object(group));
        }
    }
}

/// Where metrics lines go, and the totals of the previous line.
pub struct MetricsSink {
    file: File,
    path: String,
    previous: Value,
}

impl MetricsSink {
    /// Opens (appends to, creating if needed) `path`: a file or a named pipe.
    pub fn open(path: &str) -> Result<Self, String> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| format!("Cannot open the metrics file {path}: {e}."))?;
        Ok(Self {
            file,
            path: path.to_string(),
            previous: Value::Object(Map::new()),
        })
    }

    /// Writes one line: API counters, and the VM's when it runs (with its drive and
    /// interface ids in attach order).
    pub fn write(&mut self, api: &ApiCounters, vm: Option<(&VmMetrics, &[String], &[String])>) {
        let totals = totals(api, vm);
        let mut line = match delta(&totals, &self.previous) {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        self.previous = totals;
        for group in ["block", "net"] {
            let prefix = format!("{group}_");
            let sum = line
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .fold(Value::Object(Map::new()), |acc, (_, v)| add(&acc, v));
            line.insert(group.to_string(), sum);
        }
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        line.insert("utc_timestamp_ms".into(), Value::from(ms));
        let text = Value::Object(line).to_string();
        if let Err(e) = writeln!(self.file, "{text}") {
            log::warn!("cannot write metrics to {}: {e}", self.path);
        }
    }
}

/// Every counter's running total, in Firecracker's groups.
fn totals(api: &ApiCounters, vm: Option<(&VmMetrics, &[String], &[String])>) -> Value {
    let mut m = Map::new();
    api.to_json(&mut m);
    if let Some((vm, drives, ifaces)) = vm {
        m.insert("vcpu".into(), to_value(&vm.vcpu));
        for (id, b) in drives.iter().zip(&vm.block) {
            m.insert(format!("block_{id}"), to_value(b));
        }
        for (id, n) in ifaces.iter().zip(&vm.net) {
            m.insert(format!("net_{id}"), to_value(n));
        }
        if let Some(e) = &vm.entropy {
            m.insert("entropy".into(), to_value(e));
        }
    }
    Value::Object(m)
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// `now - before` for every number in `now` (missing in `before` = 0).
fn delta(now: &Value, before: &Value) -> Value {
    match now {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), delta(v, before.get(k).unwrap_or(&Value::Null))))
                .collect(),
        ),
        Value::Number(n) => {
            let b = before.as_u64().unwrap_or(0);
            Value::from(n.as_u64().unwrap_or(0).saturating_sub(b))
        }
        other => other.clone(),
    }
}

/// `a + b` for every number in either (objects merged).
fn add(a: &Value, b: &Value) -> Value {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut out = x.clone();
            for (k, v) in y {
                let sum = add(x.get(k).unwrap_or(&Value::Null), v);
                out.insert(k.clone(), sum);
            }
            Value::Object(out)
        }
        (Value::Null, v) => v.clone(),
        (x, Value::Null) => x.clone(),
        (x, y) => Value::from(x.as_u64().unwrap_or(0) + y.as_u64().unwrap_or(0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn delta_subtracts_the_previous_totals() {
        let before = json!({"a": {"x": 3, "y": 1}});
        let now = json!({"a": {"x": 5, "y": 1, "z": 2}});
        assert_eq!(delta(&now, &before), json!({"a": {"x": 2, "y": 0, "z": 2}}));
    }

    #[test]
    fn add_sums_groups() {
        let a = json!({"read_count": 1, "write_count": 2});
        let b = json!({"read_count": 4});
        assert_eq!(add(&a, &b), json!({"read_count": 5, "write_count": 2}));
    }

    #[test]
    fn api_counters_count_fails_separately() {
        let mut c = ApiCounters::default();
        c.count("put", "drive", false);
        c.count("put", "drive", true);
        let mut m = Map::new();
        c.to_json(&mut m);
        assert_eq!(
            m["put_api_requests"],
            json!({"drive_count": 2, "drive_fails": 1})
        );
        assert_eq!(m["get_api_requests"], json!({}));
    }

    #[test]
    fn lines_are_increments_with_a_timestamp() {
        let dir = std::env::temp_dir().join(format!("kiln-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.json");
        let mut sink = MetricsSink::open(path.to_str().unwrap()).unwrap();
        let mut c = ApiCounters::default();
        c.count("put", "actions", false);
        sink.write(&c, None);
        c.count("put", "actions", false);
        c.count("put", "actions", false);
        sink.write(&c, None);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["put_api_requests"]["actions_count"], 1);
        assert_eq!(lines[1]["put_api_requests"]["actions_count"], 2);
        assert!(lines[1]["utc_timestamp_ms"].as_u64().unwrap() > 0);
    }
}
