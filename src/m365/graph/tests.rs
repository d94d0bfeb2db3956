//! Tests against a scripted Graph on 127.0.0.1 (axum), plus a raw TCP server for dropped
//! connections, which axum cannot produce.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method as HttpMethod, Uri};
use axum::response::Response;
use axum::Router;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::retry::{backoff, parse_retry_after, random_unit};
use super::*;

/// A request the fake received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Seen {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
    /// Decoded query parameters.
    fn param(&self, name: &str) -> Option<String> {
        url::form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

/// What the fake answers.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

impl Reply {
    fn json(status: u16, body: Value) -> Self {
        Reply {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: body.to_string(),
        }
    }
    fn empty(status: u16) -> Self {
        Reply {
            status,
            headers: vec![],
            body: String::new(),
        }
    }
    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

type Script = Box<dyn Fn(usize, &Seen) -> Reply + Send + Sync>;

struct FakeState {
    seen: Mutex<Vec<Seen>>,
    script: Script,
}

struct Fake {
    base: String,
    state: Arc<FakeState>,
}

impl Fake {
    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

/// Starts a fake Graph whose answers come from `script(request number, request)`.
async fn fake(script: impl Fn(usize, &Seen) -> Reply + Send + Sync + 'static) -> Fake {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(FakeState {
        seen: Mutex::new(Vec::new()),
        script: Box::new(script),
    });
    let app = Router::new().fallback(answer).with_state(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Fake {
        base: format!("http://{addr}/v1.0"),
        state,
    }
}

async fn answer(
    State(state): State<Arc<FakeState>>,
    method: HttpMethod,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let seen = Seen {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or_default().to_string(),
        headers,
        body: body.to_vec(),
    };
    let n = {
        let mut all = state.seen.lock().unwrap();
        all.push(seen.clone());
        all.len() - 1
    };
    let reply = (state.script)(n, &seen);
    let mut response = Response::builder().status(reply.status);
    for (name, value) in reply.headers {
        response = response.header(name, value);
    }
    response.body(Body::from(reply.body)).unwrap()
}

/// A server that reads each request, then drops the connection (`None`) or answers 200 with
/// the given JSON; returns its base URL and the count of requests read.
async fn dropping_server(answers: Vec<Option<Value>>) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        let mut answers = answers.into_iter();
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read the whole request (headers, then Content-Length bytes of body).
            loop {
                let n = socket.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + length {
                        break;
                    }
                }
            }
            counter.fetch_add(1, Ordering::SeqCst);
            match answers.next().flatten() {
                Some(body) => {
                    let body = body.to_string();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    socket.write_all(response.as_bytes()).await.unwrap();
                    socket.shutdown().await.unwrap();
                }
                None => drop(socket),
            }
        }
    });
    (format!("http://{addr}/v1.0"), count)
}

/// Tiny delays so retry tests run fast; Retry-After is capped at 5 s.
fn quick() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        max_retry_after: Duration::from_secs(5),
    }
}

fn client(base: &str) -> GraphClient {
    GraphClient::new(base, quick()).unwrap()
}

fn user(id: &str) -> Value {
    json!({"id": id, "userPrincipalName": format!("{id}@contoso.com"), "businessPhones": []})
}

fn throttled() -> Reply {
    Reply::json(
        429,
        json!({"error": {"code": "TooManyRequests", "message": "Please retry again later."}}),
    )
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let graph = fake(|n, _| {
        if n == 0 {
            throttled().header("Retry-After", "0.2")
        } else {
            Reply::json(200, user("u1"))
        }
    })
    .await;
    let started = Instant::now();
    let found = client(&graph.base).get_user("tok", "u1").await.unwrap();
    assert_eq!(found.unwrap().id, "u1");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(graph.seen().len(), 2);
}

