//! Prometheus metrics: the recorder, its handle, and the name of every metric.
//!
//! Domain code records with the `metrics` macros (`metrics::counter!(names::…)`), which cost
//! an atomic add when no recorder is installed (the CLI) and write to the exporter's registry
//! when one is (the server). `/metrics` renders the registry after [`observe`] set the gauges
//! that are read at scrape time. Labels are low-cardinality by design: kinds, reasons,
//! statuses and forms, never user names, addresses or entity IDs.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// The name of every metric idbridge exports; contrib/ dashboards and alerts use these.
pub mod names {
    /// SAML Responses issued, by service provider kind (`sp`: m365 | other).
    pub const SSO_RESPONSES: &str = "idbridge_sso_responses_total";
    /// Sign-ins refused after authentication, by `reason` (`Refusal::code()`).
    pub const SSO_REFUSALS: &str = "idbridge_sso_refusals_total";
    /// SAML messages refused as malformed, unsigned, replayed or expired, by `endpoint`.
    pub const SAML_REQUESTS_REJECTED: &str = "idbridge_saml_requests_rejected_total";
    /// Time to answer `/saml/sso` and `/saml/login*`, by `route`.
    pub const SSO_DURATION: &str = "idbridge_sso_request_duration_seconds";
    /// Second-factor checks at sign-in, by `factor` and `outcome` (passed | failed).
    pub const MFA_CHECKS: &str = "idbridge_mfa_checks_total";
    /// Wrong passwords (or codes), by `form` (sso | admin | mfa | password_reset).
    pub const SIGN_IN_FAILURES: &str = "idbridge_sign_in_failures_total";
    /// Attempts refused by the throttle, by `form` and `reason` (locked | crowded).
    pub const SIGN_IN_THROTTLED: &str = "idbridge_sign_in_throttled_total";
    /// Password hashes (argon2id) running on a worker now.
    pub const HASHES_IN_FLIGHT: &str = "idbridge_password_hashes_in_flight";
    /// Password hashes waiting for a worker now.
    pub const HASHES_QUEUED: &str = "idbridge_password_hashes_queued";
    /// Password checks refused because every worker was busy and the queue full (503).
    pub const HASHES_REFUSED: &str = "idbridge_password_hashes_refused_total";
    /// Answered SAML request IDs held in memory for replay checks.
    pub const REPLAY_IDS_HELD: &str = "idbridge_replay_ids_held";
    /// The `[saml] replay_max_ids` bound of the replay cache.
    pub const REPLAY_IDS_MAX: &str = "idbridge_replay_ids_max";
    /// Sign-in sessions answered from the session cache.
    pub const SESSION_CACHE_HITS: &str = "idbridge_session_cache_hits_total";
    /// Sign-in sessions read from the database.
    pub const SESSION_CACHE_MISSES: &str = "idbridge_session_cache_misses_total";
    /// Microsoft 365 changes in the outbox, by `state` (queued | failed).
    pub const OUTBOX_JOBS: &str = "idbridge_outbox_jobs";
    /// Age of the oldest queued outbox job in seconds (0 when none waits).
    pub const OUTBOX_OLDEST_AGE: &str = "idbridge_outbox_oldest_job_age_seconds";
    /// HTTP exchanges with Microsoft Graph, by `method` and `status` (`network`: no answer);
    /// `method="BATCH"` is a `$batch` envelope, each of its sub-requests counted by its method.
    pub const GRAPH_REQUESTS: &str = "idbridge_graph_requests_total";
    /// Graph answers of 429, by `method` and whether they carried Retry-After.
    pub const GRAPH_THROTTLED: &str = "idbridge_graph_throttled_total";
    /// Access-token refreshes with Microsoft, by `outcome` (ok | refused | error).
    pub const TOKEN_REFRESHES: &str = "idbridge_m365_token_refreshes_total";
    /// Microsoft 365 import runs, by `outcome` (finished | failed).
    pub const IMPORT_RUNS: &str = "idbridge_m365_import_runs_total";
    /// Users imported from Microsoft 365.
    pub const IMPORTED_USERS: &str = "idbridge_m365_imported_users_total";
    /// Seconds until the signing certificate's notAfter (negative once expired).
    pub const CERT_EXPIRY: &str = "idbridge_signing_certificate_expiry_seconds";
    /// Database pool connections, by `state` (idle | in_use).
    pub const DB_POOL_CONNECTIONS: &str = "idbridge_db_pool_connections";

