//! Helpers shared by the benchmarks that run the real server against the in-process Microsoft
//! Graph fake (`benches/bind.rs`, `benches/import.rs`): starting the server connected to the
//! fake (the general helpers are in `benches/common`).
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
    start_server_on(fake, jobs_per_round, None).await
}

/// [`start_server`] on the database `database_url` (default: SQLite in the data directory).
pub async fn start_server_on(
    fake: &GraphFake,
    jobs_per_round: u64,
    database_url: Option<&str>,
) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = database_url
        .map(|url| format!("database_url = {url:?}\n"))
        .unwrap_or_default();
    let toml = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = \"{d}/data\"\n{database}\
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
