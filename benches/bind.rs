//! Binding throughput and change latency against the in-process Microsoft Graph fake
//! (`tests/it/support/graph_fake.rs`) on loopback, with the real server and sync worker running.
//!
//! 1. Creates N users in the directory (no password, so no argon2; timed apart, not counted).
//! 2. Baselines measured in the same run, against the same fake: N users created straight
//!    through `$batch` POSTs of 20 `POST /users` (reqwest, one connection, sequential as the
//!    product's worker is), and the same with a `$batch` of 20 `GET /users/{upn}` lookups first
//!    (the least a bind must send: look up, then create).
//! 3. Binds every user (`M365Sync::bind_all`) and waits until all are bound: prints users per
//!    second (from the bind call to the last one bound), Graph HTTP requests per user (a `$batch`
//!    counts once) and sub-requests per user, and the rate as a ratio to the baselines.
//! 4. Changes one always-exported attribute (last name → `surname`) of K bound users one at a
//!    time and measures how long until the fake shows it (p50/p99), next to a direct `PATCH`
//!    and a one-item `$batch` PATCH to the fake over loopback (p50/p99) as baselines.
//!
//! With `--breakdown`, also times the per-user database reads that `bind` and the worker's
//! `deliver_round` make (one call at a time), to show where the bind time goes.
//!
//! With `--postgres postgres://user@host:port`, the server runs on a fresh PostgreSQL database
//! there instead of SQLite.
//!
//! With `--manager`, the manager attribute is exported during the bind (the users have no
//! manager, so nothing beyond the creates should be sent).
//!
//! Run: `cargo bench --bench bind` (options: `-- --users 10000 --changes 200
//! --jobs-per-round 200 --timeout-seconds 600 --breakdown --manager --postgres URL`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{arg, percentile, process_cpu_seconds};
use idbridge::directory::{Attribute, UserChanges};
use idbridge::events::Actor;
use idbridge::server::AppState;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use support::graph_fake::GraphFake;
use support::start_server_on;

/// Users created in the directory (and bound) are `bench00001@contoso.com` …
const DOMAIN: &str = "contoso.com";
/// Baseline users go to other verified domains so they never collide with bound users.
const RAW_CREATE_DOMAIN: &str = "raw-create.example";
const RAW_LOOKUP_DOMAIN: &str = "raw-lookup.example";
/// Graph's `$batch` limit, as the product uses it.
const BATCH: usize = 20;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn upn(i: usize) -> String {
    format!("bench{i:05}@{DOMAIN}")
}

fn username(i: usize) -> String {
    format!("bench{i:05}")
}

/// Wall time, Graph HTTP requests and sub-requests, and process CPU of one phase.
#[derive(Debug, Clone, Copy, Default)]
struct Phase {
    seconds: f64,
    requests: usize,
    subrequests: usize,
    cpu: f64,
}

impl Phase {
    fn rate(&self, users: usize) -> f64 {
        users as f64 / self.seconds.max(1e-9)
    }
}

/// Measures a phase: wall time, fake counters and CPU around `f`.
fn phase<T>(fake: &GraphFake, f: impl FnOnce() -> T) -> (T, Phase) {
    let (r0, s0, c0) = (
        fake.request_count(),
        fake.batch_subrequest_count(),
        process_cpu_seconds(),
    );
    let t = Instant::now();
    let out = f();
    let seconds = t.elapsed().as_secs_f64();
    let p = Phase {
        seconds,
        requests: fake.request_count() - r0,
        subrequests: fake.batch_subrequest_count() - s0,
        cpu: process_cpu_seconds() - c0,
    };
    (out, p)
}

async fn create_users(state: &AppState, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let changes = UserChanges::new()
            .with(Attribute::Username, username(i))
            .with(Attribute::Email, upn(i))
            .with(Attribute::Firstname, "Bench")
            .with(Attribute::Lastname, format!("User{i}"));
        let user = state
            .directory
            .create_user(&Actor::System, &changes, None, Utc::now())
            .await
            .expect("user created");
        ids.push(user.id);
    }
    ids
}