#[tokio::test]
async fn retry_after_is_capped() {
    let graph = fake(|n, _| {
        if n == 0 {
            throttled().header("Retry-After", "3600")
        } else {
            Reply::json(200, user("u1"))
        }
    })
    .await;
    let policy = RetryPolicy {
        max_retry_after: Duration::from_millis(50),
        ..quick()
    };
    let started = Instant::now();
    let client = GraphClient::new(&graph.base, policy).unwrap();
    assert!(client.get_user("tok", "u1").await.unwrap().is_some());
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn backoff_without_retry_after_then_success() {
    let graph = fake(|n, _| {
        if n < 2 {
            Reply::json(
                503,
                json!({"error": {"code": "serviceNotAvailable", "message": "busy"}}),
            )
        } else {
            Reply::json(200, json!({"value": []}))
        }
    })
    .await;
    let started = Instant::now();
    let domains = client(&graph.base).list_domains("tok").await.unwrap();
    assert!(domains.is_empty());
    assert_eq!(graph.seen().len(), 3);
    // Two backoffs of at most 5 ms and 10 ms: no Retry-After means no long wait.
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn backoff_doubles_is_capped_and_jittered() {
    let policy = RetryPolicy {
        base_delay: Duration::from_millis(500),
        max_delay: Duration::from_secs(3),
        ..RetryPolicy::default()
    };
    let full: Vec<u128> = (0..5)
        .map(|r| backoff(&policy, r, 1.0).as_millis())
        .collect();
    assert_eq!(full, [500, 1000, 2000, 3000, 3000]);
    assert_eq!(backoff(&policy, 3, 0.0), Duration::ZERO);
    assert_eq!(backoff(&policy, 1, 0.5), Duration::from_millis(500));
    // Huge retry counts saturate instead of overflowing.
    assert_eq!(backoff(&policy, 1000, 1.0), Duration::from_secs(3));
    let samples: Vec<f64> = (0..64).map(|_| random_unit()).collect();
    assert!(samples.iter().all(|u| (0.0..=1.0).contains(u)));
    assert!(samples.iter().any(|u| *u != samples[0]), "jitter must vary");
}

#[test]
fn retry_after_forms() {
    assert_eq!(parse_retry_after("10"), Some(Duration::from_secs(10)));
    assert_eq!(
        parse_retry_after("2.128"),
        Some(Duration::from_millis(2128))
    );
    assert_eq!(parse_retry_after(" 0.05 "), Some(Duration::from_millis(50)));
    assert_eq!(parse_retry_after("-1"), None);
    assert_eq!(parse_retry_after("NaN"), None);
    assert_eq!(parse_retry_after("soon"), None);
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
        Some(Duration::ZERO),
        "a date in the past means now"
    );
    let later = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
    let wait = parse_retry_after(&later).unwrap();
    assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30));
}

#[tokio::test]
async fn exhausted_after_max_attempts() {
    let graph = fake(|_, _| throttled().header("Retry-After", "0")).await;
    let error = client(&graph.base).list_domains("tok").await.unwrap_err();
    match &error {
        GraphError::Exhausted {
            status,
            attempts,
            message,
        } => {
            assert_eq!((*status, *attempts), (429, 4));
            assert_eq!(message, "Please retry again later.");
        }
        other => panic!("expected Exhausted, got {other:?}"),
    }
    assert_eq!(error.status(), Some(429));
    assert_eq!(graph.seen().len(), 4);
}

