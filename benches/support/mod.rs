//! Helpers shared by the benchmarks that do not use criterion: summaries of repeated
//! measurements, result files for `benches/run.sh`, and Redis and process setup.
#![allow(dead_code)] // Each benchmark binary uses a different part.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::jwt::OID;
use crate::common::redis_server::RedisServer;

/// Median, quartiles and range of repeated measurements.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub median: f64,
    pub q1: f64,
    pub q3: f64,
    pub min: f64,
    pub max: f64,
    pub count: usize,
}

impl Summary {
    /// Summarizes `values`, which must not be empty.
    pub fn of(values: &[f64]) -> Self {
        assert!(!values.is_empty(), "no measurements to summarize");
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        Summary {
            median: quantile(&sorted, 0.5),
            q1: quantile(&sorted, 0.25),
            q3: quantile(&sorted, 0.75),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            count: sorted.len(),
        }
    }

    /// Returns the summary as JSON, with `unit` (such as `"ns"`).
    pub fn to_json(self, unit: &str) -> Value {
        json!({
            "unit": unit,
            "median": self.median,
            "q1": self.q1,
            "q3": self.q3,
            "min": self.min,
            "max": self.max,
            "count": self.count,
        })
    }

    /// Formats the summary for the terminal, with `unit`.
    pub fn display(self, unit: &str) -> String {
        format!(
            "median {:.3} {unit} (IQR {:.3}–{:.3}, range {:.3}–{:.3}, n = {})",
            self.median, self.q1, self.q3, self.min, self.max, self.count
        )
    }
}

/// Linear interpolation between the closest ranks of sorted `values`.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let position = q * (sorted.len() - 1) as f64;
    let (low, high) = (position.floor() as usize, position.ceil() as usize);
    let weight = position - low as f64;
    sorted[low] * (1.0 - weight) + sorted[high] * weight
}

/// Writes `result` to `<dir>/<name>.json`, where `dir` is `BENCH_RESULTS_DIR` or
/// `target/bench-results`, for `benches/run.sh` to put in BENCHMARKS.md.
pub fn write_result(name: &str, result: &Value) {
    let dir = std::env::var_os("BENCH_RESULTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-results"));
    std::fs::create_dir_all(&dir).expect("create the benchmark results directory");
    let path = dir.join(format!("{name}.json"));
    let text = serde_json::to_string_pretty(result).expect("serialize benchmark results");
    std::fs::write(&path, text).expect("write the benchmark results");
    println!("results written to {}", path.display());
}

/// Lets the user named after the test tokens' `oid` authenticate with any password.
///
/// The benchmarks measure the client, so the server need not check tokens, and the
/// mock endpoint need not keep an ACL in step with the tokens it issues.
pub fn accept_any_token(redis: &RedisServer) {
    let mut admin = redis.admin().expect("admin connection");
    redis::cmd("ACL")
        .arg(&["SETUSER", OID, "on", "nopass", "~*", "&*", "+@all"])
        .exec(&mut admin)
        .expect("ACL SETUSER for the token user");
}

/// Counts the `AUTH` commands the server has executed.
pub fn auth_calls(admin: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(admin)
        .expect("INFO commandstats");
    info.lines()
        .find_map(|line| line.strip_prefix("cmdstat_auth:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().expect("a number of calls"))
}

/// Polls `admin` every millisecond until the server has executed `target` `AUTH`
/// commands, for at most `timeout`. Returns whether it got there.
pub fn wait_for_auth_calls(admin: &mut redis::Connection, target: u64, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if auth_calls(admin) >= target {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// Reads the soft limit on open files from `/proc/self/limits`.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Exits with a message when the process may not open `needed` files, such as one
/// socket per connection.
pub fn require_open_files(needed: u64) {
    match open_files_limit() {
        Some(limit) if limit < needed => {
            eprintln!(
                "this benchmark needs about {needed} open files, but the limit is {limit}; \
                 raise it with `ulimit -n {needed}` (benches/run.sh does)"
            );
            std::process::exit(2);
        }
        _ => {}
    }
}

/// Reads the process's resident set size in KiB from `/proc/self/status`.
pub fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("VmRSS in /proc/self/status")
}
