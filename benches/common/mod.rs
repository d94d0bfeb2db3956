//! Helpers every benchmark uses: command-line options, CPU time and resident set from `/proc`,
//! percentiles, and the Microsoft-365-shaped AuthnRequest and login form they send.
//!
//! A folder without `main.rs`, so Cargo does not take it for a benchmark of its own; each
//! benchmark uses what it needs.
#![allow(dead_code, clippy::expect_used, clippy::indexing_slicing)]

use std::time::Duration;

use base64::Engine;
use chrono::Utc;

/// The number after `name` on the command line, else `default`.
pub fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// utime + stime (clock ticks) in the text of a `/proc/…/stat` file, as seconds.
fn stat_cpu_seconds(stat: &str) -> f64 {
    // Fields after the ")" of the command name: utime is the 12th, stime the 13th (clock ticks).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0 // USER_HZ is 100 on Linux
}

/// CPU seconds (user + system) this process has used so far, from /proc/self/stat (the same
/// figures `getrusage(RUSAGE_SELF)` gives, readable without `unsafe`).
pub fn process_cpu_seconds() -> f64 {
    stat_cpu_seconds(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default())
}

/// CPU seconds used so far by this process's threads whose name starts with `prefix`
/// (`/proc/self/task/*/stat`; a thread that ended is no longer counted).
pub fn threads_cpu_seconds(prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|name| name.trim_end().starts_with(prefix))
        })
        .map(|t| {
            stat_cpu_seconds(&std::fs::read_to_string(t.path().join("stat")).unwrap_or_default())
        })
        .sum()
}

/// The resident set of a process (`"self"` or a pid) in MB, from `/proc/…/status`.
pub fn resident_mb(process: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{process}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The `p` quantile (0 to 1) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// An AuthnRequest as Microsoft 365 sends it (HTTP-POST binding), issued now, base64.
pub fn authn_request(id: &str) -> String {
    let xml = format!(
        "<samlp:AuthnRequest ID=\"{id}\" Version=\"2.0\" IssueInstant=\"{}\" \
         xmlns:samlp=\"urn:oasis:names:tc:SAML:2.0:protocol\"><Issuer \
         xmlns=\"urn:oasis:names:tc:SAML:2.0:assertion\">urn:federation:MicrosoftOnline</Issuer>\
         <samlp:NameIDPolicy Format=\"urn:oasis:names:tc:SAML:2.0:nameid-format:persistent\"/>\
         </samlp:AuthnRequest>",
        Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ")
    );
    base64::engine::general_purpose::STANDARD.encode(xml)
}

/// The pending-sign-in token of a login form page.
pub fn pending_of(html: &str) -> Option<String> {
    let at = html.find("name=\"pending\"")?;
    let tail = &html[at..];
    let v = tail.find("value=\"")? + 7;
    let end = tail[v..].find('"')?;
    Some(tail[v..v + end].to_string())
}

/// A fresh database on the PostgreSQL server at `server` (a URL without a database), for the
/// benchmarks' `--postgres` option.
pub async fn postgres_database(server: &str, bench: &str) -> String {
    use sqlx::Connection;
    let server = server.trim_end_matches('/');
    let name = format!("idb_bench_{bench}_{}", std::process::id());
    let mut conn = sqlx::PgConnection::connect(&format!("{server}/postgres"))
        .await
        .expect("PostgreSQL reachable");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&mut conn)
        .await
        .expect("drop");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create database");
    format!("{server}/{name}")
}