#[tokio::test]
async fn post_is_not_retried_on_a_dropped_connection() {
    let (base, count) = dropping_server(vec![None, Some(user("u1"))]).await;
    let error = client(&base)
        .create_user("tok", &json!({"userPrincipalName": "a@contoso.com"}))
        .await
        .unwrap_err();
    assert!(
        matches!(error, GraphError::Network(ref m) if m.contains("may have been applied")),
        "{error:?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn get_is_retried_on_a_dropped_connection() {
    let (base, count) = dropping_server(vec![None, Some(user("u1"))]).await;
    let found = client(&base).get_user("tok", "u1").await.unwrap();
    assert_eq!(found.unwrap().id, "u1");
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn post_is_retried_on_429_and_503_but_not_504() {
    let graph = fake(|n, _| match n {
        0 => throttled(),
        1 => Reply::empty(503),
        _ => Reply::json(201, user("new")),
    })
    .await;
    let created = client(&graph.base)
        .create_user("tok", &json!({"userPrincipalName": "new@contoso.com"}))
        .await
        .unwrap();
    assert_eq!(created.id, "new");
    let seen = graph.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen
        .iter()
        .all(|s| s.method == "POST" && s.path == "/v1.0/users"));
    assert_eq!(seen[2].json()["userPrincipalName"], "new@contoso.com");
    assert_eq!(seen[2].header("content-type"), Some("application/json"));

    let timeouts = fake(|_, _| Reply::empty(504)).await;
    let error = client(&timeouts.base)
        .create_user("tok", &json!({}))
        .await
        .unwrap_err();
    assert!(matches!(error, GraphError::Network(_)), "{error:?}");
    assert_eq!(timeouts.seen().len(), 1);
}

#[tokio::test]
async fn unauthorized_is_not_retried() {
    let graph = fake(|_, _| {
        Reply::json(
            401,
            json!({"error": {"code": "InvalidAuthenticationToken", "message": "Access token has expired or is not yet valid."}}),
        )
    })
    .await;
    let error = client(&graph.base).get_user("tok", "u1").await.unwrap_err();
    match &error {
        GraphError::Unauthorized { code, message } => {
            assert_eq!(code, "InvalidAuthenticationToken");
            assert!(message.starts_with("Access token has expired"));
        }
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    assert_eq!(error.status(), Some(401));
    assert_eq!(graph.seen().len(), 1);
}

#[tokio::test]
async fn error_envelope_is_parsed() {
    let graph = fake(|_, _| {
        Reply::json(
            400,
            json!({"error": {
                "code": "Request_BadRequest",
                "message": "Another object with the same value for property userPrincipalName already exists.",
                "details": [{"code": "ObjectConflict", "message": "dup", "target": "userPrincipalName"}],
                "innerError": {"date": "2025-02-13T10:17:06", "request-id": "inner-id", "client-request-id": "x"}
            }}),
        )
        .header("request-id", "header-id")
    })
    .await;
    let error = client(&graph.base)
        .create_user("tok", &json!({}))
        .await
        .unwrap_err();
    match &error {
        GraphError::Api {
            status,
            code,
            message,
            target,
            detail_code,
            request_id,
        } => {
            assert_eq!(*status, 400);
            assert_eq!(code, "Request_BadRequest");
            assert!(message.starts_with("Another object"));
            assert_eq!(target.as_deref(), Some("userPrincipalName"));
            assert_eq!(detail_code.as_deref(), Some("ObjectConflict"));
            assert_eq!(request_id.as_deref(), Some("header-id"));
        }
        other => panic!("expected Api, got {other:?}"),
    }
    assert!(error.is_conflict());
    assert!(!error.is_not_found());
    assert_eq!(graph.seen().len(), 1, "a 400 is final");
}

#[test]
fn odd_error_bodies() {
    let html = format!("<html>{}</html>", "x".repeat(500));
    match GraphError::from_body(502, html.as_bytes(), None) {
        GraphError::Api { code, message, .. } => {
            assert_eq!(code, "unknown");
            assert_eq!(message.chars().count(), 200);
            assert!(message.starts_with("<html>x"));
        }
        other => panic!("{other:?}"),
    }
    match GraphError::from_body(500, b"", None) {
        GraphError::Api { code, message, .. } => {
            assert_eq!(code, "unknown");
            assert!(message.contains("500"));
        }
        other => panic!("{other:?}"),
    }
    // JSON without an envelope; innerError's id used when there is no header.
    assert!(matches!(
        GraphError::from_body(400, br#"{"oops":1}"#, None),
        GraphError::Api { ref code, .. } if code == "unknown"
    ));
    let inner = br#"{"error":{"code":"Request_ResourceNotFound","message":"gone","innerError":{"request-id":"r1"}}}"#;
    let not_found = GraphError::from_body(404, inner, None);
    assert!(not_found.is_not_found());
    assert!(!not_found.is_conflict());
    assert!(matches!(not_found, GraphError::Api { request_id: Some(ref id), .. } if id == "r1"));
}

#[tokio::test]
async fn not_found_answers() {
    let graph = fake(|_, _| {
        Reply::json(
            404,
            json!({"error": {"code": "Request_ResourceNotFound", "message": "Resource 'x' does not exist"}}),
        )
    })
    .await;
    let graph_client = client(&graph.base);
    assert_eq!(graph_client.get_user("tok", "x").await.unwrap(), None);
    graph_client.remove_manager("tok", "x").await.unwrap();
    let error = graph_client
        .update_user("tok", "x", &json!({"city": "Oslo"}))
        .await
        .unwrap_err();
    assert!(error.is_not_found());
    let seen = graph.seen();
    assert_eq!(seen[1].method, "DELETE");
    assert_eq!(seen[1].path, "/v1.0/users/x/manager/$ref");
    assert_eq!(seen[2].method, "PATCH");
    assert_eq!(seen[2].json(), json!({"city": "Oslo"}));
}

#[tokio::test]
async fn set_manager_sends_a_reference() {
    let graph = fake(|_, _| Reply::empty(204)).await;
    client(&graph.base)
        .set_manager("tok", "u1", "m1")
        .await
        .unwrap();
    let seen = graph.seen();
    assert_eq!(seen[0].method, "PUT");
    assert_eq!(seen[0].path, "/v1.0/users/u1/manager/$ref");
    assert_eq!(
        seen[0].json(),
        json!({"@odata.id": format!("{}/users/m1", graph.base)})
    );
}

#[tokio::test]
async fn pages_are_followed_by_next_link() {
    let graph = fake(|n, seen| {
        let base = format!("http://{}/v1.0", seen.header("host").unwrap());
        match n {
            0 => Reply::json(
                200,
                json!({"value": [user("a"), user("b")], "@odata.nextLink": format!("{base}/users?$top=2&$skiptoken=X%27AB%27")}),
            ),
            // Graph may send an empty page in the middle.
            1 => Reply::json(
                200,
                json!({"value": [], "@odata.nextLink": format!("{base}/users?$top=2&$skiptoken=X%27CD%27")}),
            ),
            _ => Reply::json(200, json!({"value": [user("c")]})),
        }
    })
    .await;
    let mut ids = Vec::new();
    let total = client(&graph.base)
        .list_all_users("tok", 2, |page| ids.extend(page.into_iter().map(|u| u.id)))
        .await
        .unwrap();
    assert_eq!(total, 3);
    assert_eq!(ids, ["a", "b", "c"]);
    let seen = graph.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].path, "/v1.0/users");
    assert_eq!(seen[0].param("$top").as_deref(), Some("2"));
    assert_eq!(seen[0].param("$select"), Some(USER_SELECT.join(",")));
    // Later pages: the link verbatim, no parameters of ours added.
    assert_eq!(seen[1].query, "$top=2&$skiptoken=X%27AB%27");
    assert_eq!(seen[2].query, "$top=2&$skiptoken=X%27CD%27");
}

#[tokio::test]
async fn next_link_to_another_host_is_refused() {
    let elsewhere = fake(|_, _| Reply::json(200, json!({"value": []}))).await;
    let link = format!("{}/users?$skiptoken=abc", elsewhere.base);
    let graph =
        fake(move |_, _| Reply::json(200, json!({"value": [user("a")], "@odata.nextLink": link})))
            .await;
    let mut seen_users = 0;
    let error = client(&graph.base)
        .list_all_users("tok", 10, |page| seen_users += page.len())
        .await
        .unwrap_err();
    assert!(
        matches!(error, GraphError::Decode(ref m) if m.contains("refused")),
        "{error:?}"
    );
    assert_eq!(seen_users, 1);
    assert_eq!(graph.seen().len(), 1);
    assert!(
        elsewhere.seen().is_empty(),
        "the token went to another host"
    );
}

#[test]
fn only_graphs_own_origin_is_followed() {
    let graph =
        GraphClient::new("https://graph.microsoft.com/v1.0/", RetryPolicy::default()).unwrap();
    assert_eq!(graph.base_url(), "https://graph.microsoft.com/v1.0");
    assert!(graph
        .follow("https://graph.microsoft.com/v1.0/users?$skiptoken=1")
        .is_ok());
    assert!(graph
        .follow("https://GRAPH.microsoft.com:443/v1.0/users")
        .is_ok());
    for bad in [
        "https://graph.microsoft.com.evil.example/v1.0/users",
        "https://graph.microsoft.com@evil.example/v1.0/users",
        "http://graph.microsoft.com/v1.0/users",
        "https://graph.microsoft.com:8443/v1.0/users",
        "/v1.0/users",
    ] {
        assert!(graph.follow(bad).is_err(), "{bad} must be refused");
    }
    assert!(GraphClient::new("ftp://graph.microsoft.com", RetryPolicy::default()).is_err());
    assert!(GraphClient::new("not a url", RetryPolicy::default()).is_err());
}

#[tokio::test]
async fn bearer_token_and_request_ids_are_sent() {
    let graph = fake(|_, _| Reply::json(200, json!({"value": [
        {"id": "contoso.com", "authenticationType": "Managed", "isDefault": true, "isInitial": false, "isVerified": true}
    ]})))
    .await;
    let graph_client = client(&graph.base);
    let domains = graph_client.list_domains("secret-token").await.unwrap();
    assert_eq!(domains[0].id, "contoso.com");
    assert!(domains[0].is_verified);
    graph_client.list_domains("secret-token").await.unwrap();
    let seen = graph.seen();
    assert_eq!(seen[0].path, "/v1.0/domains");
    let mut ids = Vec::new();
    for s in &seen {
        assert_eq!(s.header("authorization"), Some("Bearer secret-token"));
        assert!(s.header("user-agent").unwrap().starts_with("idbridge/"));
        let id = s.header("client-request-id").unwrap().to_string();
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
        assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1], "a fresh client-request-id per request");
}

