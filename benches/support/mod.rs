//! Helpers shared by the benchmarks that run the real server against the in-process Microsoft
//! Graph fake (`benches/bind.rs`, `benches/import.rs`): command-line options, CPU time from
//! `/proc`, and starting the server connected to the fake.
//!
//! A folder without `main.rs`, so Cargo does not take it for a benchmark of its own.
#![allow(dead_code, clippy::expect_used)]

#[path = "../../tests/it/support/graph_fake.rs"]
pub mod graph_fake;

use chrono::Utc;
use graph_fake::GraphFake;
use idbridge::config::Config;
use idbridge::events::Actor;
use idbridge::server::{App, AppState};

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

/// The real server (HTTP listener, sync worker) with its state, connected to the fake.
pub struct Server {
    pub state: AppState,
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub handle: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

/// Starts the server on a temporary data directory, pointed at `fake` and connected to it with
/// the app's own credentials.
pub async fn start_server(fake: &GraphFake, jobs_per_round: u64) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = \"{d}/data\"\n\
         [certs]\nkey_file = \"{d}/certs/signing.key\"\ncert_file = \"{d}/certs/signing.crt\"\n\
         [log]\nlevel = \"warn\"\n\
         [m365]\nlogin_base_url = \"{login}\"\ngraph_base_url = \"{graph}\"\nclient_id = \"{id}\"\n\
         client_secret = \"{secret}\"\ntenant = \"{tenant}\"\n\
         [m365.sync]\npoll_interval_ms = 20\nimport_interval_seconds = 3600\n\
         jobs_per_round = {jobs_per_round}\n",
        d = dir.path().display(),
        login = fake.login_base_url(),
        graph = fake.graph_base_url(),
        id = GraphFake::CLIENT_ID,
        secret = GraphFake::CLIENT_SECRET,
        tenant = GraphFake::TENANT_ID,
    );
    let config = Config::from_toml(&toml).expect("config");
    let app = App::build(config).await.expect("app builds");
    let state = app.state.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(idbridge::server::run(app, listener, async move {
        let _ = rx.await;
    }));
    state
        .m365
        .connect_application(&Actor::cli(), Utc::now())
        .await
        .expect("connected to the fake");
    Server {
        state,
        stop,
        handle,
        _dir: dir,
    }
}