    /// Every name above, for tests and documentation.
    pub const ALL: &[&str] = &[
        SSO_RESPONSES,
        SSO_REFUSALS,
        SAML_REQUESTS_REJECTED,
        SSO_DURATION,
        MFA_CHECKS,
        SIGN_IN_FAILURES,
        SIGN_IN_THROTTLED,
        HASHES_IN_FLIGHT,
        HASHES_QUEUED,
        HASHES_REFUSED,
        REPLAY_IDS_HELD,
        REPLAY_IDS_MAX,
        SESSION_CACHE_HITS,
        SESSION_CACHE_MISSES,
        OUTBOX_JOBS,
        OUTBOX_OLDEST_AGE,
        GRAPH_REQUESTS,
        GRAPH_THROTTLED,
        TOKEN_REFRESHES,
        IMPORT_RUNS,
        IMPORTED_USERS,
        CERT_EXPIRY,
        DB_POOL_CONNECTIONS,
    ];
}

/// Why the recorder could not be installed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot set up the metrics histograms: {0}")]
    Build(String),
    #[error("another metrics recorder is already installed in this process")]
    AlreadyInstalled,
}

/// SSO latency buckets in seconds: a signature is about a millisecond, an argon2id check
/// tens of milliseconds, anything near a second is a problem.
const SSO_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The process's recorder handle, or why it could not be installed. The `metrics` facade has
/// one global recorder per process, so every [`App`](crate::server::App) built in it (the
/// integration tests build many, on several threads at once) shares this one; the first build
/// installs it while the others wait.
static HANDLE: OnceLock<Result<PrometheusHandle, MetricsError>> = OnceLock::new();

/// Installs the Prometheus recorder once per process and returns its handle.
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    HANDLE.get_or_init(install_once).clone()
}

fn install_once() -> Result<PrometheusHandle, MetricsError> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(names::SSO_DURATION.into()), SSO_BUCKETS)
        .map_err(|e| MetricsError::Build(e.to_string()))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| MetricsError::AlreadyInstalled)?;
    describe();
    zero();
    Ok(handle)
}

/// Exports 0 for every counter series whose labels are known in advance, so dashboards,
/// alerts and `rate()` see a series from the first scrape instead of "no data" until the
/// first event.
fn zero() {
    use crate::mfa::FactorKind;
    use crate::sso::Refusal;
    use crate::throttle::Form;
    let forms = [
        Form::Sso,
        Form::Admin,
        Form::SecondFactor,
        Form::PasswordReset,
    ];
    for form in forms.map(Form::metric_label) {
        metrics::counter!(names::SIGN_IN_FAILURES, "form" => form).absolute(0);
        for reason in ["locked", "crowded"] {
            metrics::counter!(names::SIGN_IN_THROTTLED, "form" => form, "reason" => reason)
                .absolute(0);
        }
    }
    for sp in [sp_kind(true), sp_kind(false)] {
        metrics::counter!(names::SSO_RESPONSES, "sp" => sp).absolute(0);
    }
    let refusals = [
        Refusal::NotBound,
        Refusal::Suspended,
        Refusal::PasswordExpired,
    ];
    for reason in refusals.map(Refusal::code) {
        metrics::counter!(names::SSO_REFUSALS, "reason" => reason).absolute(0);
    }
    for endpoint in ["/saml/sso", "/saml/login", "/saml/slo"] {
        metrics::counter!(names::SAML_REQUESTS_REJECTED, "endpoint" => endpoint).absolute(0);
    }
    let factors = [
        FactorKind::Totp,
        FactorKind::Passkey,
        FactorKind::RecoveryCode,
    ];
    for factor in factors.map(FactorKind::as_str) {
        metrics::counter!(names::MFA_CHECKS, "factor" => factor, "outcome" => "passed").absolute(0);
    }
    for factor in ["code", "totp", "passkey"] {
        metrics::counter!(names::MFA_CHECKS, "factor" => factor, "outcome" => "failed").absolute(0);
    }
    metrics::counter!(names::HASHES_REFUSED).absolute(0);
    metrics::gauge!(names::HASHES_IN_FLIGHT).increment(0.0);
    metrics::gauge!(names::HASHES_QUEUED).increment(0.0);
    for method in ["GET", "POST", "PATCH", "PUT", "DELETE", "BATCH"] {
        metrics::counter!(names::GRAPH_REQUESTS, "method" => method, "status" => "200").absolute(0);
        for with in ["true", "false"] {
            metrics::counter!(names::GRAPH_THROTTLED, "method" => method, "retry_after" => with)
                .absolute(0);
        }
    }
    for outcome in ["ok", "refused", "error"] {
        metrics::counter!(names::TOKEN_REFRESHES, "outcome" => outcome).absolute(0);
    }
    for outcome in ["finished", "failed"] {
        metrics::counter!(names::IMPORT_RUNS, "outcome" => outcome).absolute(0);
    }
    metrics::counter!(names::IMPORTED_USERS).absolute(0);
    // The latency histogram appears with the first sign-in step: an empty histogram has no
    // series to export.
}