/// Mean time of `f` over `ids`, in µs per call (one call at a time, as the worker makes them).
async fn per_call<F, Fut>(ids: &[String], f: F) -> f64
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let t = Instant::now();
    for id in ids {
        f(id.clone()).await;
    }
    t.elapsed().as_secs_f64() * 1e6 / ids.len().max(1) as f64
}

/// The per-user database reads `bind` and `deliver_round` make, timed one by one.
async fn breakdown(state: &AppState, ids: &[String]) -> [(&'static str, f64); 4] {
    let ping = per_call(ids, |_| async {
        assert!(state.store.ping().await);
    })
    .await;
    let get_user = per_call(ids, |id| async move {
        state.directory.get_user(&id).await.expect("user");
    })
    .await;
    let binding = per_call(ids, |id| async move {
        state.store.binding(&id).await.expect("binding");
    })
    .await;
    let link = per_call(ids, |id| async move {
        state.store.m365_link(&id).await.expect("link");
    })
    .await;
    [
        ("SELECT 1 (store.ping, the pool's round trip)", ping),
        ("directory.get_user(id)", get_user),
        ("store.binding(id)", binding),
        ("store.m365_link(id)", link),
    ]
}

/// A `POST /users` body like the one the product sends for a new user.
fn create_body(upn: &str, i: usize) -> Value {
    let alias = upn.split('@').next().unwrap_or("user");
    json!({
        "accountEnabled": true,
        "displayName": format!("Raw User{i}"),
        "givenName": "Raw",
        "surname": format!("User{i}"),
        "userPrincipalName": upn,
        "mailNickname": alias,
        "onPremisesImmutableId": idbridge::m365::sync::new_immutable_id(),
        "passwordProfile": {
            "password": idbridge::directory::generate_password().expose_secret(),
            "forceChangePasswordNextSignIn": false,
        },
    })
}

/// Sends one `$batch`; panics unless every item got `expect` (any of the given statuses).
async fn send_batch(
    client: &reqwest::Client,
    graph: &str,
    token: &str,
    requests: Vec<Value>,
    expect: &[u64],
) {
    let r = client
        .post(format!("{graph}/$batch"))
        .bearer_auth(token)
        .json(&json!({ "requests": requests }))
        .send()
        .await
        .expect("batch sent");
    assert!(r.status().is_success(), "batch answered {}", r.status());
    let body: Value = r.json().await.expect("batch body");
    let responses = body["responses"].as_array().expect("responses");
    assert_eq!(responses.len(), requests.len(), "one response per item");
    for resp in responses {
        let status = resp["status"].as_u64().unwrap_or(0);
        assert!(expect.contains(&status), "batch item answered {resp}");
    }
}

/// Baseline: `n` users created through `$batch`es of 20 `POST /users`, one after the other;
/// with `lookup`, each batch is preceded by a `$batch` of 20 `GET /users/{upn}` (404s).
async fn raw_creates(
    client: &reqwest::Client,
    graph: &str,
    token: &str,
    n: usize,
    domain: &str,
    lookup: bool,
) {
    let mut start = 0;
    while start < n {
        let end = (start + BATCH).min(n);
        if lookup {
            let gets: Vec<Value> = (start..end)
                .map(|i| {
                    json!({
                        "id": (i - start).to_string(),
                        "method": "GET",
                        "url": format!("/users/raw{i:05}@{domain}?$select=id,userPrincipalName,onPremisesImmutableId"),
                    })
                })
                .collect();
            send_batch(client, graph, token, gets, &[404]).await;
        }
        let posts: Vec<Value> = (start..end)
            .map(|i| {
                json!({
                    "id": (i - start).to_string(),
                    "method": "POST",
                    "url": "/users",
                    "headers": {"Content-Type": "application/json"},
                    "body": create_body(&format!("raw{i:05}@{domain}"), i),
                })
            })
            .collect();
        send_batch(client, graph, token, posts, &[201]).await;
        start = end;
    }
}

fn surname_of(fake: &GraphFake, upn: &str) -> Option<String> {
    fake.user(upn)
        .and_then(|u| u.get("surname").and_then(Value::as_str).map(str::to_string))
}

/// Polls the fake from this (non-runtime) thread until `upn`'s surname is `want`.
fn wait_for_surname(fake: &GraphFake, upn: &str, want: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while surname_of(fake, upn).as_deref() != Some(want) {
        assert!(
            Instant::now() < deadline,
            "{upn}: surname {want:?} did not reach the fake within {timeout:?}"
        );
        std::thread::sleep(Duration::from_micros(50));
    }
}

fn main() {
    let n = arg("--users", 10_000) as usize;
    let k = arg("--changes", 200) as usize;
    let jobs_per_round = arg("--jobs-per-round", 200);
    let timeout = Duration::from_secs(arg("--timeout-seconds", 600));
    let show_breakdown = std::env::args().any(|a| a == "--breakdown");
    // Export the manager attribute (users here have no manager): a bind must then not spend
    // a request on removing managers from users it just created.
    let export_manager = std::env::args().any(|a| a == "--manager");
    assert!(n > 0, "--users must be at least 1");
    let cores = std::thread::available_parallelism()
        .map(|c| c.get())
        .unwrap_or(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .expect("runtime");

    // The fake and the server run on the runtime's workers; this thread only drives and polls.
    let fake = Arc::new(rt.block_on(GraphFake::start()));
    fake.add_domain(DOMAIN, false, true);
    fake.add_domain(RAW_CREATE_DOMAIN, false, false);
    fake.add_domain(RAW_LOOKUP_DOMAIN, false, false);
    // `--postgres postgres://user@host:port`: a fresh database there instead of SQLite.
    let postgres = std::env::args().skip_while(|a| a != "--postgres").nth(1);
    let database = postgres
        .as_deref()
        .map(|server| rt.block_on(common::postgres_database(server, "bind")));
    eprintln!(
        "database: {}",
        if database.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        }
    );
    let server = rt.block_on(start_server_on(&fake, jobs_per_round, database.as_deref()));
    let state = server.state.clone();
    let actor = Actor::Admin("bench".into());

    eprintln!("creating {n} directory users (setup, not measured)…");
    let setup = Instant::now();
    let user_ids = rt.block_on(create_users(&state, n));
    let setup_seconds = setup.elapsed().as_secs_f64();

    // Baselines: the fake's own cost for the same number of users, over loopback.
    eprintln!("baselines: raw $batch creates against the fake…");
    let graph = fake.graph_base_url();
    let token = rt
        .block_on(state.m365.access_token(Utc::now()))
        .expect("access token")
        .expose_secret()
        .to_string();
    let client = reqwest::Client::new();
    let ((), raw_create) = phase(&fake, || {
        rt.block_on(raw_creates(
            &client,
            &graph,
            &token,
            n,
            RAW_CREATE_DOMAIN,
            false,
        ))
    });
    let ((), raw_lookup) = phase(&fake, || {
        rt.block_on(raw_creates(
            &client,
            &graph,
            &token,
            n,
            RAW_LOOKUP_DOMAIN,
            true,
        ))
    });

    if export_manager {
        rt.block_on(
            state
                .sync
                .set_direction(&actor, "manager", "export", Utc::now()),
        )
        .expect("manager exported");
    }

    // Bind everyone and wait until all are bound.
    eprintln!("binding {n} users…");
    let mut queue_seconds = 0.0;
    let (_, bind) = phase(&fake, || {
        rt.block_on(async {
            let t = Instant::now();
            let report = state
                .sync
                .bind_all(&actor, Utc::now())
                .await
                .expect("bind accepted");
            queue_seconds = t.elapsed().as_secs_f64();
            assert_eq!(report.queued.len(), n, "every user queued: {report:?}");
            let deadline = Instant::now() + timeout;
            loop {
                let c = state.store.sync_counts().await.expect("counts");
                if c.bound as usize == n && c.queued == 0 {
                    break;
                }
                assert!(
                    c.failed == 0 && c.bind_failed == 0,
                    "binding failed: {c:?}, {:?}",
                    state.sync.failed_jobs(None).await
                );
                assert!(
                    Instant::now() < deadline,
                    "timed out after {timeout:?} with {c:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    });

    // Every user exists exactly once in the fake, stamped with its binding's immutable ID.
    let mut in_fake: HashMap<String, (usize, String)> = HashMap::new();
    for u in fake.users() {
        let name = u["userPrincipalName"]
            .as_str()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if name.ends_with(&format!("@{DOMAIN}")) {
            let immutable = u["onPremisesImmutableId"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            in_fake.entry(name).or_insert((0, immutable)).0 += 1;
        }
    }
    assert_eq!(in_fake.len(), n, "one M365 user per bound user");
    for i in (0..n).step_by((n / 100).max(1)) {
        let (count, immutable) = in_fake.get(&upn(i)).expect("bound user in the fake");
        assert_eq!(*count, 1, "{} created once", upn(i));
        let user = rt
            .block_on(state.directory.get_user(&username(i)))
            .expect("user");
        let binding = user.m365.expect("binding");
        assert_eq!(binding.state.as_str(), "bound");
        assert_eq!(&binding.immutable_id, immutable, "{} stamped", upn(i));
    }
    assert!(in_fake.values().all(|(c, _)| *c == 1));

    // Change latency: one last-name change at a time, until the fake shows the new surname.
    eprintln!("{k} attribute changes…");
    let (c0, s0) = (fake.request_count(), fake.batch_subrequest_count());
    let mut change_latencies = Vec::with_capacity(k);
    let mut update_calls = Vec::with_capacity(k);
    for j in 0..k {
        let i = (j * n / k.max(1)) % n;
        let want = format!("Changed{j}");
        let changes = UserChanges::new().with(Attribute::Lastname, want.clone());
        let t = Instant::now();
        rt.block_on(
            state
                .directory
                .update_user(&actor, &username(i), &changes, Utc::now()),
        )
        .expect("updated");
        update_calls.push(t.elapsed());
        wait_for_surname(&fake, &upn(i), &want, Duration::from_secs(30));
        change_latencies.push(t.elapsed());
    }
    let change_requests = fake.request_count() - c0;
    let change_subrequests = fake.batch_subrequest_count() - s0;
    change_latencies.sort();
    update_calls.sort();

    // Baseline: the same change sent straight to the fake (PATCH, and PATCH in a $batch of one).
    let ids: Vec<String> = (0..k.max(1))
        .map(|j| {
            let i = (j * n / k.max(1)) % n;
            fake.user(&upn(i)).expect("user")["id"]
                .as_str()
                .expect("id")
                .to_string()
        })
        .collect();
    let mut direct = Vec::with_capacity(k);
    let mut batched = Vec::with_capacity(k);
    for (j, id) in ids.iter().enumerate().take(k) {
        let t = Instant::now();
        let r = rt
            .block_on(
                client
                    .patch(format!("{graph}/users/{id}"))
                    .bearer_auth(&token)
                    .json(&json!({"surname": format!("Direct{j}")}))
                    .send(),
            )
            .expect("patch sent");
        assert_eq!(r.status().as_u16(), 204, "direct PATCH");
        direct.push(t.elapsed());
        let t = Instant::now();
        rt.block_on(send_batch(
            &client,
            &graph,
            &token,
            vec![json!({
                "id": "0",
                "method": "PATCH",
                "url": format!("/users/{id}"),
                "headers": {"Content-Type": "application/json"},
                "body": {"surname": format!("Batched{j}")},
            })],
            &[204],
        ));
        batched.push(t.elapsed());
    }
    direct.sort();
    batched.sort();

    let costs = show_breakdown.then(|| rt.block_on(breakdown(&state, &user_ids)));

    let final_counts = rt.block_on(state.store.sync_counts()).expect("counts");
    assert_eq!(final_counts.failed, 0, "{final_counts:?}");
    let _ = server.stop.send(());
    let _ = rt.block_on(server.handle);

    let bind_rate = bind.rate(n);
    println!(
        "idbridge bind benchmark ({n} users, {cores} cores, Graph fake in-process on loopback, \
         jobs_per_round {jobs_per_round})"
    );
    println!("  setup, {n} directory users (no password):  {setup_seconds:>8.2} s  (not counted)");
    println!("  baseline A, raw $batch creates (20 POST /users each, sequential):");
    println!(
        "      {:>9.1} users/s   {:.3} HTTP requests/user   {:.0} µs CPU/user",
        raw_create.rate(n),
        raw_create.requests as f64 / n as f64,
        raw_create.cpu / n as f64 * 1e6
    );
    println!("  baseline B, raw lookup + create ($batch of 20 GET, then of 20 POST):");
    println!(
        "      {:>9.1} users/s   {:.3} HTTP requests/user   {:.0} µs CPU/user",
        raw_lookup.rate(n),
        raw_lookup.requests as f64 / n as f64,
        raw_lookup.cpu / n as f64 * 1e6
    );
    println!(
        "  idbridge bind_all → all bound{}:",
        if export_manager {
            " (manager exported)"
        } else {
            ""
        }
    );
    println!(
        "      {:>9.1} users/s   ({n} in {:.2} s; bind_all call itself {:.2} s)",
        bind_rate, bind.seconds, queue_seconds
    );
    println!(
        "      Graph HTTP requests/user: {:.3}   sub-requests/user: {:.2}   ({} requests, {} sub-requests)",
        bind.requests as f64 / n as f64,
        bind.subrequests as f64 / n as f64,
        bind.requests,
        bind.subrequests
    );
    println!(
        "      requests/user vs baseline A (creates alone, the least possible): {:.2}×",
        (bind.requests as f64 / n as f64) / (raw_create.requests as f64 / n as f64).max(1e-9)
    );
    println!(
        "      process CPU: {:.2} s = {:.0} µs/user ({:.2} cores busy)",
        bind.cpu,
        bind.cpu / n as f64 * 1e6,
        bind.cpu / bind.seconds.max(1e-9)
    );
    println!(
        "  ratio: idbridge binds at {:.2}× the rate of raw $batch creates (A) and {:.2}× raw \
         lookup+create (B) against the same fake",
        bind_rate / raw_create.rate(n),
        bind_rate / raw_lookup.rate(n)
    );
    println!("  attribute change (lastname → surname) until visible in the fake, {k} changes:");
    println!(
        "      idbridge:              p50 {:>7.2} ms   p99 {:>7.2} ms   ({:.2} HTTP requests, {:.2} sub-requests per change)",
        ms(percentile(&change_latencies, 0.50)),
        ms(percentile(&change_latencies, 0.99)),
        change_requests as f64 / k.max(1) as f64,
        change_subrequests as f64 / k.max(1) as f64
    );
    println!(
        "      of which update_user:  p50 {:>7.2} ms   p99 {:>7.2} ms   (the directory write and its outbox job)",
        ms(percentile(&update_calls, 0.50)),
        ms(percentile(&update_calls, 0.99))
    );
    println!(
        "      baseline, raw PATCH:   p50 {:>7.2} ms   p99 {:>7.2} ms",
        ms(percentile(&direct, 0.50)),
        ms(percentile(&direct, 0.99))
    );
    println!(
        "      baseline, raw $batch:  p50 {:>7.2} ms   p99 {:>7.2} ms   (one PATCH item)",
        ms(percentile(&batched, 0.50)),
        ms(percentile(&batched, 0.99))
    );
    println!(
        "  ratio: change latency p50 is {:.1}× a raw PATCH and {:.1}× a raw one-item $batch (p99: {:.1}× / {:.1}×)",
        ms(percentile(&change_latencies, 0.50)) / ms(percentile(&direct, 0.50)).max(1e-9),
        ms(percentile(&change_latencies, 0.50)) / ms(percentile(&batched, 0.50)).max(1e-9),
        ms(percentile(&change_latencies, 0.99)) / ms(percentile(&direct, 0.99)).max(1e-9),
        ms(percentile(&change_latencies, 0.99)) / ms(percentile(&batched, 0.99)).max(1e-9)
    );
    if let Some(costs) = costs {
        println!("  breakdown, per-user database reads timed one by one over all {n} users:");
        for (what, micros) in costs {
            println!("      {what:<46} {micros:>7.1} µs");
        }
    }
    println!(
        "  note: latencies include polling the fake every ~50 µs from the driving thread; \
         all parts share this machine's {cores} cores"
    );
    drop(fake);
}