#[tokio::test]
async fn filter_quotes_and_encodes_the_upn() {
    let graph = fake(|_, _| Reply::json(200, json!({"value": [user("q")]}))).await;
    let found = client(&graph.base)
        .find_user_by_upn("tok", "o'brien#x@contoso.com")
        .await
        .unwrap();
    assert_eq!(found.unwrap().id, "q");
    let seen = &graph.seen()[0];
    assert_eq!(
        seen.param("$filter").as_deref(),
        Some("userPrincipalName eq 'o''brien#x@contoso.com'")
    );
    assert!(seen.query.contains("%23"), "{}", seen.query);
    assert!(
        !seen.query.contains('+'),
        "spaces as %20, never +: {}",
        seen.query
    );
    assert_eq!(seen.param("$select"), Some(USER_SELECT.join(",")));

    let none = fake(|_, _| Reply::json(200, json!({"value": []}))).await;
    assert_eq!(
        client(&none.base)
            .find_user_by_upn("tok", "nobody@contoso.com")
            .await
            .unwrap(),
        None
    );
}

#[test]
fn user_select_matches_the_mapped_fields() {
    let fields: Vec<String> = serde_json::to_value(GraphUser::default())
        .unwrap()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let mut selected: Vec<String> = USER_SELECT.iter().map(|s| s.to_string()).collect();
    let mut fields = fields;
    fields.sort();
    selected.sort();
    assert_eq!(fields, selected);
    // Collections sent as null by a sloppy server still read.
    let u: GraphUser =
        serde_json::from_value(json!({"id": "1", "businessPhones": null, "accountEnabled": false}))
            .unwrap();
    assert!(u.business_phones.is_empty() && u.other_mails.is_empty());
    assert_eq!(u.account_enabled, Some(false));
}

