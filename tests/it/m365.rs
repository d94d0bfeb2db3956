//! The Microsoft 365 connection and import, against the identity-platform and Graph fake.

use chrono::Utc;
use idbridge::events::Actor;
use idbridge::m365::{ImportSelection, M365Error};
use secrecy::ExposeSecret;

use crate::support::graph_fake::{FakeUserSpec, GraphFake};
use crate::support::TestApp;

/// A server whose [m365] settings point at the fake, and the fake with our redirect URI.
async fn connected_pair(extra: &str) -> (TestApp, GraphFake) {
    let fake = GraphFake::start().await;
    let app = spawn_against(&fake, extra).await;
    (app, fake)
}

async fn spawn_against(fake: &GraphFake, extra: &str) -> TestApp {
    let toml = format!(
        "[m365]\nlogin_base_url = \"{}\"\ngraph_base_url = \"{}\"\nclient_id = \"{}\"\n{}\n",
        fake.login_base_url(),
        fake.graph_base_url(),
        GraphFake::CLIENT_ID,
        extra
    );
    let app = TestApp::spawn_with(&toml).await;
    fake.register_redirect_uri(&app.url("/m365/callback"));
    app
}

/// The value of one query parameter of a URL.
fn query_param(url: &str, name: &str) -> String {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("{name} in {url}"))
        .1
        .into_owned()
}

fn secret() -> String {
    format!("client_secret = \"{}\"", GraphFake::CLIENT_SECRET)
}

/// Runs the consent flow as an admin's browser would: open the URL, follow Microsoft's
/// redirect to our callback. Returns the callback's status and page.
pub(crate) async fn consent(app: &TestApp) -> (u16, String) {
    let url = app
        .state()
        .m365
        .begin_connect(&Actor::Admin("root".into()), Utc::now())
        .await
        .expect("consent URL");
    follow_consent(app, &url).await
}

