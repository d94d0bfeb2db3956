//! Assembling the application: state, router, background tasks and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::certs::{self, CertError};
use crate::config::{Config, ConfigError};
use crate::directory::Directory;
use crate::events::{kind, Actor, NewEvent};
use crate::sso::IdentityProvider;
use crate::store::{Store, StoreError};

/// Why the server cannot start; each message names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error("configuration error: {0}")]
    M365(#[from] crate::m365::M365SetupError),
    #[error("cannot listen on {addr}: {source}. Fix: choose a free address with `listen` (IDBRIDGE_LISTEN)")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Everything handlers share.
pub struct AppInner {
    pub config: Config,
    pub store: Store,
    pub directory: Directory,
    pub idp: IdentityProvider,
    /// Throttles the admin console's sign-in form.
    pub admin_throttle: crate::throttle::SignInThrottle,
    /// Repeated refused requests, counted before they are written as events.
    pub refusals: crate::throttle::refusals::RefusalTally,
    pub m365: Arc<crate::m365::M365>,
    /// Binding and sync with Microsoft 365.
    pub sync: Arc<crate::m365::M365Sync>,
}

/// Shared application state, cheap to clone.
pub type AppState = Arc<AppInner>;

/// A built application, ready to serve.
pub struct App {
    pub state: AppState,
    /// True when this start generated the signing certificate.
    pub generated_certificate: bool,
    /// Stops the background tasks.
    shutdown: CancellationToken,
    /// Background tasks started by `build`, awaited by `run` on shutdown.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl App {
    /// Opens and migrates the store and loads (or generates) the signing credential.
    pub async fn build(config: Config) -> Result<Self, StartError> {
        let store = Store::connect(&config.database_url()).await?;
        store.migrate().await?;
        let (signing, generated) = certs::load_or_generate(&config)?;
        if generated {
            let event = NewEvent::new(
                chrono::Utc::now(),
                &Actor::System,
                kind::SIGNING_CERT_CREATE,
                Some(&signing.subject()),
            )
            .details(serde_json::json!({
                "fingerprintSha256": signing.fingerprint_sha256(),
                "notAfter": signing.not_after().to_rfc3339(),
                "keyBits": signing.key_bits(),
            }));
            store.record_event(&event).await?;
        }
        if store.backend() == crate::store::Backend::Sqlite {
            // One process owns an SQLite database: runs and leases it left are nobody's.
            store
                .fail_interrupted_import_runs(chrono::Utc::now().timestamp_millis())
                .await?;
            let released = store.release_outbox_leases().await?;
            if released > 0 {
                tracing::info!(
                    jobs = released,
                    "resuming Microsoft 365 changes interrupted by a stop"
                );
            }
        }
        let data_key = crate::m365::data_key(&config)?;
        let directory = Directory::new(store.clone(), config.password_policy.clone())
            .with_password_sealer(data_key.clone());
        let shutdown = CancellationToken::new();
        let (writes, writer) = crate::store::WriteBehind::start(store.clone(), shutdown.clone());
        let replay = crate::sso::ReplayCache::load(
            store.clone(),
            writes.clone(),
            chrono::Utc::now().timestamp_millis(),
        )
        .await?;
        let idp = IdentityProvider::new(
            &config,
            store.clone(),
            directory.clone(),
            signing,
            writes,
            replay,
        )?;
        let m365 = Arc::new(crate::m365::M365::new(&config, store.clone())?);
        let sync = Arc::new(crate::m365::M365Sync::new(
            store.clone(),
            directory.clone(),
            m365.clone(),
            data_key,
            config.m365.sync.clone(),
        ));
        Ok(Self {
            state: Arc::new(AppInner {
                admin_throttle: crate::throttle::SignInThrottle::admin(store.clone(), &config),
                refusals: crate::throttle::refusals::RefusalTally::new(),
                config,
                store,
                directory,
                idp,
                m365,
                sync,
            }),
            generated_certificate: generated,
            shutdown,
            tasks: vec![writer],
        })
    }

    /// The full router with shared layers.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/", get(home))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .merge(crate::sso::router())
            .merge(crate::admin::router(self.state.clone()))
            .fallback(|| async { crate::web::AppError::NotFound })
            .layer(RequestBodyLimitLayer::new(256 * 1024))
            .layer(SetResponseHeaderLayer::if_not_present(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ))
            .layer(SetResponseHeaderLayer::if_not_present(
                header::X_FRAME_OPTIONS,
                HeaderValue::from_static("DENY"),
            ))
            .layer(SetResponseHeaderLayer::if_not_present(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ))
            .layer(TraceLayer::new_for_http())
            .with_state(self.state.clone())
    }
}

