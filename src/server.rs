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
    #[error("signing certificates: {0}")]
    Signing(#[from] crate::certs::rollover::RolloverError),
    #[error("configuration error: {0}")]
    M365(#[from] crate::m365::M365SetupError),
    #[error("the app registration entered in the console cannot be read: {0}")]
    Registration(#[from] crate::m365::RegistrationError),
    #[error("configuration error: smtp: {0}")]
    Mail(#[from] crate::mail::MailError),
    #[error("configuration error: metrics: {0}")]
    Metrics(#[from] crate::telemetry::metrics::MetricsError),
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
    /// The credential of the certificate files (signing until a rollover promotes another).
    pub signing_file: Arc<crate::saml::SigningCredential>,
    /// Seals what is stored secret: tokens, pushed passwords, rollover keys.
    pub data_key: crate::secrets::SecretBox,
    /// Why Microsoft's federation metadata (`saml.m365_metadata_url`) could not be read last
    /// time, if it could not.
    pub m365_metadata_error: std::sync::Mutex<Option<String>>,
    /// WebAuthn passkeys: registration and sign-in ceremonies.
    pub passkeys: crate::mfa::passkey::Passkeys,
    /// Throttles the admin console's sign-in form.
    pub admin_throttle: crate::throttle::SignInThrottle,
    /// Second factors; here for admins' own authenticator apps (the SSO's are in `idp`).
    pub mfa: crate::mfa::Mfa,
    /// Throttles the second-factor codes of console sign-ins, per admin and per address.
    pub admin_code_throttle: crate::throttle::SignInThrottle,
    /// Repeated refused requests, counted before they are written as events.
    pub refusals: crate::throttle::refusals::RefusalTally,
    pub m365: Arc<crate::m365::M365>,
    /// Binding and sync with Microsoft 365.
    pub sync: Arc<crate::m365::M365Sync>,
    /// The user portal's self-service passwords (change, reset by emailed link).
    pub self_service: Arc<crate::portal::SelfService>,
    /// Renders `/metrics`; None when `[metrics] enabled = false`.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Whether this node does the cluster-wide chores (janitor, delta import, expiry scan).
    pub duty: crate::cluster::Duty,
    /// The organisation's name, logo and colour on the employee pages.
    pub branding: crate::branding::Branding,
}

impl AppInner {
    /// The signing-certificate rollover's steps, with this node's parts.
    pub fn rollover(&self) -> crate::certs::rollover::Rollover<'_> {
        crate::certs::rollover::Rollover {
            config: &self.config,
            store: &self.store,
            key: &self.data_key,
            file: self.signing_file.clone(),
            m365: &self.m365,
        }
    }

    /// Reads what every node shares beyond the database's own rows, the stored signing
    /// certificates and the domains federated through Graph, and uses it; whether the
    /// certificates changed.
    pub async fn reload_signing(&self) -> Result<bool, crate::certs::rollover::RolloverError> {
        let known = crate::m365::federation::KnownFederations::load(&self.store).await?;
        if self.idp.use_federations(known) {
            tracing::info!("federated domains changed: issuers reloaded");
        }
        let set = self.rollover().current().await?;
        let fingerprint = set.current.fingerprint_sha256();
        let changed = self.idp.use_signing_set(&self.config, set).map_err(|e| {
            crate::certs::rollover::RolloverError::Store(StoreError::Corrupt(e.to_string()))
        })?;
        if changed {
            tracing::info!(signing = %fingerprint, "signing certificates changed by a rollover step");
        }
        Ok(changed)
    }
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
        let metrics = if config.metrics.enabled {
            Some(crate::telemetry::metrics::install()?)
        } else {
            None
        };
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
        // Import runs this node left are nobody's now (on SQLite every run: one process owns
        // the database); those of another node that died are ended by the chores' holder.
        let node = (store.backend() != crate::store::Backend::Sqlite).then(|| config.node_name());
        store
            .fail_interrupted_import_runs(node.as_deref(), chrono::Utc::now().timestamp_millis())
            .await?;
        // What this node held before it started belongs to a process that is gone: its
        // claimed changes are due again at once, not after their lease (on SQLite, every
        // lease: one process owns the file).
        let released = store.release_leases_of(&config.node_name()).await?;
        if released > 0 {
            tracing::info!(
                jobs = released,
                "resuming Microsoft 365 changes interrupted by a stop"
            );
        }
        let data_key = crate::m365::data_key(&config)?;
        let signing_file = Arc::new(signing);
        let signing =
            crate::certs::rollover::SigningSet::load(&store, &data_key, signing_file.clone())
                .await?;
        let directory = Directory::new(store.clone(), config.password_policy.clone())
            .with_hash_pool(config.sign_in.hash_workers, config.sign_in.hash_queue)
            .with_password_sealer(data_key.clone());
        let shutdown = CancellationToken::new();
        let (writes, writer) = crate::store::WriteBehind::start(store.clone(), shutdown.clone());
        let replay = crate::sso::ReplayCache::load(
            store.clone(),
            writes.clone(),
            config.saml.replay_max_ids,
            chrono::Utc::now().timestamp_millis(),
        )
        .await?;
        let mfa = crate::mfa::Mfa::new(
            store.clone(),
            data_key.clone(),
            config.mfa.policy,
            config.mfa_issuer(),
        );
        let idp = IdentityProvider::new(
            &config,
            store.clone(),
            directory.clone(),
            signing,
            writes,
            replay,
            mfa.clone(),
        )?;
        idp.use_federations(crate::m365::federation::KnownFederations::load(&store).await?);
        idp.service_providers().load_registered(&store).await?;
        let passkeys =
            crate::mfa::passkey::Passkeys::new(&config, store.clone(), directory.clone());
        let m365 = Arc::new(crate::m365::M365::new(&config, store.clone())?);
        m365.load_registration().await?;
        let branding = crate::branding::Branding::new(store.clone());
        branding.load().await?;
        let duty = crate::cluster::Duty::default();
        let sync = Arc::new(
            crate::m365::M365Sync::new(
                store.clone(),
                directory.clone(),
                m365.clone(),
                data_key.clone(),
                config.m365.sync.clone(),
            )
            .on_node(&config.node_name(), duty.clone()),
        );
        let mailer = config
            .smtp
            .as_ref()
            .map(crate::mail::Mailer::from_config)
            .transpose()?;
        let self_service = Arc::new(crate::portal::SelfService::new(
            &config,
            store.clone(),
            directory.clone(),
            mailer,
        ));
        Ok(Self {
            state: Arc::new(AppInner {
                duty,
                branding,
                self_service,
                admin_throttle: crate::throttle::SignInThrottle::admin(store.clone(), &config),
                admin_code_throttle: crate::throttle::SignInThrottle::second_factor(
                    store.clone(),
                    &config,
                ),
                mfa,
                refusals: crate::throttle::refusals::RefusalTally::new(),
                metrics,
                config,
                store,
                directory,
                idp,
                signing_file,
                data_key,
                m365_metadata_error: std::sync::Mutex::new(None),
                passkeys,
                m365,
                sync,
            }),
            generated_certificate: generated,
            shutdown,
            tasks: vec![writer],
        })
    }

    /// The main listener's router with shared layers: everything, or with `[admin] listen`
    /// everything but the console and the API.
    pub fn router(&self) -> Router {
        let surface = if self.state.config.admin.listen.is_some() {
            Surface::Public
        } else {
            Surface::All
        };
        self.router_for(surface)
    }

    /// The router of the `[admin] listen` address: the console and the API only.
    pub fn console_router(&self) -> Router {
        self.router_for(Surface::Console)
    }

    fn router_for(&self, surface: Surface) -> Router {
        let server = &self.state.config.server;
        let trusted = Arc::new(server.trusted_proxy_nets());
        let deadline = Duration::from_secs(server.request_timeout_seconds);
        let mut router = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz));
        // With a separate metrics address the public listener does not serve them at all.
        if self.state.config.metrics.listen.is_none() {
            router = router.route("/metrics", get(metrics));
        }
        let router = router
            .merge(crate::sso::router())
            .merge(crate::mfa::http::router())
            .merge(crate::admin::router(self.state.clone()))
            .merge(crate::portal::router(self.state.clone()))
            .merge(crate::branding::http::router())
            .fallback(|| async { crate::web::AppError::NotFound })
            .layer(axum::middleware::from_fn_with_state(
                surface,
                keep_to_surface,
            ))
            // Outside the surface check, so its 404 page is in the request's language too.
            .layer(axum::middleware::from_fn_with_state(
                self.state.clone(),
                crate::i18n::scope,
            ))
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
            .layer(SetResponseHeaderLayer::if_not_present(
                header::CONTENT_SECURITY_POLICY,
                crate::web::front_door::page_csp(),
            ))
            .layer(axum::middleware::from_fn_with_state(
                deadline,
                crate::web::front_door::request_deadline,
            ))
            .layer(crate::web::front_door::catch_panic_layer())
            .layer(axum::middleware::from_fn(
                crate::web::front_door::api_panic_as_json,
            ))
            .layer(axum::middleware::from_fn(
                crate::web::access_log::access_log,
            ))
            .layer(axum::middleware::from_fn_with_state(
                trusted,
                crate::web::front_door::real_client,
            ));
        let router = if self.state.config.is_https() {
            router.layer(SetResponseHeaderLayer::overriding(
                header::STRICT_TRANSPORT_SECURITY,
                HeaderValue::from_static(crate::web::front_door::HSTS),
            ))
        } else {
            router
        };
        router.with_state(self.state.clone())
    }
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Surface {
    /// Everything (no `[admin] listen`).
    All,
    /// Everything but the console and the API.
    Public,
    /// Only the console and the API (`[admin] listen`).
    Console,
}

/// Whether a path belongs to the console or the JSON API.
fn is_console_path(path: &str) -> bool {
    ["/admin", "/api"].iter().any(|p| {
        path == *p
            || path
                .strip_prefix(p)
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// Answers 404 for what this listener does not serve, as if it had no such routes.
async fn keep_to_surface(
    State(surface): State<Surface>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let console = is_console_path(request.uri().path());
    let served = match surface {
        Surface::All => true,
        Surface::Public => !console,
        Surface::Console => console,
    };
    if served {
        next.run(request).await
    } else {
        crate::web::AppError::NotFound.into_response()
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
    // First: a metrics address that cannot be bound stops the start before any task runs.
    let metrics_tasks = start_metrics(&app.state, token.clone()).await?;
    // So does a console address that cannot be bound.
    let console_listener = match app.state.config.admin.listen {
        Some(addr) => match TcpListener::bind(addr).await {
            Ok(listener) => Some(listener),
            Err(err) => {
                token.cancel();
                return Err(std::io::Error::new(
                    err.kind(),
                    format!("cannot listen on {addr} for the console and API: {err}. Fix: choose a free address with `[admin] listen`"),
                ));
            }
        },
        None => None,
    };
    let worker = app.state.config.m365.sync.worker;
    let duty = worker.then(|| {
        tokio::spawn(app.state.duty.clone().keep(
            app.state.store.clone(),
            app.state.config.node_name(),
            Duration::from_secs(app.state.config.m365.sync.lease_seconds.max(3)),
            token.clone(),
        ))
    });
    let janitor = tokio::spawn(purge_expired(app.state.clone(), token.clone()));
    let change_poll = tokio::spawn(poll_changes(app.state.clone(), token.clone()));
    let signing_reload = tokio::spawn(reload_signing(app.state.clone(), token.clone()));
    let microsoft_keys = app.state.config.saml.m365_metadata_url.clone().map(|url| {
        tokio::spawn(refresh_microsoft_keys(
            app.state.clone(),
            url,
            token.clone(),
        ))
    });
    let sync_worker = worker.then(|| tokio::spawn(app.state.sync.clone().run(token.clone())));
    let console = console_listener.map(|listener| {
        let router = app.console_router();
        let settings = app.state.config.server.clone();
        let stop = token.clone();
        tokio::spawn(async move {
            if let Err(err) = serve(listener, router, &settings, async move {
                stop.cancelled().await
            })
            .await
            {
                tracing::warn!(%err, "the console listener stopped");
            }
        })
    });
    let router = app.router();
    let serve_token = token.clone();
    let result = serve(listener, router, &app.state.config.server, async move {
        tokio::select! {
            _ = shutdown => {},
            _ = serve_token.cancelled() => {},
        }
    })
    .await;
    token.cancel();
    app.state
        .self_service
        .finish_deliveries(Duration::from_secs(
            app.state.config.server.shutdown_timeout_seconds,
        ))
        .await;
    let _ = janitor.await;
    let _ = change_poll.await;
    let _ = signing_reload.await;
    if let Some(task) = microsoft_keys {
        let _ = task.await;
    }
    if let Some(sync_worker) = sync_worker {
        let _ = sync_worker.await;
    }
    // Last: the chores' lease is given up once the worker stopped doing them.
    if let Some(duty) = duty {
        let _ = duty.await;
    }
    for task in metrics_tasks {
        let _ = task.await;
    }
    if let Some(task) = console {
        let _ = task.await;
    }
    for task in app.tasks {
        let _ = task.await;
    }
    app.state.store.close().await;
    result
}

/// Accepts connections until `shutdown`, each served by hyper with the header-read and idle
/// timeouts and the connection cap of `[server]`; then lets in-flight requests finish for at
/// most `shutdown_timeout_seconds` and drops whatever is left.
async fn serve(
    listener: TcpListener,
    router: Router,
    settings: &crate::config::ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let permits = Arc::new(tokio::sync::Semaphore::new(settings.max_connections));
    let header_read = Duration::from_secs(settings.header_read_timeout_seconds);
    let idle = Duration::from_secs(settings.idle_timeout_seconds);
    let deadline = Duration::from_secs(settings.shutdown_timeout_seconds);
    let draining = CancellationToken::new();
    let abandon = CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(%err, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Responses go out as soon as they are written: with Nagle's algorithm a response
        // written in two parts waits for the client's delayed ACK (up to 40 ms on Linux).
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%err, "cannot set TCP_NODELAY");
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracker.spawn(shed(stream));
            continue;
        };
        let router = router.clone();
        let draining = draining.clone();
        let abandon = abandon.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let activity = Arc::new(Activity::default());
            activity.touch();
            let io = TokioIo::new(Tracked {
                inner: stream,
                activity: activity.clone(),
            });
            let service = hyper::service::service_fn(
                move |mut request: axum::http::Request<hyper::body::Incoming>| {
                    request
                        .extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    tower::ServiceExt::oneshot(router.clone(), request)
                },
            );
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_read)
                .keep_alive(true);
            let conn = builder.serve_connection(io, service);
            tokio::pin!(conn);
            let mut tick = tokio::time::interval(Duration::from_millis(500).min(idle));
            let mut closing = false;
            loop {
                tokio::select! {
                    _ = conn.as_mut() => break,
                    _ = abandon.cancelled() => break,
                    _ = draining.cancelled(), if !closing => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    _ = tick.tick(), if !closing => {
                        if activity.idle_for() >= idle {
                            closing = true;
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    tracker.close();
    draining.cancel();
    if tokio::time::timeout(deadline, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = tracker.len(),
            "shutdown deadline passed; closing connections with requests still in flight"
        );
        abandon.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), tracker.wait()).await;
    }
    Ok(())
}

/// Over the connection cap: a minimal 503 and close, without reading the request.
async fn shed(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 23\r\nRetry-After: 5\r\nConnection: close\r\n\r\nidbridge is too busy.\r\n";
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(BUSY).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// When a connection last moved a byte (milliseconds on a process-wide monotonic clock).
#[derive(Default)]
struct Activity {
    last_ms: std::sync::atomic::AtomicU64,
}

fn monotonic_ms() -> u64 {
    static START: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(tokio::time::Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(monotonic_ms(), std::sync::atomic::Ordering::Relaxed);
    }
    fn idle_for(&self) -> Duration {
        let last = self.last_ms.load(std::sync::atomic::Ordering::Relaxed);
        Duration::from_millis(monotonic_ms().saturating_sub(last))
    }
}

/// A TCP stream that records when it last read or wrote.
struct Tracked {
    inner: tokio::net::TcpStream,
    activity: Arc<Activity>,
}

impl tokio::io::AsyncRead for Tracked {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        poll
    }
}

impl tokio::io::AsyncWrite for Tracked {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let poll = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(poll, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is called, not when the
/// future is first polled: a SIGTERM arriving after the listener answers but before the
/// server's shutdown future runs must stop it gracefully, not kill the process (the default
/// action of an unhandled SIGTERM).
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        async move {
            let term = async {
                match term {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            let interrupt = async {
                match interrupt {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = term => {},
                _ = interrupt => {},
            }
            tracing::info!("shutdown requested; finishing in-flight requests");
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown requested; finishing in-flight requests");
    }
}

/// How often the database's change counter is read, so that a user, binding or session changed
/// by the CLI or another node reaches the session cache: the longest such a change can go
/// unseen by a sign-in with an existing session.
const CHANGE_POLL: Duration = Duration::from_millis(100);

async fn poll_changes(state: AppState, token: CancellationToken) {
    let mut tick = tokio::time::interval(CHANGE_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {
                match state.store.poll_changes().await {
                    Ok(_) => failing = false,
                    Err(err) if !failing => {
                        failing = true;
                        tracing::warn!(%err, "could not read the change counter; cached sessions may be stale until it can be read");
                    }
                    Err(_) => {}
                }
            }
        }
    }
}

/// Signs with what a rollover step on any node (or the CLI) stored, and uses the settings
/// admins entered in the console on any node, within [`crate::certs::rollover::RELOAD_EVERY`].
async fn reload_signing(state: AppState, token: CancellationToken) {
    let mut tick = tokio::time::interval(crate::certs::rollover::RELOAD_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {
                match state.reload_signing().await {
                    Ok(_) => failing = false,
                    Err(err) if !failing => {
                        failing = true;
                        tracing::warn!(%err, "could not read the stored signing certificates; signing with the ones read before");
                    }
                    Err(_) => {}
                }
                // What admins changed in the console on another node (or the CLI).
                match state.m365.load_registration().await {
                    Ok(true) => tracing::info!("the Microsoft 365 app registration changed: using it"),
                    Ok(false) => {}
                    Err(err) => tracing::warn!(%err, "could not read the app registration entered in the console; using the one read before"),
                }
                match state.idp.service_providers().load_registered(&state.store).await {
                    Ok(true) => tracing::info!("the service providers registered in the console changed: using them"),
                    Ok(false) => {}
                    Err(err) => tracing::warn!(%err, "could not read the service providers registered in the console; using the ones read before"),
                }
                match state.branding.load().await {
                    Ok(true) => tracing::info!("the branding changed: using it"),
                    Ok(false) => {}
                    Err(err) => tracing::warn!(%err, "could not read the branding; using the one read before"),
                }
            }
        }
    }
}

/// How often Microsoft's federation metadata is read again; after a failure, sooner.
const MICROSOFT_METADATA_EVERY: Duration = Duration::from_secs(24 * 60 * 60);
const MICROSOFT_METADATA_RETRY: Duration = Duration::from_secs(5 * 60);

/// Trusts the signing certificates of Microsoft's federation metadata for Microsoft's SAML
/// messages, read at start and every day: Microsoft rolls its keys and publishes the next
/// one there first. A failed read keeps the keys read before (none at first: signed
/// requests are then refused) and is reported by `/readyz`.
async fn refresh_microsoft_keys(state: AppState, url: String, token: CancellationToken) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
    {
        Ok(c) => c,
        Err(err) => {
            tracing::error!(%err, "cannot build the HTTP client for Microsoft's metadata");
            return;
        }
    };
    loop {
        let wait = match fetch_metadata_keys(&client, &url).await {
            Ok(keys) => {
                tracing::info!(url = %url, certificates = ?keys.fingerprints(), "read Microsoft's signing certificates");
                if let Some(m365) = state
                    .idp
                    .service_providers()
                    .get(crate::sso::M365_ENTITY_ID)
                {
                    m365.verification_keys.replace(Arc::new(keys));
                }
                *state
                    .m365_metadata_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = None;
                MICROSOFT_METADATA_EVERY
            }
            Err(err) => {
                tracing::warn!(url = %url, %err, "cannot read Microsoft's federation metadata; keeping the certificates read before");
                *state
                    .m365_metadata_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(err);
                MICROSOFT_METADATA_RETRY
            }
        };
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn fetch_metadata_keys(
    client: &reqwest::Client,
    url: &str,
) -> Result<crate::saml::verify::VerificationKeys, String> {
    let response = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("{url} answered {}", response.status()));
    }
    let body = response.bytes().await.map_err(|e| e.to_string())?;
    crate::saml::verify::VerificationKeys::from_metadata(&body).map_err(|e| e.to_string())
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
                // Each node counts its own refusals; the purges are one node's chore.
                flush_refusals(&state, false).await;
                if !state.duty.held() {
                    continue;
                }
                let now = chrono::Utc::now().timestamp_millis();
                if let Err(err) = state.store.purge_expired_saml_state(now).await {
                    tracing::warn!(%err, "could not purge expired SAML state");
                }
                if let Err(err) = state.passkeys.purge_expired(chrono::Utc::now()).await {
                    tracing::warn!(%err, "could not purge expired passkey ceremonies");
                }
                let idle_ms = (state.config.admin.session_idle_minutes.max(1) * 60_000) as i64;
                if let Err(err) = state.store.purge_admin_sessions(now, idle_ms).await {
                    tracing::warn!(%err, "could not purge expired console sessions");
                }
                state.m365.end_abandoned_imports(chrono::Utc::now()).await;
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
    // Reset links are kept a day past their expiry, so a late click still gets "expired".
    if let Err(err) = state.store.purge_reset_tokens(now_ms - 86_400_000).await {
        tracing::warn!(%err, "could not purge old password-reset links");
    }
    // The overview charts 30 days of sync counts; a day more covers the oldest partial day.
    if let Err(err) = state.store.purge_sync_tally(now_ms - 31 * 86_400_000).await {
        tracing::warn!(%err, "could not purge old sync counts");
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

/// Starts the metrics upkeep and, with `[metrics] listen`, the separate metrics listener.
async fn start_metrics(
    state: &AppState,
    token: CancellationToken,
) -> std::io::Result<Vec<tokio::task::JoinHandle<()>>> {
    let Some(handle) = state.metrics.clone() else {
        return Ok(Vec::new());
    };
    let listener = match state.config.metrics.listen {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|err| {
            std::io::Error::new(
                err.kind(),
                format!("cannot listen on {addr} for metrics: {err}. Fix: choose a free address with `[metrics] listen`"),
            )
        })?),
        None => None,
    };
    let mut tasks = Vec::new();
    let upkeep_token = token.clone();
    // Histograms are buffered until drained; draining on a timer keeps memory flat when
    // nobody scrapes.
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = upkeep_token.cancelled() => return,
                _ = tick.tick() => handle.run_upkeep(),
            }
        }
    }));
    if let Some(listener) = listener {
        let router = Router::new()
            .route("/metrics", get(metrics))
            .fallback(|| async { crate::web::AppError::NotFound })
            .layer(SetResponseHeaderLayer::if_not_present(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ))
            .layer(SetResponseHeaderLayer::if_not_present(
                header::CONTENT_SECURITY_POLICY,
                crate::web::front_door::page_csp(),
            ))
            .with_state(state.clone());
        tasks.push(tokio::spawn(async move {
            let stop = token.clone();
            if let Err(err) = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
            {
                tracing::warn!(%err, "the metrics listener stopped");
            }
        }));
    }
    Ok(tasks)
}