/// HELP lines for the scrape.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(names::SSO_RESPONSES, "SAML Responses issued");
    describe_counter!(names::SSO_REFUSALS, "Sign-ins refused after authentication");
    describe_counter!(names::SAML_REQUESTS_REJECTED, "SAML messages refused");
    describe_histogram!(
        names::SSO_DURATION,
        Unit::Seconds,
        "Time to answer /saml/sso and /saml/login*"
    );
    describe_counter!(names::MFA_CHECKS, "Second-factor checks at sign-in");
    describe_counter!(names::SIGN_IN_FAILURES, "Wrong passwords or codes");
    describe_counter!(names::SIGN_IN_THROTTLED, "Attempts refused by the throttle");
    describe_gauge!(names::HASHES_IN_FLIGHT, "Password hashes running now");
    describe_gauge!(names::HASHES_QUEUED, "Password hashes waiting for a worker");
    describe_counter!(names::HASHES_REFUSED, "Password checks refused as busy");
    describe_gauge!(
        names::REPLAY_IDS_HELD,
        "SAML request IDs held for replay checks"
    );
    describe_gauge!(names::REPLAY_IDS_MAX, "Bound of the replay cache");
    describe_counter!(names::SESSION_CACHE_HITS, "Sessions from the cache");
    describe_counter!(names::SESSION_CACHE_MISSES, "Sessions from the database");
    describe_gauge!(names::OUTBOX_JOBS, "Microsoft 365 changes in the outbox");
    describe_gauge!(
        names::OUTBOX_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest queued outbox job"
    );
    describe_counter!(names::GRAPH_REQUESTS, "HTTP exchanges with Microsoft Graph");
    describe_counter!(names::GRAPH_THROTTLED, "Graph answers of 429");
    describe_counter!(names::TOKEN_REFRESHES, "Access-token refreshes");
    describe_counter!(names::IMPORT_RUNS, "Microsoft 365 import runs");
    describe_counter!(names::IMPORTED_USERS, "Users imported from Microsoft 365");
    describe_gauge!(
        names::CERT_EXPIRY,
        Unit::Seconds,
        "Seconds until the signing certificate expires"
    );
    describe_gauge!(names::DB_POOL_CONNECTIONS, "Database pool connections");
}

/// What `/metrics` reads at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub replay_ids_held: usize,
    pub replay_ids_max: usize,
    /// Session cache (hits, misses) since start.
    pub session_cache: (u64, u64),
    /// The outbox; None when the database could not be read (the gauges keep their values).
    pub outbox: Option<OutboxGauges>,
    /// Seconds until the signing certificate's notAfter.
    pub cert_expiry_seconds: f64,
    pub pool_size: u32,
    pub pool_idle: usize,
}

/// The outbox gauges.
#[derive(Debug, Clone, Default)]
pub struct OutboxGauges {
    pub queued: i64,
    pub failed: i64,
    /// Seconds since the oldest queued job was written (0: none waits).
    pub oldest_age_seconds: f64,
}

/// Sets the scrape-time gauges from `snapshot`.
pub fn observe(snapshot: &Snapshot) {
    metrics::gauge!(names::REPLAY_IDS_HELD).set(snapshot.replay_ids_held as f64);
    metrics::gauge!(names::REPLAY_IDS_MAX).set(snapshot.replay_ids_max as f64);
    let (hits, misses) = snapshot.session_cache;
    metrics::counter!(names::SESSION_CACHE_HITS).absolute(hits);
    metrics::counter!(names::SESSION_CACHE_MISSES).absolute(misses);
    if let Some(outbox) = &snapshot.outbox {
        metrics::gauge!(names::OUTBOX_JOBS, "state" => "queued").set(outbox.queued as f64);
        metrics::gauge!(names::OUTBOX_JOBS, "state" => "failed").set(outbox.failed as f64);
        metrics::gauge!(names::OUTBOX_OLDEST_AGE).set(outbox.oldest_age_seconds);
    }
    metrics::gauge!(names::CERT_EXPIRY).set(snapshot.cert_expiry_seconds);
    let idle = snapshot.pool_idle as f64;
    let in_use = (f64::from(snapshot.pool_size) - idle).max(0.0);
    metrics::gauge!(names::DB_POOL_CONNECTIONS, "state" => "idle").set(idle);
    metrics::gauge!(names::DB_POOL_CONNECTIONS, "state" => "in_use").set(in_use);
}

/// A service provider kind for labels: the built-in Microsoft 365 or any other.
pub fn sp_kind(is_m365: bool) -> &'static str {
    if is_m365 {
        "m365"
    } else {
        "other"
    }
}
