//! The Microsoft Graph client: every Graph call of idbridge goes through it, so throttling,
//! retries, error envelopes, paging and the rule "a token only ever goes to Graph" live here.

mod batch;
mod error;
mod model;
mod retry;
#[cfg(test)]
mod tests;

use std::time::Duration;

use reqwest::header::{HeaderMap, ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};
use tracing::{debug, warn};
use url::Url;

pub use batch::{BatchRequest, BatchResponse};
pub use error::GraphError;
pub use model::{DeltaPage, GraphDomain, GraphUser, Page, USER_SELECT};
pub use retry::RetryPolicy;

use error::Envelope;
use model::Collection;
use retry::{is_throttled, may_retry_status, Attempts};

/// Graph refuses `$top` outside 1..=999.
const MAX_PAGE_SIZE: u32 = 999;
/// Said when a request that is not safe to repeat got no definite answer.
const OUTCOME_UNKNOWN: &str =
    "the request is not safe to repeat and may have been applied; check before sending it again";

/// The client for one Graph endpoint (`https://graph.microsoft.com/v1.0` or a national cloud's).
#[derive(Debug, Clone)]
pub struct GraphClient {
    http: reqwest::Client,
    /// The version root without a trailing slash, e.g. `https://graph.microsoft.com/v1.0`.
    base_url: String,
    /// Where tokens may be sent; `@odata.nextLink`s elsewhere are refused.
    origin: url::Origin,
    policy: RetryPolicy,
}

/// What Graph answered to one exchange.
#[derive(Debug)]
struct Answer {
    status: u16,
    request_id: Option<String>,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

/// One HTTP exchange that produced no answer.
#[derive(Debug)]
struct TransportError {
    /// The connection could not be made, so the request never left: safe to send again.
    not_sent: bool,
    message: String,
}

impl GraphClient {
    /// `base_url` includes the version, e.g. "https://graph.microsoft.com/v1.0" (configurable
    /// for national clouds and test fakes).
    pub fn new(base_url: &str, policy: RetryPolicy) -> Result<Self, GraphError> {
        let invalid =
            |why: &str| GraphError::Network(format!("invalid Graph URL {base_url:?}: {why}"));
        let trimmed = base_url.trim().trim_end_matches('/');
        let parsed = Url::parse(trimmed).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(parsed.scheme(), "https" | "http") || parsed.host().is_none() {
            return Err(invalid("expected an https:// (or, for fakes, http://) URL"));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() || !parsed.username().is_empty()
        {
            return Err(invalid("expected a URL without query, fragment or user"));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            // A redirect could carry the bearer token to another host.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("idbridge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| GraphError::Network(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Self {
            http,
            base_url: trimmed.to_owned(),
            origin: parsed.origin(),
            policy,
        })
    }

    /// The version root requests are sent to, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// One page of users: the first page when `next_link` is `None`, else the page it points to.
    pub async fn list_users_page(
        &self,
        token: &str,
        next_link: Option<&str>,
        page_size: u32,
    ) -> Result<Page<GraphUser>, GraphError> {
        let url = match next_link {
            Some(link) => self.follow(link)?,
            None => {
                let top = page_size.clamp(1, MAX_PAGE_SIZE).to_string();
                self.url("/users", &[("$select", &select()), ("$top", &top)])?
            }
        };
        let answer = self.send(token, Method::GET, url, None).await?;
        let page: Collection<GraphUser> = decode(&answer)?;
        Ok(Page {
            items: page.value,
            next_link: page.next_link,
        })
    }

    /// Every user, page by page: `on_page` gets each non-empty page; returns the number of users.
    pub async fn list_all_users(
        &self,
        token: &str,
        page_size: u32,
        mut on_page: impl FnMut(Vec<GraphUser>),
    ) -> Result<usize, GraphError> {
        let mut total = 0;
        let mut next: Option<String> = None;
        loop {
            let page = self
                .list_users_page(token, next.as_deref(), page_size)
                .await?;
            total += page.items.len();
            if !page.items.is_empty() {
                on_page(page.items);
            }
            match page.next_link {
                // A link to the page just read would loop forever.
                Some(link) if next.as_deref() == Some(link.as_str()) => {
                    return Err(GraphError::Decode(
                        "a page links to itself as the next page".into(),
                    ));
                }
                Some(link) => next = Some(link),
                None => return Ok(total),
            }
        }
    }