/// `/metrics`: Prometheus text format. Gauges of state held elsewhere (the outbox, the pool,
/// caches, the certificate) are read now, so a scrape always sees current values.
async fn metrics(State(state): State<AppState>) -> axum::response::Response {
    let Some(handle) = &state.metrics else {
        return crate::web::AppError::NotFound.into_response();
    };
    let snapshot = metrics_snapshot(&state, chrono::Utc::now()).await;
    crate::telemetry::metrics::observe(&snapshot);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        handle.render(),
    )
        .into_response()
}

/// Reads the scrape-time gauges as of `now`.
async fn metrics_snapshot(
    state: &AppState,
    now: chrono::DateTime<chrono::Utc>,
) -> crate::telemetry::metrics::Snapshot {
    use crate::telemetry::metrics::{OutboxGauges, Snapshot};
    let now_ms = now.timestamp_millis();
    let outbox = match state.store.outbox_depth().await {
        Ok(depth) => Some(OutboxGauges {
            queued: depth.queued,
            failed: depth.failed,
            oldest_age_seconds: depth
                .oldest_queued_at
                .map_or(0.0, |at| (now_ms - at).max(0) as f64 / 1000.0),
        }),
        Err(err) => {
            tracing::warn!(%err, "could not read the outbox for /metrics");
            None
        }
    };
    let (pool_size, pool_idle) = state.store.pool_use();
    let until_expiry = state.idp.signing().not_after() - now;
    Snapshot {
        replay_ids_held: state.idp.replay_ids_held(),
        replay_ids_max: state.config.saml.replay_max_ids,
        session_cache: state.idp.session_cache_stats(),
        outbox,
        cert_expiry_seconds: until_expiry.num_milliseconds() as f64 / 1000.0,
        pool_size,
        pool_idle,
    }
}

