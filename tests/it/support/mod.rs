//! Test support: the real server on a random port against a temporary database.

#![allow(dead_code)]

pub mod console;
pub mod graph_fake;
pub mod m365;
pub mod smtp_sink;

use std::path::PathBuf;

use chrono::Utc;
use idbridge::config::Config;
use idbridge::directory::{Attribute, User, UserChanges};
use idbridge::events::{Actor, NewEvent};
use idbridge::server::App;
use idbridge::store::{EventFilter, EventRow, Store};
use secrecy::SecretString;
use tokio::sync::oneshot;

/// A running idbridge with its own temporary data directory.
pub struct TestApp {
    pub base_url: String,
    pub config: Config,
    pub store: Store,
    pub dir: tempfile::TempDir,
    state: idbridge::server::AppState,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// With `TEST_POSTGRES_URL` set to a server URL (`postgres://user:pw@127.0.0.1`), each test
/// server gets its own PostgreSQL database instead of SQLite, named after its directory so a
/// restart in the same directory finds it again. Unset (the default), tests use SQLite. (Not an
/// `IDBRIDGE_…` name: the binary the CLI tests run would read that as a setting.)
async fn postgres_database(dir: &std::path::Path) -> Option<String> {
    use sqlx::Connection;
    let server = std::env::var("TEST_POSTGRES_URL").ok()?;
    let server = server.trim_end_matches('/');
    let name = format!(
        "idb_test_{}",
        &idbridge::web::token_hash(&dir.display().to_string())[..16]
    );
    let mut conn = sqlx::PgConnection::connect(&format!("{server}/postgres"))
        .await
        .expect("TEST_POSTGRES_URL reachable");
    let exists: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_optional(&mut conn)
        .await
        .expect("pg_database");
    if exists.is_none() {
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
    }
    Some(format!("{server}/{name}"))
}

/// Config for a test in `dir`; `extra` is TOML merged over it.
pub fn test_config(dir: &std::path::Path, extra: &str) -> Config {
    // `extra` goes before the [certs] table so its top-level keys stay top-level.
    let toml = format!(
        "listen = \"127.0.0.1:0\"\n\
         data_dir = \"{data}\"\n\
         {extra}\n\
         [certs]\nkey_file = \"{dir}/certs/signing.key\"\ncert_file = \"{dir}/certs/signing.crt\"\n",
        data = dir.join("data").display(),
        dir = dir.display(),
    );
    Config::from_toml(&toml).expect("test config is valid")
}

impl TestApp {
    /// Runs the `idbridge` CLI (a separate process) with a config file in `dir` pointing at
    /// this server's database; asserts it succeeds and returns its standard output.
    pub async fn cli(&self, dir: &std::path::Path, args: &[&str]) -> String {
        let out = self.cli_output(dir, args).await;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Runs the binary against this server's database and files, success or not.
    pub async fn cli_output(&self, dir: &std::path::Path, args: &[&str]) -> std::process::Output {
        let config = &self.state().config;
        let file = dir.join("idbridge.toml");
        std::fs::write(
            &file,
            format!(
                "data_dir = {:?}\ndatabase_url = {:?}\n[certs]\nkey_file = {:?}\ncert_file = {:?}\n\
                 [m365]\nlogin_base_url = {:?}\ngraph_base_url = {:?}\n",
                config.data_dir.display().to_string(),
                config.database_url(),
                config.certs.key_file.display().to_string(),
                config.certs.cert_file.display().to_string(),
                config.m365.login_base_url,
                config.m365.graph_base_url,
            ),
        )
        .unwrap();
        // Asynchronously: the server runs on this test's runtime, and a blocked runtime would
        // freeze it mid-transaction while the CLI waits for the same SQLite write lock.
        tokio::process::Command::new(binary())
            .arg("--config")
            .arg(&file)
            .args(args)
            .current_dir(dir)
            .env("RUST_LOG", "warn")
            .output()
            .await
            .expect("binary runs")
    }

    /// Starts a server with default settings.
    pub async fn spawn() -> Self {
        Self::spawn_with("").await
    }

    /// Starts a server with extra TOML config.
    pub async fn spawn_with(extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::spawn_in(dir, extra).await
    }

    /// Starts a server in an existing directory (to test restarts).
    pub async fn spawn_in(dir: tempfile::TempDir, extra: &str) -> Self {
        Self::spawn_on(dir, extra, "127.0.0.1").await
    }

    /// Starts a server whose base URL names `localhost`: WebAuthn needs a host name for its
    /// relying party ID (browsers refuse IP addresses), and `localhost` is a secure context.
    pub async fn spawn_localhost(extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::spawn_on(dir, extra, "localhost").await
    }

    async fn spawn_on(dir: tempfile::TempDir, extra: &str, host: &str) -> Self {
        let mut config = test_config(dir.path(), extra);
        if let Some(url) = postgres_database(dir.path()).await {
            config.database_url = Some(url);
        }
        Self::spawn_configured(dir, config, extra, host).await
    }

    /// Starts another node of this server's cluster: its own directory and port, this
    /// server's database, signing key and token key (what README says every node shares),
    /// named `node`. `extra` is its TOML (e.g. the same `[m365]` settings).
    pub async fn spawn_node(&self, node: &str, extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = test_config(dir.path(), extra);
        config.database_url = Some(self.config.database_url());
        config.certs.key_file = self.config.certs.key_file.clone();
        config.certs.cert_file = self.config.certs.cert_file.clone();
        config.m365.token_key_file = Some(self.config.data_dir.join("token.key"));
        config.node_name = Some(node.to_string());
        Self::spawn_configured(dir, config, extra, "127.0.0.1").await
    }

    async fn spawn_configured(
        dir: tempfile::TempDir,
        mut config: Config,
        extra: &str,
        host: &str,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let base_url = format!("http://{host}:{port}");
        if !extra
            .lines()
            .any(|l| l.trim_start().starts_with("base_url"))
        {
            config.base_url = base_url.clone();
        }
        let app = App::build(config.clone()).await.expect("app builds");
        let state = app.state.clone();
        let store = state.store.clone();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(idbridge::server::run(app, listener, async move {
            let _ = rx.await;
        }));
        Self {
            base_url,
            config: state.config.clone(),
            store,
            dir,
            state,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// Whether the tests run on PostgreSQL (`TEST_POSTGRES_URL`): several nodes need it.
    pub fn on_postgres() -> bool {
        std::env::var_os("TEST_POSTGRES_URL").is_some()
    }

    /// Stops the server gracefully and returns its directory (for a restart).
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.dir, dir)
    }

    /// Stops the server and starts it again in the same directory (and database) with
    /// `extra` as its TOML.
    pub async fn restart_with(self, extra: &str) -> Self {
        let dir = self.stop().await;
        Self::spawn_in(dir, extra).await
    }

    /// A URL on this server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// The app's shared state (directory, IdP).
    pub fn state(&self) -> &idbridge::server::AppState {
        &self.state
    }

    /// Path of the signing certificate PEM.
    pub fn cert_path(&self) -> PathBuf {
        self.config.certs.cert_file.clone()
    }

    /// Creates an active user with a password.
    pub async fn create_user(&self, username: &str, email: &str, password: &str) -> User {
        let changes = UserChanges::new()
            .with(Attribute::Username, username)
            .with(Attribute::Email, email)
            .with(Attribute::Firstname, "Test")
            .with(Attribute::Lastname, username);
        self.state
            .directory
            .create_user(
                &Actor::System,
                &changes,
                Some(&SecretString::from(password.to_string())),
                Utc::now(),
            )
            .await
            .expect("user created")
    }

    /// Binds a user to Microsoft 365 directly through the store (the binding issue will do
    /// this through Graph).
    pub async fn bind(&self, user: &User, immutable_id: &str, upn: &str) {
        let event = NewEvent::new(
            Utc::now(),
            &Actor::System,
            "test_bind",
            Some(&user.username),
        );
        self.store
            .upsert_binding(
                &user.id,
                immutable_id,
                upn,
                Utc::now().timestamp_millis(),
                &event,
            )
            .await
            .expect("bound");
    }

    /// Events of a type, newest first.
    pub async fn events(&self, event_type: &str) -> Vec<EventRow> {
        self.state.idp.flush_events().await;
        self.store
            .list_events(&EventFilter {
                event_type: Some(event_type.into()),
                limit: 1000,
                ..EventFilter::default()
            })
            .await
            .expect("events")
    }

    /// Refusals of a type counted across aggregated event rows (each row's `count`, or 1),
    /// after writing the counts still held in memory.
    pub async fn refusal_count(&self, event_type: &str) -> (usize, u64) {
        idbridge::server::flush_refusals(&self.state, true).await;
        let rows = self.events(event_type).await;
        let total = rows
            .iter()
            .map(|e| {
                serde_json::from_str::<serde_json::Value>(&e.details)
                    .ok()
                    .and_then(|d| d["count"].as_u64())
                    .unwrap_or(1)
            })
            .sum();
        (rows.len(), total)
    }

    /// A browser-like client from another loopback address (per-address limits).
    pub fn browser_from(&self, ip: std::net::IpAddr) -> reqwest::Client {
        reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .local_address(ip)
            .build()
            .expect("client")
    }

    /// A browser-like client: cookie store, no redirects followed.
    pub fn browser(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The events of a throttle type that started a lock (not the aggregated refusals).
pub async fn lock_starts(app: &TestApp, event_type: &str) -> Vec<EventRow> {
    app.events(event_type)
        .await
        .into_iter()
        .filter(|e| e.details.contains("lockedUntil"))
        .collect()
}

/// Path of the built `idbridge` binary.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_idbridge"))
}

/// Extracts the value of a hidden input `name` from an HTML page.
pub fn hidden_input(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(html_unescape(&html[start..end]))
}

/// Extracts a form's action attribute.
pub fn form_action(html: &str) -> Option<String> {
    let marker = "action=\"";
    let start = html.find(marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(html_unescape(&html[start..end]))
}

/// Reverses the HTML escaping askama applies to attribute values.
pub fn html_unescape(s: &str) -> String {
    s.replace("&#43;", "+")
        .replace("&#x2b;", "+")
        .replace("&#61;", "=")
        .replace("&#x3d;", "=")
        .replace("&#47;", "/")
        .replace("&#x2f;", "/")
        .replace("&#x27;", "'")
        .replace("&#39;", "'")
        .replace("&quot;", "\"")
        .replace("&#34;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}
