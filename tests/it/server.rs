//! Health endpoints, security headers and that a restart keeps all data.

use crate::support::TestApp;

#[tokio::test]
async fn health_and_readiness() {
    let app = TestApp::spawn().await;
    let client = reqwest::Client::new();
    let r = client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");
    let r = client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["database"]["ok"], true);
    assert_eq!(body["checks"]["signingCertificate"]["matchesBaseUrl"], true);
    assert!(
        body["checks"]["signingCertificate"]["daysLeft"]
            .as_i64()
            .unwrap()
            > 3000
    );
    assert_eq!(body["checks"]["m365"]["state"], "not_connected");
    assert_eq!(body["checks"]["outbox"]["queued"], 0);
    assert_eq!(body["warnings"], serde_json::json!([]));
}

#[tokio::test]
async fn readiness_fails_when_the_database_is_gone() {
    let app = TestApp::spawn().await;
    app.store.close().await;
    let r = reqwest::get(app.url("/readyz")).await.unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["status"], "unready");
    assert_eq!(body["checks"]["database"]["ok"], false);
}

#[tokio::test]
async fn unknown_page_is_a_404_page_with_security_headers() {
    let app = TestApp::spawn().await;
    let r = reqwest::get(app.url("/no/such/page")).await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert!(r.text().await.unwrap().contains("Not found"));
}

#[tokio::test]
async fn restart_keeps_users_bindings_events_and_the_signing_certificate() {
    let app = TestApp::spawn().await;
    let user = app
        .create_user("keeper", "keeper@contoso.com", "Keep me 1!")
        .await;
    app.bind(&user, "a2VlcGVyMDAwMDAwMDAwMA==", "keeper@contoso.com")
        .await;
    let fingerprint = app.state().idp.signing().fingerprint_sha256();
    let metadata = reqwest::get(app.url("/saml/metadata"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dir = app.stop().await;

    let again = TestApp::spawn_in(dir, "").await;
    let user = again.state().directory.get_user("keeper").await.unwrap();
    let binding = user.m365.clone().expect("binding kept");
    assert_eq!(binding.immutable_id, "a2VlcGVyMDAwMDAwMDAwMA==");
    assert_eq!(user.email, "keeper@contoso.com");
    assert!(user.has_password());
    let ok = again
        .state()
        .directory
        .authenticate(
            "keeper",
            &secrecy::SecretString::from("Keep me 1!".to_string()),
        )
        .await
        .unwrap()
        .is_some();
    assert!(ok, "password survives a restart");
    assert_eq!(
        again.state().idp.signing().fingerprint_sha256(),
        fingerprint
    );
    let metadata_again = reqwest::get(again.url("/saml/metadata"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Same certificate and entity; only the port in the URLs may differ.
    let cert = |m: &str| {
        let start = m.find("<ds:X509Certificate>").unwrap();
        m[start..start + 200].to_string()
    };
    assert_eq!(cert(&metadata), cert(&metadata_again));
    assert_eq!(again.events("user_create").await.len(), 1);
}

#[tokio::test]
async fn batched_events_are_all_committed_on_shutdown() {
    use idbridge::events::{Actor, NewEvent};
    use idbridge::store::WriteBehind;
    let app = TestApp::spawn().await;
    let token = tokio_util::sync::CancellationToken::new();
    let (events, writer) = WriteBehind::start(app.store.clone(), token.clone());
    for i in 0..1000 {
        let event = NewEvent::new(
            chrono::Utc::now(),
            &Actor::System,
            "batch_test",
            Some(&i.to_string()),
        );
        events.record_event(event).await;
    }
    // Shutdown while events are still queued: the writer drains them before it stops.
    token.cancel();
    writer.await.unwrap();
    assert_eq!(app.events("batch_test").await.len(), 1000);
}
