//! Several nodes on one PostgreSQL database: any node answers any request, and the sync work
//! is shared with every change delivered once and in order per user.
//!
//! Tests that start several nodes need PostgreSQL (`TEST_POSTGRES_URL`, set by `scripts/test`
//! for its second run); on SQLite, one node by nature, they return at once. The lease rules
//! underneath them are tested on both databases.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use idbridge::directory::{Attribute, UserChanges, UserState};
use idbridge::events::{Actor, NewEvent};
use idbridge::store::{Completion, ConnectionRow, JobEffect, OutboxJob};
use roxmltree::Document;
use serde_json::Value;

use crate::sso::{
    attr_of, authn_request, auto_post, find, issuer_config, request_id, sso_post, submit_login,
    xmlsec_verify, ASSERTION_ID_ATTR, EMAIL, IMMUTABLE_ID, NS_ASSERTION, PASSWORD, UPN, USERNAME,
};
use crate::support::graph_fake::GraphFake;
use crate::support::m365::{connected, eventually, m365_settings};
use crate::support::{binary, TestApp};

fn several_nodes_possible(test: &str) -> bool {
    let on = TestApp::on_postgres();
    if !on {
        eprintln!(
            "{test}: several nodes need PostgreSQL (TEST_POSTGRES_URL); scripts/test runs it there"
        );
    }
    on
}

fn admin() -> Actor {
    Actor::cli()
}

/// Creates `n` users without passwords (no argon2 hash: fast) named u0000…, all bound.
async fn bound_users(app: &TestApp, n: usize) -> Vec<String> {
    let now = Utc::now();
    let mut names = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("u{i:04}");
        let changes = UserChanges::new()
            .with(Attribute::Username, name.as_str())
            .with(Attribute::Email, format!("{name}@contoso.com"))
            .with(Attribute::Firstname, "Test")
            .with(Attribute::Lastname, name.as_str());
        app.state()
            .directory
            .create_user(&Actor::System, &changes, None, now)
            .await
            .expect("user created");
        names.push(name);
    }
    let report = app
        .state()
        .sync
        .bind_all(&admin(), Utc::now())
        .await
        .expect("bind accepted");
    assert_eq!(report.queued.len(), n, "{report:?}");
    settle(app, n, Duration::from_secs(180)).await;
    names
}