/// Binds the configured listen address.
pub async fn bind(config: &Config) -> Result<TcpListener, StartError> {
    TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })
}

/// Serves `app` on `listener` until `shutdown` completes, then finishes in-flight requests and
/// stops the background tasks. Tests call this exactly as `main` does.
pub async fn run(
    app: App,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let token = app.shutdown.clone();
    let janitor = tokio::spawn(purge_expired(app.state.clone(), token.clone()));
    let sync_worker = tokio::spawn(app.state.sync.clone().run(token.clone()));
    let router = app.router();
    let serve_token = token.clone();
    let result = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        tokio::select! {
            _ = shutdown => {},
            _ = serve_token.cancelled() => {},
        }
    })
    .await;
    token.cancel();
    let _ = janitor.await;
    let _ = sync_worker.await;
    for task in app.tasks {
        let _ = task.await;
    }
    app.state.store.close().await;
    result
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}

async fn purge_expired(state: AppState, token: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = token.cancelled() => {
                flush_refusals(&state, true).await;
                return;
            }
            _ = tick.tick() => {
                flush_refusals(&state, false).await;
                let now = chrono::Utc::now().timestamp_millis();
                if let Err(err) = state.store.purge_expired_saml_state(now).await {
                    tracing::warn!(%err, "could not purge expired SAML state");
                }
                let idle_ms = (state.config.admin.session_idle_minutes.max(1) * 60_000) as i64;
                if let Err(err) = state.store.purge_admin_sessions(now, idle_ms).await {
                    tracing::warn!(%err, "could not purge expired console sessions");
                }
                purge_old(&state, now).await;
            }
        }
    }
}

/// Writes the aggregated counts of refused requests: of past minutes, or all (shutdown).
pub async fn flush_refusals(state: &AppState, all: bool) {
    let events = state.refusals.take_due(chrono::Utc::now(), all);
    if events.is_empty() {
        return;
    }
    if let Err(err) = state.store.record_batch(&events, &[]).await {
        tracing::warn!(%err, "could not record the counts of refused requests");
    }
}

/// Deletes counters of past sign-in failures and events past the retention (the janitor).
pub async fn purge_old(state: &AppState, now_ms: i64) {
    // A counter is stale once both its window and its lock ended; a day covers every window.
    if let Err(err) = state.store.purge_throttle(now_ms - 86_400_000).await {
        tracing::warn!(%err, "could not purge old sign-in counters");
    }
    let days = i64::from(state.config.events.retention_days);
    if days > 0 {
        match state
            .store
            .purge_events_before(now_ms - days * 86_400_000)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "purged events past the retention"),
            Err(err) => tracing::warn!(%err, "could not purge old events"),
        }
    }
}

async fn home(State(state): State<AppState>) -> impl IntoResponse {
    let base = &state.config.base_url;
    let body = crate::web::MessagePage {
        title: "idbridge is running",
        message: &format!(
            "SAML metadata: {base}/saml/metadata · sign-in URL: {base}/saml/sso · sign-out URL: {base}/saml/slo"
        ),
        hint: Some("Users reach the sign-in page from Microsoft 365; there is nothing to do here."),
        reference: None,
    };
    crate::web::render(StatusCode::OK, &body)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.store.ping().await {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "database unreachable")
    }
}