/// A `$batch` fake answering every sub-request with `item(request)`, in reverse order.
fn batch_reply(seen: &Seen, item: impl Fn(&Value) -> Value) -> Reply {
    let body = seen.json();
    let mut responses: Vec<Value> = body["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(item)
        .collect();
    responses.reverse();
    Reply::json(200, json!({ "responses": responses }))
}

fn patches(n: usize) -> Vec<BatchRequest> {
    (0..n)
        .map(|i| BatchRequest {
            id: format!("user-{i}"),
            method: Method::PATCH,
            url: format!("/users/u{i}"),
            body: Some(json!({"jobTitle": format!("t{i}")})),
        })
        .collect()
}

#[tokio::test]
async fn batch_is_split_into_chunks_of_twenty() {
    let graph = fake(|_, seen| {
        batch_reply(
            seen,
            |r| json!({"id": r["id"], "status": 204, "headers": {}}),
        )
    })
    .await;
    let answers = client(&graph.base).batch("tok", patches(45)).await.unwrap();
    assert_eq!(answers.len(), 45);
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a.id, format!("user-{i}"));
        assert_eq!(a.result.as_ref().unwrap(), &None);
    }
    let seen = graph.seen();
    let sizes: Vec<usize> = seen
        .iter()
        .map(|s| s.json()["requests"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, [20, 20, 5]);
    for s in &seen {
        assert_eq!(
            (s.method.as_str(), s.path.as_str()),
            ("POST", "/v1.0/$batch")
        );
        assert_eq!(s.header("authorization"), Some("Bearer tok"));
    }
    let first = &seen[0].json()["requests"][0];
    assert_eq!(first["method"], "PATCH");
    assert_eq!(first["url"], "/users/u0");
    assert_eq!(first["headers"]["Content-Type"], "application/json");
    assert_eq!(first["body"], json!({"jobTitle": "t0"}));
}