async fn healthz() -> &'static str {
    "ok"
}

/// How old the oldest queued Microsoft 365 change may be before `/readyz` flags the outbox.
const OUTBOX_AGE_WARNING_SECONDS: i64 = 900;
/// Days before the signing certificate expires at which `/readyz` flags it.
const CERTIFICATE_WARNING_DAYS: i64 = 30;

/// What to do about a signing certificate that expires in `days_left` days, by where its
/// rollover stands.
pub fn expiry_warning(days_left: i64, stage: crate::certs::rollover::RolloverStage) -> String {
    use crate::certs::rollover::RolloverStage;
    let fix = match stage {
        RolloverStage::NextPrepared => {
            "promote the prepared next certificate (`idbridge cert promote`, or the console's SAML page)"
        }
        RolloverStage::Steady | RolloverStage::Promoted => {
            "roll it over: `idbridge cert next`, then `idbridge cert promote` (or the console's SAML page); Microsoft 365 is told through Graph"
        }
    };
    format!("the signing certificate expires in {days_left} days: {fix}")
}

/// Readiness, per dependency, as JSON. Only an unreachable database makes the node unready
/// (503): a load balancer should not take a node out because Microsoft 365 or a certificate
/// needs an admin, but the body says so, with what to do.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let now = chrono::Utc::now();
    let database = state.store.ping().await;
    let mut warnings: Vec<String> = Vec::new();
    let signing_set = state.idp.signing_set();
    let signing = signing_set.current.clone();
    let days_left = (signing.not_after() - now).num_days();
    if days_left < CERTIFICATE_WARNING_DAYS {
        warnings.push(expiry_warning(days_left, signing_set.stage()));
    }
    let name_mismatch = crate::certs::name_mismatch(&state.config, &signing);
    warnings.extend(name_mismatch.clone());
    let microsoft_keys = state
        .idp
        .service_providers()
        .get(crate::sso::M365_ENTITY_ID)
        .and_then(|sp| sp.verification_keys.get());
    let metadata_error = state
        .m365_metadata_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some(err) = &metadata_error {
        warnings.push(format!(
            "Microsoft's federation metadata could not be read ({err}); {}",
            if microsoft_keys.is_some() {
                "the certificates read before are still trusted"
            } else if state.config.saml.m365_signed_requests {
                "Microsoft's signed sign-in requests are refused until it can be read"
            } else {
                "Microsoft's messages are not checked against its certificates meanwhile"
            }
        ));
    }
    let m365 = if database {
        state.m365.status().await.ok().map(|s| s.state)
    } else {
        None
    };
    if m365.as_deref() == Some("reconnect") {
        warnings.push(
            "Microsoft 365 refused idbridge's token: reconnect it in the console (changes wait meanwhile)".into(),
        );
    }
    // The federated domains against what idbridge would send: checked in the background at
    // most every few minutes (a probe never waits for Graph), the last result reported.
    let (federation, due) = state.m365.federation_check(now);
    if due && m365.as_deref() == Some("connected") {
        let checker = state.clone();
        tokio::spawn(async move {
            let signing = checker.idp.signing_set();
            // Fresh from the database: a domain the CLI or another node just federated counts.
            let known = match crate::m365::federation::KnownFederations::load(&checker.store).await
            {
                Ok(known) => Arc::new(known),
                Err(_) => checker.idp.federations(),
            };
            let config = checker.config.clone();
            checker
                .m365
                .check_federation(
                    |d| signing.federation_settings(&config, d, &known),
                    chrono::Utc::now(),
                )
                .await;
        });
    }
    let federation = federation.filter(|_| m365.as_deref() == Some("connected"));
    for domain in federation.iter().flat_map(|f| &f.domains) {
        if !domain.drift.is_empty() {
            let properties: Vec<&str> = domain.drift.iter().map(|d| d.property.as_str()).collect();
            warnings.push(format!(
                "Microsoft's federation of {} differs from idbridge in {}: see `idbridge m365 domains`",
                domain.domain,
                properties.join(", ")
            ));
        }
    }
    let outbox = if database {
        state.store.outbox_depth().await.ok()
    } else {
        None
    };
    let oldest_age = outbox
        .as_ref()
        .and_then(|o| o.oldest_queued_at)
        .map(|at| (now.timestamp_millis() - at).max(0) / 1000);
    if oldest_age.is_some_and(|age| age > OUTBOX_AGE_WARNING_SECONDS) {
        warnings.push(format!(
            "the oldest change for Microsoft 365 has waited {} s: see `idbridge m365 sync`",
            oldest_age.unwrap_or_default()
        ));
    }
    let body = serde_json::json!({
        "status": if database { "ready" } else { "unready" },
        "checks": {
            "database": {"ok": database},
            "signingCertificate": {
                "ok": days_left >= CERTIFICATE_WARNING_DAYS && name_mismatch.is_none(),
                "subject": signing.subject(),
                "notAfter": signing.not_after().to_rfc3339(),
                "daysLeft": days_left,
                "matchesBaseUrl": name_mismatch.is_none(),
                "rollover": signing_set.stage(),
                "next": signing_set.next.as_ref().map(|n| n.fingerprint_sha256()),
                "previous": signing_set.previous.as_ref().map(|p| &p.fingerprint_sha256),
            },
            "m365": {"ok": m365.as_deref() != Some("reconnect"), "state": m365},
            "microsoftCertificates": {
                "ok": metadata_error.is_none()
                    && (microsoft_keys.is_some() || !state.config.saml.m365_signed_requests),
                "sha256": microsoft_keys.as_ref().map(|k| k.fingerprints().to_vec()),
                "error": metadata_error,
            },
            "federation": {
                "ok": federation.as_ref().is_none_or(|f| f.ok()),
                "checkedAt": federation.as_ref().map(|f| f.checked_at.to_rfc3339()),
                "domains": federation.as_ref().map(|f| &f.domains),
                "error": federation.as_ref().and_then(|f| f.error.clone()),
            },
            "outbox": {
                "ok": oldest_age.is_none_or(|age| age <= OUTBOX_AGE_WARNING_SECONDS),
                "queued": outbox.as_ref().map(|o| o.queued),
                "failed": outbox.as_ref().map(|o| o.failed),
                "oldestQueuedAgeSeconds": oldest_age,
            },
        },
        "warnings": warnings,
    });
    let status = if database {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(body),
    )
}
