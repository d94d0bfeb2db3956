//! Test support for Microsoft 365 work: a server pointed at the Graph fake with quick sync
//! retries, connected or not, and waiting for bindings to settle.

use std::future::Future;
use std::time::Duration;

use chrono::Utc;
use idbridge::directory::User;
use idbridge::events::Actor;

use super::graph_fake::GraphFake;
use super::TestApp;

/// TOML pointing `[m365]` at the fake (client secret, one tenant) with quick sync retries;
/// `sync_keys` adds keys to `[m365.sync]`, `extra` adds whole tables (placed first).
pub fn m365_settings(fake: &GraphFake, sync_keys: &str, extra: &str) -> String {
    format!(
        "{extra}\n[m365]\nlogin_base_url = \"{}\"\ngraph_base_url = \"{}\"\nclient_id = \"{}\"\n\
         client_secret = \"{}\"\ntenant = \"{}\"\n[m365.sync]\npoll_interval_ms = 50\n\
         retry_base_ms = 30\nretry_max_seconds = 1\ngraph_retry_base_ms = 5\n\
         import_interval_seconds = 3600\n{sync_keys}\n",
        fake.login_base_url(),
        fake.graph_base_url(),
        GraphFake::CLIENT_ID,
        GraphFake::CLIENT_SECRET,
        GraphFake::TENANT_ID,
    )
}

/// A fake tenant with contoso.com as its (managed) default domain, and a server configured
/// for it (our callback registered), not yet connected.
pub async fn configured(sync_keys: &str, extra: &str) -> (TestApp, GraphFake) {
    let fake = GraphFake::start().await;
    fake.add_domain("contoso.com", false, true);
    let app = TestApp::spawn_with(&m365_settings(&fake, sync_keys, extra)).await;
    fake.register_redirect_uri(&app.url("/m365/callback"));
    fake.register_redirect_uri(&app.url("/signed-out"));
    (app, fake)
}

/// The same, connected with the app's own credentials (client credentials).
pub async fn connected(sync_keys: &str, extra: &str) -> (TestApp, GraphFake) {
    let (app, fake) = configured(sync_keys, extra).await;
    app.state()
        .m365
        .connect_application(&Actor::cli(), Utc::now())
        .await
        .expect("connected");
    (app, fake)
}

/// Polls `check` until it returns Some, for up to 15 s.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the user's binding has `state` and nothing is queued for them.
pub async fn settled(app: &TestApp, key: &str, state: &str) -> User {
    eventually(&format!("{key} {state} and synced"), || async {
        let u = app.state().directory.get_user(key).await.unwrap();
        let queued = app.store.has_queued_jobs(&u.id).await.unwrap();
        (u.m365.as_ref().map(|b| b.state.as_str()) == Some(state) && !queued).then_some(u)
    })
    .await
}