async fn follow_consent(app: &TestApp, url: &str) -> (u16, String) {
    let browser = app.browser();
    let at_microsoft = browser.get(url).send().await.unwrap();
    assert_eq!(at_microsoft.status(), 302, "Microsoft redirects back");
    let back = at_microsoft.headers()["location"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(back.starts_with(&app.url("/m365/callback")), "{back}");
    let page = browser.get(&back).send().await.unwrap();
    (page.status().as_u16(), page.text().await.unwrap())
}

#[tokio::test]
async fn consent_flow_connects_the_tenant_with_pkce_and_state() {
    let (app, fake) = connected_pair(&secret()).await;
    fake.add_domain("contoso.com", false, true);
    let url = app
        .state()
        .m365
        .begin_connect(&Actor::Admin("root".into()), Utc::now())
        .await
        .unwrap();
    let parsed = url::Url::parse(&url).unwrap();
    let q: std::collections::HashMap<_, _> = parsed.query_pairs().into_owned().collect();
    assert!(
        parsed
            .path()
            .ends_with("/organizations/oauth2/v2.0/authorize"),
        "{url}"
    );
    assert_eq!(q["code_challenge_method"], "S256");
    assert!(q["scope"].contains("offline_access"));
    assert!(q["scope"].contains("/User.ReadWrite.All"));
    assert!(q["scope"].contains("/User-PasswordProfile.ReadWrite.All"));
    assert!(q["scope"].contains("/Domain.Read.All"));
    assert_eq!(q["redirect_uri"], app.url("/m365/callback"));

    let (status, page) = follow_consent(&app, &url).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Microsoft 365 is connected"));
    let s = app.state().m365.status().await.unwrap();
    assert_eq!(s.state, "connected");
    assert_eq!(s.mode.as_deref(), Some("delegated"));
    assert_eq!(s.tenant_id.as_deref(), Some(GraphFake::TENANT_ID));
    assert_eq!(s.default_domain.as_deref(), Some("contoso.com"));
    assert_eq!(s.connected_by.as_deref(), Some("admin:root"));

    let redeem = fake
        .token_requests()
        .into_iter()
        .find(|r| r.get("grant_type").map(String::as_str) == Some("authorization_code"))
        .expect("code redeemed");
    assert!(redeem.contains_key("code_verifier"), "PKCE verifier sent");

    // Tokens are sealed at rest: nothing in the connection row is a bearer token.
    let row = app.store.m365_connection().await.unwrap().unwrap();
    assert!(row.access_token_enc.as_deref().unwrap().starts_with("v1:"));
    assert!(row.refresh_token_enc.as_deref().unwrap().starts_with("v1:"));
    let token = app.state().m365.access_token(Utc::now()).await.unwrap();
    assert!(!row
        .access_token_enc
        .unwrap()
        .contains(token.expose_secret()));
    let connected = app.events("m365_connect").await;
    assert_eq!(connected.len(), 1);
    assert_eq!(connected[0].actor, "admin:root");
    assert!(!connected[0].details.contains(token.expose_secret()));
}

#[tokio::test]
async fn a_wrong_or_reused_state_is_refused_and_recorded() {
    let (app, _fake) = connected_pair(&secret()).await;
    let browser = app.browser();
    let page = browser
        .get(app.url("/m365/callback?code=abc&state=forged"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 400);
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("unknown, used or expired"));

    // A real state works once; replaying the same callback URL is refused.
    let url = app
        .state()
        .m365
        .begin_connect(&Actor::Admin("root".into()), Utc::now())
        .await
        .unwrap();
    let at_microsoft = browser.get(&url).send().await.unwrap();
    let back = at_microsoft.headers()["location"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(browser.get(&back).send().await.unwrap().status(), 200);
    assert_eq!(browser.get(&back).send().await.unwrap().status(), 400);
    assert_eq!(app.events("m365_connect_failed").await.len(), 2);
}

#[tokio::test]
async fn a_code_redeemed_with_another_flows_verifier_is_refused() {
    let (app, _fake) = connected_pair(&secret()).await;
    let m365 = &app.state().m365;
    let first = m365
        .begin_connect(&Actor::System, Utc::now())
        .await
        .unwrap();
    let second = m365
        .begin_connect(&Actor::System, Utc::now())
        .await
        .unwrap();
    let browser = app.browser();
    // The code comes from the first flow (its PKCE challenge) but is returned with the
    // second flow's state, so idbridge redeems it with the wrong verifier.
    let back = browser.get(&first).send().await.unwrap().headers()["location"]
        .to_str()
        .unwrap()
        .to_string();
    let code = query_param(&back, "code");
    let second_state = query_param(&second, "state");
    let mut callback = url::Url::parse(&app.url("/m365/callback")).unwrap();
    callback
        .query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &second_state);
    let page = browser.get(callback.as_str()).send().await.unwrap();
    assert_eq!(page.status(), 400);
    let text = page.text().await.unwrap();
    assert!(text.contains("invalid_grant"), "{text}");
    assert_eq!(m365.status().await.unwrap().state, "not_connected");
    assert_eq!(app.events("m365_connect_failed").await.len(), 1);
}

#[tokio::test]
async fn declined_consent_shows_microsofts_reason() {
    let (app, fake) = connected_pair(&secret()).await;
    fake.deny_next_consent();
    let (status, page) = consent(&app).await;
    assert_eq!(status, 400);
    assert!(page.contains("access_denied"), "{page}");
    assert_eq!(
        app.state().m365.status().await.unwrap().state,
        "not_connected"
    );
}

#[tokio::test]
async fn missing_client_settings_say_what_to_set() {
    let fake = GraphFake::start().await;
    let app = spawn_against(&fake, "").await;
    let err = app
        .state()
        .m365
        .begin_connect(&Actor::System, Utc::now())
        .await
        .unwrap_err();
    assert!(matches!(err, M365Error::NotConfigured(_)));
    assert!(
        err.to_string().contains("a client secret or a certificate")
            && err.to_string().contains("App registration"),
        "{err}"
    );
}

#[tokio::test]
async fn access_tokens_are_refreshed_with_the_rotated_refresh_token() {
    let (app, fake) = connected_pair(&secret()).await;
    // Shorter than idbridge's two-minute margin, so every use refreshes.
    fake.set_token_lifetime(60);
    assert_eq!(consent(&app).await.0, 200);
    let m365 = &app.state().m365;
    let t1 = m365.access_token(Utc::now()).await.unwrap();
    let t2 = m365.access_token(Utc::now()).await.unwrap();
    assert_ne!(t1.expose_secret(), t2.expose_secret());
    let refreshes: Vec<_> = fake
        .token_requests()
        .into_iter()
        .filter(|r| r.get("grant_type").map(String::as_str) == Some("refresh_token"))
        .collect();
    assert_eq!(refreshes.len(), 2);
    assert_ne!(
        refreshes[0]["refresh_token"], refreshes[1]["refresh_token"],
        "the second refresh used the token returned by the first"
    );
}

#[tokio::test]
async fn a_revoked_grant_asks_the_admin_to_reconnect() {
    let (app, fake) = connected_pair(&secret()).await;
    fake.set_token_lifetime(60);
    assert_eq!(consent(&app).await.0, 200);
    fake.revoke_refresh_tokens();
    let err = app.state().m365.access_token(Utc::now()).await.unwrap_err();
    assert!(matches!(err, M365Error::Reconnect(_)), "{err}");
    let status = app.state().m365.status().await.unwrap();
    assert_eq!(status.state, "reconnect");
    assert!(status.last_error.unwrap().contains("invalid_grant"));
    assert_eq!(app.events("m365_token_refresh_failed").await.len(), 1);
    // Reconnecting restores it.
    assert_eq!(consent(&app).await.0, 200);
    assert_eq!(app.state().m365.status().await.unwrap().state, "connected");
}

#[tokio::test]
async fn client_credentials_mode_with_a_secret() {
    let extra = format!("{}\ntenant = \"{}\"", secret(), GraphFake::TENANT_ID);
    let (app, fake) = connected_pair(&extra).await;
    let status = app
        .state()
        .m365
        .connect_application(&Actor::cli(), Utc::now())
        .await
        .unwrap();
    assert_eq!(status.state, "connected");
    assert_eq!(status.mode.as_deref(), Some("application"));
    let req = fake.token_requests().pop().unwrap();
    assert_eq!(req["grant_type"], "client_credentials");
    assert!(req["scope"].ends_with("/.default"));
    // No refresh token in this mode: an expired token is simply fetched again.
    fake.set_token_lifetime(60);
    app.state()
        .m365
        .connect_application(&Actor::cli(), Utc::now())
        .await
        .unwrap();
    app.state().m365.access_token(Utc::now()).await.unwrap();
    let grants: Vec<_> = fake
        .token_requests()
        .into_iter()
        .map(|r| r["grant_type"].clone())
        .collect();
    assert!(
        grants.iter().all(|g| g == "client_credentials"),
        "{grants:?}"
    );
}

#[tokio::test]
async fn client_credentials_mode_with_a_certificate() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (cred, key_pem, cert_pem) =
        idbridge::saml::SigningCredential::generate(2048, "idbridge-app", 30).unwrap();
    drop(cred);
    let key = dir.path().join("app.key");
    let cert = dir.path().join("app.crt");
    std::fs::write(&key, key_pem).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&cert, &cert_pem).unwrap();
    let extra = format!(
        "client_certificate_file = \"{}\"\nclient_key_file = \"{}\"\ntenant = \"{}\"",
        cert.display(),
        key.display(),
        GraphFake::TENANT_ID
    );
    let (app, fake) = connected_pair(&extra).await;
    // Registered with the app: the fake now verifies the assertion's RS256 signature.
    fake.register_certificate(std::str::from_utf8(&cert_pem).unwrap());
    let status = app
        .state()
        .m365
        .connect_application(&Actor::cli(), Utc::now())
        .await
        .unwrap();
    assert_eq!(status.state, "connected");
    assert_eq!(
        fake.client_auth_methods().pop().as_deref(),
        Some("private_key_jwt")
    );
    let req = fake.token_requests().pop().unwrap();
    assert_eq!(
        req["client_assertion_type"],
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    );
    assert!(!req.contains_key("client_secret"));
}