#[tokio::test]
async fn batch_answers_are_correlated_by_id() {
    // Each answer echoes the URL it answers, and the fake answers in reverse order.
    let graph = fake(|_, seen| {
        batch_reply(seen, |r| {
            if r["url"] == "/users/missing" {
                json!({"id": r["id"], "status": 404, "headers": {"Content-Type": "application/json"},
                    "body": {"error": {"code": "Request_ResourceNotFound", "message": "gone"}}})
            } else {
                json!({"id": r["id"], "status": 200, "body": {"url": r["url"]}})
            }
        })
    })
    .await;
    let mut requests: Vec<BatchRequest> = (0..5)
        .map(|i| BatchRequest {
            id: format!("r{i}"),
            method: Method::GET,
            url: format!("/users/u{i}"),
            body: None,
        })
        .collect();
    requests[2].url = "/users/missing".into();
    let answers = client(&graph.base).batch("tok", requests).await.unwrap();
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a.id, format!("r{i}"));
        if i == 2 {
            assert!(a.result.as_ref().unwrap_err().is_not_found());
        } else {
            assert_eq!(
                a.result.as_ref().unwrap().as_ref().unwrap()["url"],
                format!("/users/u{i}")
            );
        }
    }
    let sent = &graph.seen()[0].json()["requests"][0];
    assert!(
        sent.get("headers").is_none() && sent.get("body").is_none(),
        "{sent}"
    );
}

#[tokio::test]
async fn batch_retries_only_throttled_items() {
    let graph = fake(|n, seen| {
        batch_reply(seen, |r| {
            if n == 0 && r["url"] == "/users/u1" {
                json!({"id": r["id"], "status": 429, "headers": {"Retry-After": "0.2"},
                    "body": {"error": {"code": "TooManyRequests", "message": "later"}}})
            } else if n == 0 && r["url"] == "/users/u3" {
                json!({"id": r["id"], "status": 503, "headers": {"retry-after": "0.05"}})
            } else {
                json!({"id": r["id"], "status": 204})
            }
        })
    })
    .await;
    let started = Instant::now();
    let answers = client(&graph.base).batch("tok", patches(4)).await.unwrap();
    assert!(
        answers.iter().all(|a| matches!(a.result, Ok(None))),
        "{answers:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "the longest Retry-After wins"
    );
    let seen = graph.seen();
    assert_eq!(seen.len(), 2);
    let resent: Vec<Value> = seen[1].json()["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["url"].clone())
        .collect();
    assert_eq!(resent, [json!("/users/u1"), json!("/users/u3")]);
}

#[tokio::test]
async fn batch_items_still_throttled_are_exhausted() {
    let graph = fake(|_, seen| {
        batch_reply(seen, |r| {
            if r["url"] == "/users/u0" {
                json!({"id": r["id"], "status": 429, "headers": {"Retry-After": "0"},
                    "body": {"error": {"code": "TooManyRequests", "message": "later"}}})
            } else {
                json!({"id": r["id"], "status": 204})
            }
        })
    })
    .await;
    let mut requests = patches(2);
    requests.push(BatchRequest {
        id: "create".into(),
        method: Method::POST,
        url: "/users".into(),
        body: Some(json!({})),
    });
    let answers = client(&graph.base).batch("tok", requests).await.unwrap();
    assert!(matches!(
        answers[0].result,
        Err(GraphError::Exhausted { status: 429, attempts: 4, ref message }) if message == "later"
    ));
    assert!(answers[1].result.is_ok() && answers[2].result.is_ok());
    assert_eq!(graph.seen().len(), 4);
}

#[tokio::test]
async fn batch_failure_before_any_answer_is_an_error() {
    let graph = fake(|_, _| {
        Reply::json(
            401,
            json!({"error": {"code": "InvalidAuthenticationToken", "message": "expired"}}),
        )
    })
    .await;
    let error = client(&graph.base)
        .batch("tok", patches(3))
        .await
        .unwrap_err();
    assert!(matches!(error, GraphError::Unauthorized { .. }));
    assert!(client(&graph.base)
        .batch("tok", vec![])
        .await
        .unwrap()
        .is_empty());
    assert_eq!(graph.seen().len(), 1, "an empty batch sends nothing");
}

#[tokio::test]
async fn batch_failure_after_answers_marks_the_rest() {
    let graph = fake(|n, seen| {
        if n == 0 {
            batch_reply(seen, |r| json!({"id": r["id"], "status": 204}))
        } else {
            Reply::json(
                403,
                json!({"error": {"code": "Authorization_RequestDenied", "message": "no"}}),
            )
        }
    })
    .await;
    let answers = client(&graph.base).batch("tok", patches(25)).await.unwrap();
    assert!(answers[..20].iter().all(|a| a.result.is_ok()));
    assert!(answers[20..]
        .iter()
        .all(|a| matches!(a.result, Err(GraphError::Api { status: 403, .. }))));
}