/// Waits until `bound` users are bound and nothing is queued.
async fn settle(app: &TestApp, bound: usize, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let counts = app.store.sync_counts().await.expect("counts");
        if counts.queued == 0 && counts.bound == bound as i64 {
            assert_eq!(counts.failed, 0, "no change failed: {counts:?}");
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "not settled within {within:?}: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The values of `property` each applied PATCH of a user sent, per object id, in order.
fn sent_values(patches: &[(String, Value)], property: &str) -> HashMap<String, Vec<Value>> {
    let mut by_user: HashMap<String, Vec<Value>> = HashMap::new();
    for (id, body) in patches {
        if let Some(v) = body.get(property) {
            by_user.entry(id.clone()).or_default().push(v.clone());
        }
    }
    by_user
}

#[tokio::test]
async fn a_sign_in_started_on_one_node_finishes_on_the_other() {
    if !several_nodes_possible("sso across nodes") {
        return;
    }
    let a = TestApp::spawn_with(&format!("node_name = \"node-a\"\n{}", issuer_config())).await;
    let b = a.spawn_node("node-b", &issuer_config()).await;
    let user = a.create_user(USERNAME, EMAIL, PASSWORD).await;
    a.bind(&user, IMMUTABLE_ID, UPN).await;

    // The AuthnRequest reaches node A, the password reaches node B (one browser: cookies do
    // not depend on the port).
    let browser = a.browser();
    let id = request_id();
    let form = sso_post(&browser, &a, &authn_request(&id, ""), Some("relay")).await;
    let answer = submit_login(&browser, &b, &form, USERNAME, PASSWORD).await;
    let post = auto_post(&answer);
    assert_eq!(post.relay_state.as_deref(), Some("relay"));
    let doc = Document::parse(&post.xml).unwrap();
    assert_eq!(attr_of(doc.root_element(), "InResponseTo"), id);
    assert_eq!(
        find(doc.root_element(), NS_ASSERTION, "NameID").text(),
        Some(IMMUTABLE_ID)
    );
    // Signed with the key both nodes share.
    xmlsec_verify(&post.xml, &a.cert_path(), ASSERTION_ID_ATTR).expect("verifies");

    // The session made on node B answers on node A at once.
    let again = sso_post(&browser, &a, &authn_request(&request_id(), ""), None).await;
    auto_post(&again);
    // A request answered on B is not answered again on A (replay state is shared).
    let replay = sso_post(&browser, &a, &authn_request(&id, ""), None).await;
    assert!(
        !replay.has_saml_response(),
        "a replayed request got a Response on the other node: {}",
        replay.body
    );
    // Suspending the user on B ends the session on A (caches follow the database).
    b.state()
        .directory
        .set_state(&admin(), USERNAME, UserState::Suspended, Utc::now())
        .await
        .unwrap();
    eventually("node A refuses the suspended user's session", || async {
        let page = sso_post(&browser, &a, &authn_request(&request_id(), ""), None).await;
        (!page.has_saml_response()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn two_nodes_deliver_every_change_exactly_once_and_in_order_per_user() {
    if !several_nodes_possible("exactly once") {
        return;
    }
    const USERS: usize = 1000;
    const CHANGES: usize = 3;
    let sync_keys = "lease_seconds = 5\njobs_per_round = 50\n";
    let (a, fake) = connected(sync_keys, "node_name = \"node-a\"").await;
    let b = a
        .spawn_node("node-b", &m365_settings(&fake, sync_keys, ""))
        .await;
    let names = bound_users(&a, USERS).await;
    let before = fake.user_patches().len();

    // Each change made on one node or the other, while both workers deliver.
    for round in 1..=CHANGES {
        for (i, name) in names.iter().enumerate() {
            let node = if (i + round) % 2 == 0 { &a } else { &b };
            node.state()
                .directory
                .update_user(
                    &admin(),
                    name,
                    &UserChanges::new().with(Attribute::Lastname, format!("v{round}")),
                    Utc::now(),
                )
                .await
                .expect("changed");
        }
    }
    settle(&a, USERS, Duration::from_secs(180)).await;

    let patches = fake.user_patches();
    let sent = sent_values(&patches[before..], "surname");
    assert_eq!(
        sent.len(),
        USERS,
        "every user's changes reached Microsoft 365"
    );
    for (id, values) in &sent {
        // One PATCH per change: none lost, none sent twice.
        assert_eq!(values.len(), CHANGES, "user {id} got {values:?}");
        // In order: a value is read when it is sent, so a later change may arrive with an
        // earlier job, but never an older value after a newer one.
        let versions: Vec<u32> = values
            .iter()
            .map(|v| v.as_str().unwrap()[1..].parse().unwrap())
            .collect();
        assert!(
            versions.windows(2).all(|w| w[0] <= w[1]),
            "user {id}: out of order {values:?}"
        );
        assert_eq!(versions.last(), Some(&(CHANGES as u32)), "user {id}");
    }
    assert!(a.store.failed_jobs(None).await.unwrap().is_empty());
}

/// Writes a config file for a node run as its own process (so it can be killed) and starts it.
async fn start_node_process(
    a: &TestApp,
    fake: &GraphFake,
    dir: &Path,
    node: &str,
    sync_keys: &str,
) -> (Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The token key is an `[m365]` setting: it goes at the top of that table.
    let m365 = m365_settings(fake, sync_keys, "").replace(
        "[m365]\n",
        &format!(
            "[m365]\ntoken_key_file = {:?}\n",
            a.config.data_dir.join("token.key").display().to_string()
        ),
    );
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\nnode_name = \"{node}\"\ndata_dir = {data:?}\n\
         database_url = {db:?}\n[certs]\nkey_file = {key:?}\ncert_file = {cert:?}\n{m365}",
        data = dir.join("data").display().to_string(),
        db = a.config.database_url(),
        key = a.config.certs.key_file.display().to_string(),
        cert = a.config.certs.cert_file.display().to_string(),
    );
    let file = dir.join("idbridge.toml");
    std::fs::write(&file, config).unwrap();
    let child = Command::new(binary())
        .arg("--config")
        .arg(&file)
        .arg("serve")
        .current_dir(dir)
        .env(
            "RUST_LOG",
            std::env::var("NODE_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n");
            let mut body = String::new();
            let _ = s.read_to_string(&mut body);
            if body.contains("ok") {
                break;
            }
        }
        assert!(Instant::now() < deadline, "node {node} did not start");
        // Not a thread sleep: node A runs on this runtime and must keep renewing its leases.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (child, port)
}

/// Jobs `node` holds a live lease on.
async fn claimed_by(a: &TestApp, node: &str) -> i64 {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&a.config.database_url())
        .await
        .unwrap();
    let (n,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM m365_outbox WHERE lease_owner = $1 AND lease_until > $2",
    )
    .bind(node)
    .bind(Utc::now().timestamp_millis())
    .fetch_one(&mut conn)
    .await
    .unwrap();
    n
}

/// Suspends every user (one `accountEnabled = false` change each), alternating nodes.
async fn suspend_all(a: &TestApp, names: &[String]) {
    for name in names {
        a.state()
            .directory
            .set_state(&admin(), name, UserState::Suspended, Utc::now())
            .await
            .unwrap();
    }
}

/// Every user disabled in Microsoft 365, and how many got `accountEnabled` more than once.
fn check_all_disabled(fake: &GraphFake, names: &[String], before: usize) -> usize {
    for name in names {
        let user = fake.user(&format!("{name}@contoso.com")).unwrap();
        assert_eq!(user["accountEnabled"], false, "{name} still enabled");
    }
    let patches = fake.user_patches();
    sent_values(&patches[before..], "accountEnabled")
        .values()
        .filter(|v| v.len() > 1)
        .count()
}

#[tokio::test]
async fn a_killed_node_s_changes_are_delivered_by_the_other_within_30_seconds() {
    if !several_nodes_possible("kill a node") {
        return;
    }
    const USERS: usize = 200;
    // The default lease (15 s): what a dead node's changes wait for.
    let sync_keys = "jobs_per_round = 40\n";
    let (a, fake) = connected(sync_keys, "node_name = \"node-a\"").await;
    let names = bound_users(&a, USERS).await;
    let before = fake.user_patches().len();
    let dir = tempfile::tempdir().unwrap();
    let (mut b, _) = start_node_process(&a, &fake, dir.path(), "node-b", sync_keys).await;

    // A slow Microsoft keeps rounds in flight, so node B holds claims when it is killed.
    fake.set_latency(Duration::from_millis(700));
    suspend_all(&a, &names).await;
    eventually("node B holds claimed changes", || async {
        (claimed_by(&a, "node-b").await > 0).then_some(())
    })
    .await;
    let held = claimed_by(&a, "node-b").await;
    b.kill().unwrap();
    let killed_at = Instant::now();
    let _ = b.wait();

    settle(&a, USERS, Duration::from_secs(60)).await;
    let took = killed_at.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "node B's {held} claimed changes took {took:?} after the kill"
    );
    let twice = check_all_disabled(&fake, &names, before);
    // At most the one $batch (20 requests) in flight at the kill is sent again.
    assert!(
        twice <= 20,
        "{twice} users got accountEnabled more than once"
    );
    eprintln!("node B held {held} changes at the kill; all delivered {took:?} after it; {twice} sent twice");
}

#[tokio::test]
async fn a_stopping_node_ends_its_round_and_gives_its_changes_back_at_once() {
    if !several_nodes_possible("SIGTERM mid-round") {
        return;
    }
    const USERS: usize = 120;
    // A long lease: the other node could not take the changes over in time by waiting.
    let sync_keys = "jobs_per_round = 40\nlease_seconds = 300\n";
    let (a, fake) = connected(sync_keys, "node_name = \"node-a\"").await;
    let names = bound_users(&a, USERS).await;
    let before = fake.user_patches().len();
    let dir = tempfile::tempdir().unwrap();
    let (b, _) = start_node_process(&a, &fake, dir.path(), "node-b", sync_keys).await;
    fake.set_latency(Duration::from_millis(700));
    suspend_all(&a, &names).await;
    eventually("node B holds claimed changes", || async {
        (claimed_by(&a, "node-b").await > 0).then_some(())
    })
    .await;
    let stopped = Command::new("kill")
        .args(["-TERM", &b.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let started = Instant::now();
    let out = b.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "a clean stop exits 0");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the stop took {:?}",
        started.elapsed()
    );
    assert_eq!(
        claimed_by(&a, "node-b").await,
        0,
        "its claims were given back"
    );
    settle(&a, USERS, Duration::from_secs(60)).await;
    // Sending stops at once; only a request already in flight when the round is dropped
    // (one $batch of 20) could be sent again by the other node.
    let twice = check_all_disabled(&fake, &names, before);
    assert!(
        twice <= 20,
        "{twice} users got accountEnabled more than once"
    );
}

#[tokio::test]
async fn a_restarted_node_takes_back_its_own_claims_at_once() {
    if !several_nodes_possible("restart") {
        return;
    }
    let sync_keys = "lease_seconds = 300\n";
    let (a, fake) = connected(sync_keys, "node_name = \"node-a\"").await;
    let names = bound_users(&a, 5).await;
    let a = a
        .restart_with(&m365_settings(
            &fake,
            &format!("{sync_keys}worker = false\n"),
            "node_name = \"node-a\"",
        ))
        .await;
    // Node B claimed these changes, then died (the claim is made here, as B would); node A
    // delivers nothing (it only answers sign-ins), so only B can deliver them.
    suspend_all(&a, &names).await;
    let claimed = a
        .store
        .claim_outbox_jobs("node-b", Utc::now().timestamp_millis(), 300_000, 100)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 5);
    // B starts again under its name: what it held is due again at once, not in 5 minutes.
    let b = a
        .spawn_node("node-b", &m365_settings(&fake, sync_keys, ""))
        .await;
    let took = settle(&b, 5, Duration::from_secs(20)).await;
    eprintln!("a restarted node's own claims were delivered {took:?} after its start");
    for name in &names {
        assert_eq!(
            fake.user(&format!("{name}@contoso.com")).unwrap()["accountEnabled"],
            false
        );
    }
}

#[tokio::test]
async fn the_cluster_wide_chores_run_on_one_node_and_move_when_it_stops() {
    if !several_nodes_possible("singleton work") {
        return;
    }
    let a = TestApp::spawn_with("node_name = \"node-a\"\n[m365.sync]\nlease_seconds = 3\n").await;
    let b = a
        .spawn_node("node-b", "[m365.sync]\nlease_seconds = 3\n")
        .await;
    let holder = eventually("one node holds the chores", || async {
        let leases = a.store.work_leases().await.unwrap();
        leases
            .into_iter()
            .find(|(name, owner, _)| name == idbridge::cluster::SINGLETON_WORK && owner.is_some())
            .and_then(|(_, owner, _)| owner)
    })
    .await;
    assert_eq!(
        a.state().duty.held() as u8 + b.state().duty.held() as u8,
        1,
        "exactly one node does the chores"
    );
    let (stays, stopping) = if holder == "node-a" { (b, a) } else { (a, b) };
    assert!(stopping.state().duty.held());
    let _ = stopping.stop().await;
    eventually("the other node takes the chores over", || async {
        stays.state().duty.held().then_some(())
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// The lease rules underneath, on both databases
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_round_that_outlived_its_lease_records_nothing() {
    // No worker on this node: the test plays the nodes' parts itself.
    let (app, _fake) = connected("worker = false\n", "").await;
    let user = app.create_user("lena", "lena@contoso.com", PASSWORD).await;
    app.store
        .bind_users(
            &[idbridge::store::BindRequest {
                user_id: user.id.clone(),
                user_principal_name: "lena@contoso.com".into(),
                immutable_id_candidate: "bGVuYQ==".into(),
                m365_object_id: None,
            }],
            Utc::now().timestamp_millis(),
            &[],
        )
        .await
        .unwrap();
    let now = Utc::now().timestamp_millis();
    // Node A claims the bind with a lease that runs out at once (it stalled)…
    let stale = app
        .store
        .claim_outbox_jobs("node-a", now, 1, 10)
        .await
        .unwrap();
    assert_eq!(stale.len(), 1);
    // …and node B takes it over and delivers it.
    let later = now + 10;
    let fresh = app
        .store
        .claim_outbox_jobs("node-b", later, 60_000, 10)
        .await
        .unwrap();
    assert_eq!(fresh.len(), 1, "an expired lease is claimable");
    assert_eq!(fresh[0].id, stale[0].id);
    assert!(
        fresh[0].lease_token > stale[0].lease_token,
        "fencing tokens increase"
    );
    // Nobody else gets it while B holds it.
    assert!(app
        .store
        .claim_outbox_jobs("node-c", later + 1, 60_000, 10)
        .await
        .unwrap()
        .is_empty());
    let bound = |object: &str| Completion {
        job_id: fresh[0].id,
        lease_token: fresh[0].lease_token,
        user_id: user.id.clone(),
        effect: JobEffect::Bound(idbridge::store::BindOutcome {
            m365_object_id: object.into(),
            immutable_id: "bGVuYQ==".into(),
            user_principal_name: "lena@contoso.com".into(),
            account_enabled: true,
            created: true,
        }),
        event: None,
        follow_ups: Vec::new(),
    };
    app.store
        .complete_jobs(&[bound("object-b")], later)
        .await
        .unwrap();
    // A newer change is queued behind it.
    app.store
        .queue_job_if_bound(&user.id, &OutboxJob::account(), later + 20)
        .await
        .unwrap();

    // Node A wakes up: completing, postponing or failing under its old token changes nothing.
    let mut stale_completion = bound("object-a");
    stale_completion.job_id = stale[0].id;
    stale_completion.lease_token = stale[0].lease_token;
    app.store
        .complete_jobs(&[stale_completion], later + 30)
        .await
        .unwrap();
    app.store
        .postpone_job(
            stale[0].id,
            stale[0].lease_token,
            true,
            later + 40,
            "stale",
            later + 30,
        )
        .await
        .unwrap();
    let event = NewEvent::new(Utc::now(), &Actor::System, "m365_sync_failed", None);
    app.store
        .fail_job(&stale[0], "stale failure", later + 30, &event)
        .await
        .unwrap();
    let binding = app.store.binding(&user.id).await.unwrap().unwrap();
    assert_eq!(
        binding.m365_object_id.as_deref(),
        Some("object-b"),
        "B's outcome stands"
    );
    assert_eq!(binding.state.as_str(), "bound");
    assert_eq!(binding.last_error, None);
    let queued = app.store.queued_jobs(&user.id).await.unwrap();
    assert_eq!(
        queued.len(),
        1,
        "the newer change is still queued: {queued:?}"
    );
    assert_eq!(queued[0].kind, "account");
    assert_eq!(queued[0].attempts, 0);
    assert!(app.store.failed_jobs(None).await.unwrap().is_empty());
    // Renewing under the stale token holds nothing.
    assert_eq!(
        app.store
            .renew_outbox_lease(stale[0].lease_token.unwrap(), later + 99_000)
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn a_token_refresh_racing_a_deactivation_cannot_undo_it() {
    let (app, _fake) = connected("", "").await;
    let store = &app.store;
    // A refresh read the connected row…
    let read = store.m365_connection().await.unwrap().unwrap();
    assert_eq!(read.state, "connected");
    // …an admin deactivated meanwhile…
    let event = NewEvent::new(Utc::now(), &admin(), "m365_deactivate", None);
    store
        .deactivate_m365(Utc::now().timestamp_millis(), &event)
        .await
        .unwrap();
    // …and the refresh finishes: its tokens are not stored, nor is "reauthorize".
    let refreshed = ConnectionRow {
        access_token_enc: Some("sealed-new-token".into()),
        access_token_expires_at: Some(Utc::now().timestamp_millis() + 3_600_000),
        refresh_token_enc: Some("sealed-new-refresh".into()),
        ..read.clone()
    };
    assert!(!store
        .save_refreshed_m365_tokens(&refreshed, read.connected_at)
        .await
        .unwrap());
    let failure = NewEvent::new(
        Utc::now(),
        &Actor::System,
        "m365_token_refresh_failed",
        None,
    );
    assert!(!store
        .mark_m365_reauthorize("refused", read.connected_at, 0, &failure)
        .await
        .unwrap());
    let row = store.m365_connection().await.unwrap().unwrap();
    assert_eq!(row.state, "deactivated");
    assert_eq!(row.access_token_enc, None);
    assert_eq!(row.refresh_token_enc, None);
    // Through the service too: a deactivated connection gives no token.
    let err = app
        .state()
        .m365
        .access_token(Utc::now())
        .await
        .expect_err("no token after deactivation");
    assert!(err.to_string().contains("deactivated"), "{err}");
}

#[tokio::test]
async fn singleton_leases_go_to_one_taker_and_pass_on_when_they_run_out() {
    let app = TestApp::spawn().await;
    let store = &app.store;
    let now = Utc::now().timestamp_millis();
    let first = store
        .acquire_work_lease("test-chore", "node-x", now, 1_000)
        .await
        .unwrap()
        .expect("free lease taken");
    assert!(store
        .acquire_work_lease("test-chore", "node-y", now + 10, 1_000)
        .await
        .unwrap()
        .is_none());
    let renewed = store
        .renew_work_lease("test-chore", first, now + 500, 1_000)
        .await
        .unwrap()
        .expect("held lease renewed");
    // Node X stops renewing: once the lease ran out, Y takes it with a newer token, and X's
    // renewal comes too late.
    let second = store
        .acquire_work_lease("test-chore", "node-y", now + 1_600, 1_000)
        .await
        .unwrap()
        .expect("expired lease taken over");
    assert!(second.token > first.token);
    assert!(store
        .renew_work_lease("test-chore", renewed, now + 1_700, 1_000)
        .await
        .unwrap()
        .is_none());
    // A clean stop gives it up at once.
    store
        .release_work_lease("test-chore", second)
        .await
        .unwrap();
    assert!(store
        .acquire_work_lease("test-chore", "node-x", now + 1_800, 1_000)
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn an_import_run_whose_node_died_is_ended_as_interrupted_by_the_chores_holder() {
    let app = TestApp::spawn_with("node_name = \"node-a\"\n").await;
    let store = &app.store;
    let started = Utc::now().timestamp_millis();
    let run = |id: &str| idbridge::store::ImportRunRow {
        id: id.into(),
        started_by: "admin:alice".into(),
        started_at: started,
        finished_at: None,
        state: "running".into(),
        total: 10,
        imported: 3,
        failed: 0,
        message: None,
    };
    store
        .insert_import_run(&run("run-dead"), "node-b")
        .await
        .unwrap();
    store
        .insert_import_run(&run("run-alive"), "node-c")
        .await
        .unwrap();
    store
        .insert_import_run(&run("run-mine"), "node-a")
        .await
        .unwrap();
    // node-c keeps beating; node-b stopped at the start.
    let later = Utc::now() + chrono::Duration::seconds(120);
    store
        .beat_import_run("run-alive", later.timestamp_millis() - 5_000)
        .await
        .unwrap();
    store
        .beat_import_run("run-mine", later.timestamp_millis() - 5_000)
        .await
        .unwrap();

    app.state().m365.end_abandoned_imports(later).await;
    let dead = store.import_run("run-dead").await.unwrap().unwrap();
    assert_eq!(dead.state.as_str(), "failed");
    let message = dead.message.unwrap_or_default();
    assert!(
        message.contains("node-b") && message.contains("start the import again"),
        "{message}"
    );
    assert_eq!(dead.total, 10, "the run keeps its counters");
    assert_eq!(
        store.import_run("run-alive").await.unwrap().unwrap().state,
        "running"
    );
    let events = store
        .list_events(&idbridge::store::EventFilter {
            event_type: Some("m365_import".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.details.contains("run-dead") && e.details.contains("node-b")),
        "an m365_import event says the run was interrupted"
    );

    // A node that starts again ends its own runs at once (their task is gone), not another
    // live node's.
    store
        .fail_interrupted_import_runs(Some("node-a"), later.timestamp_millis())
        .await
        .unwrap();
    assert_eq!(
        store
            .import_run("run-mine")
            .await
            .unwrap()
            .unwrap()
            .state
            .as_str(),
        "failed"
    );
    assert_eq!(
        store.import_run("run-alive").await.unwrap().unwrap().state,
        "running"
    );
}