    /// One page of a users delta round (`GET /users/delta`): the first page of a new round
    /// when `link` is `None` (tracking `select`), else the nextLink or deltaLink Graph gave.
    /// A `410 Gone` answer (round expired) is returned as [`GraphError::Api`] with status 410.
    pub async fn users_delta_page(
        &self,
        token: &str,
        link: Option<&str>,
        select: &[&str],
    ) -> Result<DeltaPage, GraphError> {
        let url = match link {
            Some(link) => self.follow(link)?,
            None => self.url("/users/delta", &[("$select", &select.join(","))])?,
        };
        let answer = self.send(token, Method::GET, url, None).await?;
        decode(&answer)
    }

    /// The user with this user principal name, if any.
    pub async fn find_user_by_upn(
        &self,
        token: &str,
        upn: &str,
    ) -> Result<Option<GraphUser>, GraphError> {
        // OData string literal: single quotes, an embedded quote doubled.
        let filter = format!("userPrincipalName eq '{}'", upn.replace('\'', "''"));
        let url = self.url("/users", &[("$filter", &filter), ("$select", &select())])?;
        let answer = self.send(token, Method::GET, url, None).await?;
        let found: Collection<GraphUser> = decode(&answer)?;
        Ok(found.value.into_iter().next())
    }

    /// The user with this object id (or UPN); `None` when Graph does not know it.
    pub async fn get_user(&self, token: &str, id: &str) -> Result<Option<GraphUser>, GraphError> {
        let url = self.url(&format!("/users/{}", encode(id)), &[("$select", &select())])?;
        match self.send(token, Method::GET, url, None).await {
            Ok(answer) => decode(&answer).map(Some),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a user (`POST /users`); never re-sent after a lost answer ([`GraphError::Network`]).
    pub async fn create_user(&self, token: &str, body: &Value) -> Result<GraphUser, GraphError> {
        let url = self.url("/users", &[])?;
        let answer = self.send(token, Method::POST, url, Some(body)).await?;
        decode(&answer)
    }

    /// Changes the given properties of a user (`PATCH /users/{id}`); others keep their values.
    pub async fn update_user(
        &self,
        token: &str,
        id: &str,
        patch: &Value,
    ) -> Result<(), GraphError> {
        let url = self.url(&format!("/users/{}", encode(id)), &[])?;
        self.send(token, Method::PATCH, url, Some(patch)).await?;
        Ok(())
    }

    /// Sets or replaces a user's manager.
    pub async fn set_manager(
        &self,
        token: &str,
        id: &str,
        manager_id: &str,
    ) -> Result<(), GraphError> {
        let url = self.url(&format!("/users/{}/manager/$ref", encode(id)), &[])?;
        let body =
            json!({ "@odata.id": format!("{}/users/{}", self.base_url, encode(manager_id)) });
        self.send(token, Method::PUT, url, Some(&body)).await?;
        Ok(())
    }

    /// Removes a user's manager; a user without one is fine.
    pub async fn remove_manager(&self, token: &str, id: &str) -> Result<(), GraphError> {
        let url = self.url(&format!("/users/{}/manager/$ref", encode(id)), &[])?;
        match self.send(token, Method::DELETE, url, None).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The tenant's domains (all pages).
    pub async fn list_domains(&self, token: &str) -> Result<Vec<GraphDomain>, GraphError> {
        let mut domains = Vec::new();
        let mut url = self.url("/domains", &[])?;
        loop {
            let answer = self.send(token, Method::GET, url, None).await?;
            let page: Collection<GraphDomain> = decode(&answer)?;
            domains.extend(page.value);
            match page.next_link {
                Some(link) => url = self.follow(&link)?,
                None => return Ok(domains),
            }
        }
    }

    /// A domain's federation settings (`internalDomainFederation`), `None` when it has none.
    /// <https://learn.microsoft.com/graph/api/domain-list-federationconfiguration>
    pub async fn domain_federation(
        &self,
        token: &str,
        domain: &str,
    ) -> Result<Option<Map<String, Value>>, GraphError> {
        let url = self.federation_url(domain, None)?;
        let answer = self.send(token, Method::GET, url, None).await?;
        let page: Collection<Map<String, Value>> = decode(&answer)?;
        Ok(page.value.into_iter().next())
    }

    /// Federates a domain: `POST /domains/{id}/federationConfiguration` (201 with the object).
    /// <https://learn.microsoft.com/graph/api/domain-post-federationconfiguration>
    pub async fn create_domain_federation(
        &self,
        token: &str,
        domain: &str,
        body: &Value,
    ) -> Result<Map<String, Value>, GraphError> {
        let url = self.federation_url(domain, None)?;
        let answer = self.send(token, Method::POST, url, Some(body)).await?;
        decode(&answer)
    }

    /// Changes some of a domain's federation settings.
    /// <https://learn.microsoft.com/graph/api/internaldomainfederation-update>
    pub async fn update_domain_federation(
        &self,
        token: &str,
        domain: &str,
        id: &str,
        patch: &Value,
    ) -> Result<(), GraphError> {
        let url = self.federation_url(domain, Some(id))?;
        self.send(token, Method::PATCH, url, Some(patch)).await?;
        Ok(())
    }

    /// Removes a domain's federation: the domain is managed again (cloud passwords).
    /// <https://learn.microsoft.com/graph/api/internaldomainfederation-delete>
    pub async fn delete_domain_federation(
        &self,
        token: &str,
        domain: &str,
        id: &str,
    ) -> Result<(), GraphError> {
        let url = self.federation_url(domain, Some(id))?;
        self.send(token, Method::DELETE, url, None).await?;
        Ok(())
    }

    /// `/domains/{domain}/federationConfiguration[/{id}]`.
    fn federation_url(&self, domain: &str, id: Option<&str>) -> Result<Url, GraphError> {
        let mut path = format!("/domains/{}/federationConfiguration", encode(domain));
        if let Some(id) = id {
            path.push('/');
            path.push_str(&encode(id));
        }
        self.url(&path, &[])
    }

    /// `{base}{path}?{query}`, `path` already encoded; query values are percent-encoded here.
    fn url(&self, path: &str, query: &[(&str, &str)]) -> Result<Url, GraphError> {
        let mut text = format!("{}{}", self.base_url, path);
        for (i, (name, value)) in query.iter().enumerate() {
            text.push(if i == 0 { '?' } else { '&' });
            text.push_str(name);
            text.push('=');
            text.push_str(&encode(value));
        }
        Url::parse(&text).map_err(|e| GraphError::Decode(format!("cannot build a Graph URL: {e}")))
    }

    /// A link Graph gave (`@odata.nextLink`), used verbatim, but only towards Graph's own origin:
    /// the bearer token goes with it.
    fn follow(&self, link: &str) -> Result<Url, GraphError> {
        let url = Url::parse(link)
            .map_err(|e| GraphError::Decode(format!("the next-page link is not a URL: {e}")))?;
        if url.origin() != self.origin {
            warn!(
                link_origin = %url.origin().ascii_serialization(),
                graph_origin = %self.origin.ascii_serialization(),
                "refused a Microsoft Graph next-page link pointing to another host"
            );
            return Err(GraphError::Decode(format!(
                "the next-page link points to {}, not to {}; refused to keep the token with Graph",
                url.origin().ascii_serialization(),
                self.origin.ascii_serialization()
            )));
        }
        Ok(url)
    }

    /// Sends a request, retrying throttled and (when safe) failed attempts; returns the 2xx answer.
    async fn send(
        &self,
        token: &str,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Answer, GraphError> {
        let idempotent = is_idempotent(&method);
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| GraphError::Decode(format!("cannot encode the request: {e}")))?;
        let mut attempts = Attempts::new(&self.policy);
        let path = url.path();
        loop {
            let attempt = attempts.start();
            let answer = match self.exchange(token, &method, &url, body.as_deref()).await {
                Ok(answer) => answer,
                Err(failure) => {
                    let error = failure.message.as_str();
                    if (idempotent || failure.not_sent) && attempts.can_retry() {
                        let wait = attempts.backoff();
                        let wait_ms = wait.as_millis() as u64;
                        warn!(
                            %method, path, attempt, wait_ms, error,
                            "Graph unreachable; retrying"
                        );
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    warn!(%method, path, attempt, error, "Graph unreachable; giving up");
                    return Err(GraphError::Network(if idempotent || failure.not_sent {
                        format!("{} (after {attempt} attempts)", failure.message)
                    } else {
                        format!("{}; {OUTCOME_UNKNOWN}", failure.message)
                    }));
                }
            };
            let status = answer.status;
            let request_id = answer.request_id.as_deref().unwrap_or_default();
            if (200..300).contains(&status) {
                debug!(%method, path, status, attempt, request_id, "Graph answered");
                return Ok(answer);
            }
            if is_throttled(status) {
                if !may_retry_status(status, idempotent) {
                    warn!(
                        %method, path, status, attempt, request_id,
                        "Graph timed out; not repeated"
                    );
                    return Err(GraphError::Network(format!(
                        "Microsoft Graph timed out (HTTP {status}); {OUTCOME_UNKNOWN}"
                    )));
                }
                if attempts.can_retry() {
                    let wait = attempts.delay(answer.retry_after);
                    let wait_ms = wait.as_millis() as u64;
                    warn!(
                        %method, path, status, attempt, request_id, wait_ms,
                        "Graph throttled; retrying"
                    );
                    tokio::time::sleep(wait).await;
                    continue;
                }
                warn!(%method, path, status, attempt, request_id, "Graph throttled; giving up");
                return Err(GraphError::Exhausted {
                    status,
                    attempts: attempt,
                    message: Envelope::from_bytes(status, &answer.body).message,
                });
            }
            let error = GraphError::from_body(status, &answer.body, answer.request_id.clone());
            if status == 401 {
                // Expected when a token was revoked early; the caller refreshes and retries.
                debug!(%method, path, status, request_id, "Graph refused the access token");
            } else {
                warn!(
                    %method, path, status, attempt, request_id, %error,
                    "Graph refused the request"
                );
            }
            return Err(error);
        }
    }

    /// One HTTP exchange: the request with a bearer token and a fresh `client-request-id`.
    async fn exchange(
        &self,
        token: &str,
        method: &Method,
        url: &Url,
        body: Option<&[u8]>,
    ) -> Result<Answer, TransportError> {
        let mut request = self
            .http
            .request(method.clone(), url.clone())
            .bearer_auth(token)
            .header(ACCEPT, "application/json");
        if let Some(id) = client_request_id() {
            request = request.header("client-request-id", id);
        }
        if let Some(body) = body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_vec());
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) => {
                count_exchange(exchange_label(method, url), None, false);
                return Err(TransportError::from(err));
            }
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(|e| {
            count_exchange(exchange_label(method, url), None, false);
            TransportError {
                // The request was sent; only the answer was lost.
                not_sent: false,
                ..TransportError::from(e)
            }
        })?;
        let retry_after = header(&headers, RETRY_AFTER.as_str());
        count_exchange(
            exchange_label(method, url),
            Some(status),
            retry_after.is_some(),
        );
        Ok(Answer {
            status,
            request_id: header(&headers, "request-id"),
            retry_after: retry_after.and_then(|v| retry::parse_retry_after(&v)),
            body: body.to_vec(),
        })
    }
}

impl From<reqwest::Error> for TransportError {
    fn from(e: reqwest::Error) -> Self {
        let not_sent = e.is_connect();
        let timed_out = e.is_timeout();
        // The URL can hold a UPN in $filter; the causes say what went wrong.
        let e = e.without_url();
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        if timed_out {
            message.push_str(" (timed out)");
        }
        TransportError { not_sent, message }
    }
}

/// GET, PUT, PATCH and DELETE of Graph directory objects give the same result when repeated.
/// The method label of an HTTP exchange: `BATCH` for a `$batch` envelope, whose sub-requests
/// are counted by their own method (a refused PATCH inside a batch that answered 200 must show).
fn exchange_label(method: &Method, url: &Url) -> &'static str {
    if url.path().ends_with("/$batch") {
        "BATCH"
    } else {
        metric_method(method)
    }
}

/// Counts one exchange with Graph (`status` None: no answer) and a 429 separately, with
/// whether it said when to come back.
pub(super) fn count_exchange(method: &'static str, status: Option<u16>, retry_after: bool) {
    use crate::telemetry::metrics::names;
    let status_label = status.map_or_else(|| "network".to_string(), |s| s.to_string());
    metrics::counter!(names::GRAPH_REQUESTS, "method" => method, "status" => status_label)
        .increment(1);
    if status == Some(429) {
        let with = if retry_after { "true" } else { "false" };
        metrics::counter!(names::GRAPH_THROTTLED, "method" => method, "retry_after" => with)
            .increment(1);
    }
}

/// The methods idbridge sends, as static labels (anything else is `other`).
pub(super) fn metric_method(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        _ => "other",
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// Reads a 2xx answer's JSON body.
fn decode<T: DeserializeOwned>(answer: &Answer) -> Result<T, GraphError> {
    serde_json::from_slice(&answer.body).map_err(|e| {
        warn!(status = answer.status, request_id = ?answer.request_id, error = %e,
            "unreadable answer from Microsoft Graph");
        GraphError::Decode(e.to_string())
    })
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name)?.to_str().ok().map(str::to_owned)
}

/// The `$select` value for users.
fn select() -> String {
    USER_SELECT.join(",")
}

/// Percent-encodes everything but unreserved characters (and `,`, which lists need and no value
/// we send can hold): quotes, spaces, `#` (else cut off as a fragment), `&`, `+`, `@`, `/`.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b',') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A random GUID-shaped id for `client-request-id`, so one request can be traced at Microsoft.
fn client_request_id() -> Option<String> {
    let mut b = [0u8; 16];
    // The header is optional; without randomness it is better left out than repeated.
    openssl::rand::rand_bytes(&mut b).ok()?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Some(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}