#[tokio::test]
async fn import_of_2500_users_across_pages_with_throttling() {
    let (app, fake) = connected_pair(&secret()).await;
    fake.add_domain("contoso.com", false, true);
    let ids = fake.add_users(2500, "contoso.com");
    assert_eq!(ids.len(), 2500);
    assert_eq!(consent(&app).await.0, 200);
    let before = fake.requests().len();
    // Page 1 goes through, page 2 is throttled twice and then hit by a 503, page 3 passes:
    // Retry-After is honoured, nothing is lost, and nobody is imported twice.
    fake.pass_next(1);
    fake.throttle_next(2, "0.05");
    fake.fail_next(1, 503);
    let mut seen = Vec::new();
    let report = app
        .state()
        .m365
        .import(
            &app.state().directory,
            &Actor::Admin("root".into()),
            &ImportSelection::All,
            Utc::now(),
            |p| seen.push(p),
        )
        .await
        .unwrap();
    assert_eq!(report.imported, 2500);
    assert_eq!(report.failed, 0);
    assert_eq!(app.store.count_users().await.unwrap(), 2500);
    assert_eq!(seen.last().unwrap().done, 2500);
    let list_calls = fake.requests()[before..]
        .iter()
        .filter(|(m, p)| m == "GET" && p.contains("/users"))
        .count();
    assert_eq!(
        list_calls,
        3 + 3,
        "3 pages of 999, plus 3 refused attempts at page 2"
    );
    let page_two: Vec<_> = fake.requests()[before..]
        .iter()
        .filter(|(m, p)| m == "GET" && p.contains("/users") && p.contains("skiptoken"))
        .cloned()
        .collect();
    assert_eq!(
        page_two.len(),
        4 + 1,
        "page 2 asked four times, page 3 once: {page_two:?}"
    );
    assert!(
        page_two[..4].windows(2).all(|w| w[0] == w[1]),
        "page 2 retried verbatim"
    );

    // Importing again imports nobody twice.
    let again = app
        .state()
        .m365
        .import(
            &app.state().directory,
            &Actor::System,
            &ImportSelection::All,
            Utc::now(),
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(again.imported, 0);
    assert_eq!(again.already_imported, 2500);
    assert_eq!(app.store.count_users().await.unwrap(), 2500);
    let listed = app.state().m365.tenant_users().await.unwrap();
    assert!(listed.iter().all(|u| u.imported && !u.bound));
    let ev = app.events("m365_import").await;
    assert_eq!(ev.len(), 2);
    assert!(
        ev[1].details.contains("\"imported\":2500"),
        "{}",
        ev[1].details
    );
}

#[tokio::test]
async fn import_reports_each_user_and_keeps_object_and_immutable_ids() {
    let (app, fake) = connected_pair(&secret()).await;
    fake.add_domain("contoso.com", false, true);
    fake.add_user(FakeUserSpec {
        upn: "adele.vance@contoso.com".into(),
        given_name: Some("Adele".into()),
        surname: Some("Vance".into()),
        display_name: Some("Adele Vance".into()),
        immutable_id: Some("yU+2g8ZoAE2X4a4AAfw+KQ==".into()),
        account_enabled: true,
        ..FakeUserSpec::default()
    });
    let taken = fake.add_user(FakeUserSpec {
        upn: "taken@contoso.com".into(),
        given_name: Some("Taken".into()),
        surname: Some("Already".into()),
        display_name: Some("Taken Already".into()),
        account_enabled: true,
        ..FakeUserSpec::default()
    });
    app.create_user("local", "taken@contoso.com", "Secret pw 1!x")
        .await;
    assert_eq!(consent(&app).await.0, 200);

    let report = app
        .state()
        .m365
        .import(
            &app.state().directory,
            &Actor::Admin("root".into()),
            &ImportSelection::Users(vec![
                "Adele.Vance@contoso.com".into(),
                taken.clone(),
                "nobody@contoso.com".into(),
            ]),
            Utc::now(),
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!((report.imported, report.failed), (1, 2));
    let outcome = |key: &str| {
        report
            .results
            .iter()
            .find(|r| r.user_principal_name.as_deref() == Some(key) || r.m365_object_id == key)
            .unwrap()
            .clone()
    };
    assert_eq!(outcome("adele.vance@contoso.com").outcome, "imported");
    let failed = outcome("taken@contoso.com");
    assert_eq!(failed.outcome, "failed");
    assert!(failed.message.unwrap().contains("email already exists"));
    assert!(outcome("nobody@contoso.com")
        .message
        .unwrap()
        .contains("no such user"));

    let adele = app.state().directory.get_user("adele.vance").await.unwrap();
    assert_eq!(adele.firstname, "Adele");
    assert_eq!(adele.lastname, "Vance");
    assert_eq!(adele.email, "adele.vance@contoso.com");
    let link = app
        .store
        .m365_links()
        .await
        .unwrap()
        .into_iter()
        .find(|l| l.user_id == adele.id)
        .unwrap();
    assert_eq!(
        link.immutable_id.as_deref(),
        Some("yU+2g8ZoAE2X4a4AAfw+KQ==")
    );
    assert_eq!(link.tenant_id, GraphFake::TENANT_ID);
    assert_eq!(app.events("m365_import_user_failed").await.len(), 2);
}

/// Events of a type, however many (`TestApp::events` stops at 1,000).
async fn all_events(app: &TestApp, event_type: &str) -> Vec<idbridge::store::EventRow> {
    app.state().idp.flush_events().await;
    app.store
        .list_events(&idbridge::store::EventFilter {
            event_type: Some(event_type.into()),
            limit: 100_000,
            ..idbridge::store::EventFilter::default()
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn import_of_all_writes_page_by_page_with_the_one_by_one_outcomes() {
    let (app, fake) = connected_pair(&secret()).await;
    fake.add_domain("contoso.com", false, true);
    fake.add_domain("fabrikam.com", false, false);
    // Page 1: user0001 … user0999; page 2: user1000 and the users below.
    fake.add_users(1000, "contoso.com");
    let spec = |upn: &str, given: &str| FakeUserSpec {
        upn: upn.into(),
        given_name: Some(given.into()),
        surname: Some("Page2".into()),
        account_enabled: true,
        ..FakeUserSpec::default()
    };
    // Same username as the user just before it on the same page: the first one wins.
    let dup_first = fake.add_user(spec("dup.name@contoso.com", "First"));
    let dup_second = fake.add_user(spec("Dup.Name@fabrikam.com", "Second"));
    // Same username as a user imported from page 1.
    let cross_page = fake.add_user(spec("user0003@fabrikam.com", "Cross"));
    // A first name idbridge refuses (more than 64 characters).
    let long_name = fake.add_user(spec("long.name@contoso.com", &"L".repeat(65)));
    assert_eq!(consent(&app).await.0, 200);
    // Already here before the import: the email of user0005, the username of user0010.
    let local5 = app
        .create_user("local5", "user0005@contoso.com", "Secret pw 1!x")
        .await;
    app.create_user("user0010", "someone@else.example", "Secret pw 1!x")
        .await;
    // Imported before.
    let first = app
        .state()
        .m365
        .import(
            &app.state().directory,
            &Actor::Admin("root".into()),
            &ImportSelection::Users(vec!["user0020@contoso.com".into()]),
            Utc::now(),
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!((first.imported, first.failed), (1, 0));

    let mut seen = Vec::new();
    let report = app
        .state()
        .m365
        .import(
            &app.state().directory,
            &Actor::Admin("root".into()),
            &ImportSelection::All,
            Utc::now(),
            |p| seen.push(p),
        )
        .await
        .unwrap();
    // 1,004 tenant users, one imported before; five fail, the others import.
    assert_eq!(report.already_imported, 1);
    assert_eq!(report.total, 1003);
    assert_eq!((report.imported, report.failed), (998, 5));
    assert_eq!(report.results.len(), 1003);
    // One report before anything, then one per page written.
    assert_eq!(seen.len(), 3, "{seen:?}");
    let last = seen.last().unwrap();
    assert_eq!(
        (last.done, last.total, last.imported, last.failed),
        (1003, 1003, 998, 5)
    );
    let run = app.store.import_run(&report.run_id).await.unwrap().unwrap();
    assert_eq!(
        (run.state.as_str(), run.total, run.imported, run.failed),
        ("finished", 1003, 998, 5)
    );

    let outcome = |object_id: &str| {
        report
            .results
            .iter()
            .find(|r| r.m365_object_id == object_id)
            .unwrap_or_else(|| panic!("a result for {object_id}"))
            .clone()
    };
    let by_upn = |upn: &str| fake.user(upn).unwrap()["id"].as_str().unwrap().to_string();
    let failed = |object_id: &str| {
        let r = outcome(object_id);
        assert_eq!(r.outcome, "failed", "{r:?}");
        assert!(r.user_id.is_none());
        r.message.unwrap()
    };
    assert_eq!(
        failed(&by_upn("user0005@contoso.com")),
        "a user with this email already exists in idbridge"
    );
    assert_eq!(
        failed(&by_upn("user0010@contoso.com")),
        "a user with this username already exists in idbridge"
    );
    assert_eq!(
        failed(&dup_second),
        "a user with this username already exists in idbridge"
    );
    assert_eq!(
        failed(&cross_page),
        "a user with this username already exists in idbridge"
    );
    assert!(failed(&long_name).contains("firstname"));
    let first_dup = outcome(&dup_first);
    assert_eq!(first_dup.outcome, "imported");
    assert_eq!(first_dup.message.as_deref(), Some("imported as dup.name"));
    let dup = app.state().directory.get_user("dup.name").await.unwrap();
    assert_eq!(first_dup.user_id.as_deref(), Some(dup.id.as_str()));
    assert_eq!(dup.firstname, "First");
    assert_eq!(dup.email, "dup.name@contoso.com");
    let user3 = app.state().directory.get_user("user0003").await.unwrap();
    assert_eq!(user3.email, "user0003@contoso.com", "page 1's user kept");
    let kept = app.state().directory.get_user("local5").await.unwrap();
    assert_eq!((kept.id, kept.email), (local5.id, local5.email));

    // 2 local + 1 imported before + 998.
    assert_eq!(app.store.count_users().await.unwrap(), 1001);
    assert_eq!(app.store.m365_links().await.unwrap().len(), 999);
    // Each user created has its event (with the M365 object it came from), each failure its own.
    let created = all_events(&app, "user_create").await;
    assert_eq!(
        created
            .iter()
            .filter(|e| e.details.contains("\"importedFrom\":\""))
            .count(),
        999
    );
    let dup_event = created
        .iter()
        .find(|e| e.target.as_deref() == Some("dup.name"))
        .unwrap();
    assert!(
        dup_event.details.contains(&dup_first),
        "{}",
        dup_event.details
    );
    assert_eq!(dup_event.actor, "admin:root");
    let failures = all_events(&app, "m365_import_user_failed").await;
    assert_eq!(failures.len(), 5);
    assert!(failures.iter().all(|e| e.details.contains(&report.run_id)));

    // Again: nobody is imported twice; the five still fail for the same reasons.
    let again = app
        .state()
        .m365
        .import(
            &app.state().directory,
            &Actor::System,
            &ImportSelection::All,
            Utc::now(),
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(
        (again.imported, again.failed, again.already_imported),
        (0, 5, 999)
    );
    assert_eq!(app.store.count_users().await.unwrap(), 1001);
}

#[tokio::test]
async fn deactivation_clears_bindings_and_keeps_users_active() {
    let (app, fake) = connected_pair(&secret()).await;
    fake.add_domain("contoso.com", false, true);
    let object_id = fake.add_user(FakeUserSpec {
        upn: "bea@contoso.com".into(),
        given_name: Some("Bea".into()),
        surname: Some("Bound".into()),
        display_name: Some("Bea Bound".into()),
        account_enabled: true,
        ..FakeUserSpec::default()
    });
    assert_eq!(consent(&app).await.0, 200);
    let user = app
        .create_user("bea", "bea@contoso.com", "Secret pw 9!")
        .await;
    app.bind(&user, "YmVhMDAwMDAwMDAwMDAwMA==", "bea@contoso.com")
        .await;

    let cleared = app
        .state()
        .m365
        .deactivate(&Actor::Admin("root".into()), Utc::now())
        .await
        .unwrap();
    assert_eq!(cleared, 1);
    let user = app.state().directory.get_user("bea").await.unwrap();
    assert!(user.m365.is_none(), "binding cleared");
    assert_eq!(user.state, idbridge::directory::UserState::Active);
    assert_eq!(
        fake.user(&object_id).unwrap()["accountEnabled"],
        true,
        "still active in M365"
    );
    assert_eq!(
        app.state().m365.status().await.unwrap().state,
        "deactivated"
    );
    let err = app.state().m365.access_token(Utc::now()).await.unwrap_err();
    assert!(matches!(err, M365Error::Deactivated));
    let ev = app.events("m365_deactivate").await;
    assert_eq!(ev[0].actor, "admin:root");
    assert!(ev[0].details.contains("\"bindingsCleared\":1"));
}
