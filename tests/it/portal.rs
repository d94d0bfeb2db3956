//! The user portal at `/`: sign-in to the SSO session and sign-out, the profile with what goes
//! to Microsoft 365, the password change (policy, wrong current password, the push to
//! Microsoft 365), and "forgot password" by emailed link through a real SMTP sink.

use std::time::Duration;

use chrono::Utc;
use idbridge::directory::{Attribute, UserChanges};
use idbridge::events::Actor;
use secrecy::SecretString;
use serde_json::Value;

use crate::support::m365::{connected, eventually, settled};
use crate::support::smtp_sink::SmtpSink;
use crate::support::{hidden_input, TestApp};

const PASSWORD: &str = "Corr3ct-Horse-Battery";
const NEW_PASSWORD: &str = "Fresh-Passw0rd-2026";

/// Signs in at the portal's form; returns the response to the form's POST.
async fn sign_in(
    app: &TestApp,
    client: &reqwest::Client,
    username: &str,
    password: &str,
) -> reqwest::Response {
    let page = client.get(app.url("/login")).send().await.unwrap();
    let html = page.text().await.unwrap();
    let csrf = hidden_input(&html, "csrf").expect("sign-in form token");
    client
        .post(app.url("/login"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("username", username),
            ("password", password),
            ("next", "/"),
        ])
        .send()
        .await
        .unwrap()
}

/// A browser signed in at the portal as `username`.
async fn signed_in(app: &TestApp, username: &str, password: &str) -> reqwest::Client {
    let client = app.browser();
    let r = sign_in(app, &client, username, password).await;
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap_or_default());
    client
}

/// GET a page: (status, body).
async fn get(app: &TestApp, client: &reqwest::Client, path: &str) -> (u16, String) {
    let r = client.get(app.url(path)).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The session's CSRF token, from the sign-out form of the overview.
async fn csrf(app: &TestApp, client: &reqwest::Client) -> String {
    let (status, html) = get(app, client, "/").await;
    assert_eq!(status, 200);
    hidden_input(&html, "csrf").expect("the overview's sign-out form carries the token")
}

async fn change_password(
    app: &TestApp,
    client: &reqwest::Client,
    current: &str,
    new: &str,
    confirm: &str,
) -> (u16, String) {
    let token = csrf(app, client).await;
    let r = client
        .post(app.url("/password"))
        .form(&[
            ("csrf", token.as_str()),
            ("current", current),
            ("new_password", new),
            ("confirm", confirm),
        ])
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn a_signed_out_visitor_gets_the_sign_in_form_and_signs_in_and_out() {
    let app = TestApp::spawn().await;
    app.create_user("alice", "alice@contoso.com", PASSWORD)
        .await;
    let client = app.browser();

    let r = client.get(app.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("form-action 'self'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    let html = r.text().await.unwrap();
    assert!(html.contains("Sign in to your account"), "{html}");
    assert!(html.contains("href=\"/admin\""), "admins find the console");

    // Wrong password: the form again, the failure counted and recorded.
    let r = sign_in(&app, &client, "alice", "Wrong-Passw0rd!").await;
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("incorrect"));
    let failed = app.events("sso_login_failed").await;
    assert!(failed.iter().any(|e| e.target.as_deref() == Some("alice")));

    // A form posted without this browser's form cookie (login CSRF) is refused.
    let stranger = app.browser();
    let r = stranger
        .post(app.url("/login"))
        .form(&[
            ("csrf", "0".repeat(64).as_str()),
            ("username", "alice"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let r = sign_in(&app, &client, "alice", PASSWORD).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/");
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("idbridge_session="))
        .expect("the SSO session cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("Path=/"),
        "{cookie}"
    );
    let (status, html) = get(&app, &client, "/").await;
    assert_eq!(status, 200);
    assert!(html.contains("Hello, Test alice"), "{html}");
    assert!(html.contains("Sign-in methods"));
    let success = app.events("sso_login_success").await;
    assert_eq!(success.len(), 1, "one SSO session: {success:?}");
    // /login with a session goes home.
    let r = client.get(app.url("/login")).send().await.unwrap();
    assert_eq!(r.status(), 303);

    // Sign-out without the session's token ends nothing.
    let r = client
        .post(app.url("/logout"))
        .form(&[("csrf", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let (denied, _) = app.refusal_count("portal_access_denied").await;
    assert!(denied >= 1);
    assert_eq!(get(&app, &client, "/").await.0, 200);
    assert!(get(&app, &client, "/")
        .await
        .1
        .contains("Hello, Test alice"));

    let token = csrf(&app, &client).await;
    let r = client
        .post(app.url("/logout"))
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/login?signed_out=1");
    let (_, html) = get(&app, &client, "/").await;
    assert!(
        html.contains("Sign in to your account"),
        "signed out: {html}"
    );
    let logout = app.events("sso_logout").await;
    assert!(
        logout.iter().any(|e| e.details.contains("portal")),
        "{logout:?}"
    );
    // The password page now sends to the sign-in form.
    let r = client.get(app.url("/password")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/login?next=%2Fpassword");
}

#[tokio::test]
async fn the_profile_shows_what_idbridge_holds_and_exports_and_the_m365_tile() {
    let app = TestApp::spawn().await;
    let changes = UserChanges::new()
        .with(Attribute::Username, "bea")
        .with(Attribute::Email, "bea@contoso.com")
        .with(Attribute::Firstname, "Bea")
        .with(Attribute::Lastname, "Berg")
        .with(Attribute::JobTitle, "Controller")
        .with(Attribute::Department, "Finance");
    let bea = app
        .state()
        .directory
        .create_user(
            &Actor::System,
            &changes,
            Some(&SecretString::from(PASSWORD.to_string())),
            Utc::now(),
        )
        .await
        .unwrap();
    app.state()
        .sync
        .set_direction(&Actor::System, "department", "export", Utc::now())
        .await
        .unwrap();
    let client = signed_in(&app, "bea", PASSWORD).await;

    // Not bound: no Microsoft 365 tile.
    let (_, html) = get(&app, &client, "/").await;
    assert!(!html.contains("office.com"), "{html}");
    assert!(html.contains("not connected to Microsoft 365"));

    app.bind(&bea, "ImmId-bea", "bea@contoso.onmicrosoft.com")
        .await;
    let (_, html) = get(&app, &client, "/").await;
    assert!(
        html.contains("href=\"https://www.office.com/login?whr=contoso.onmicrosoft.com\""),
        "{html}"
    );
    for text in [
        "Bea",
        "Berg",
        "givenName",
        "surname",
        "userPrincipalName",
        "Controller",
        "Finance",
        "passwordProfile",
        "always sent to Microsoft 365",
    ] {
        assert!(html.contains(text), "{text} on the profile: {html}");
    }
    // Department is exported, job title (never selected) is not shared.
    let row = |label: &str| {
        let start = html.find(&format!(">{label}</th>")).unwrap();
        html[start..start + html[start..].find("</tr>").unwrap()].to_string()
    };
    assert!(
        row("Department").contains("sent to Microsoft 365"),
        "{}",
        row("Department")
    );
    assert!(
        row("Job Title").contains("not shared"),
        "{}",
        row("Job Title")
    );
    assert!(
        row("Username").contains("stays in idbridge"),
        "{}",
        row("Username")
    );
}

#[tokio::test]
async fn a_password_change_is_checked_against_the_policy_and_the_current_password() {
    let app = TestApp::spawn_with("[sign_in]\naccount_max_failures = 3\n").await;
    app.create_user("carl", "carl@contoso.com", PASSWORD).await;
    let client = signed_in(&app, "carl", PASSWORD).await;
    let elsewhere = signed_in(&app, "carl", PASSWORD).await;

    let (status, html) = get(&app, &client, "/password").await;
    assert_eq!(status, 200);
    for rule in [
        "Between 8 and 256 characters",
        "must not contain your username",
        "last 5 passwords",
    ] {
        assert!(html.contains(rule), "{rule}: {html}");
    }

    let (status, html) =
        change_password(&app, &client, PASSWORD, NEW_PASSWORD, "Other-Passw0rd-1").await;
    assert_eq!(status, 422);
    assert!(html.contains("differ"), "{html}");

    let (status, html) = change_password(&app, &client, PASSWORD, "short", "short").await;
    assert_eq!(status, 422);
    assert!(
        html.contains("cannot be used: it must be at least 8"),
        "{html}"
    );
    let rejected = app.events("user_password_rejected").await;
    assert!(rejected
        .iter()
        .any(|e| e.actor == "user:carl" && e.details.contains("portal")));

    let (status, html) =
        change_password(&app, &client, "Wrong-Passw0rd!", NEW_PASSWORD, NEW_PASSWORD).await;
    assert_eq!(status, 422);
    assert!(html.contains("current password is wrong"), "{html}");
    let failed = app.events("sso_login_failed").await;
    assert!(
        failed
            .iter()
            .any(|e| e.details.contains("wrong current password")),
        "{failed:?}"
    );

    // The wrong current password counts in the sign-in throttle: 3 failures lock the name.
    change_password(&app, &client, "Wrong-Passw0rd!", NEW_PASSWORD, NEW_PASSWORD).await;
    change_password(&app, &client, "Wrong-Passw0rd!", NEW_PASSWORD, NEW_PASSWORD).await;
    let (status, html) = change_password(&app, &client, PASSWORD, NEW_PASSWORD, NEW_PASSWORD).await;
    assert_eq!(status, 429, "{html}");
    assert!(html.contains("Try again in"), "{html}");
    let r = sign_in(&app, &app.browser(), "carl", PASSWORD).await;
    assert_eq!(r.status(), 429, "the SSO sign-in is locked too");
    assert!(idbridge::throttle::unlock_account(&app.store, "carl")
        .await
        .unwrap());

    let (status, _) = change_password(&app, &client, PASSWORD, NEW_PASSWORD, NEW_PASSWORD).await;
    assert_eq!(status, 303);
    let (_, html) = get(&app, &client, "/").await;
    assert!(html.contains("Your password was changed"), "{html}");
    // The notice is shown once.
    assert!(!get(&app, &client, "/")
        .await
        .1
        .contains("Your password was changed"));
    let set = app.events("user_password_set").await;
    assert!(set
        .iter()
        .any(|e| e.actor == "user:carl" && e.details.contains("portal")));

    // This session stays, the other one ended; the old password no longer signs in.
    assert!(get(&app, &client, "/").await.1.contains("Hello, Test carl"));
    assert!(get(&app, &elsewhere, "/")
        .await
        .1
        .contains("Sign in to your account"));
    assert_eq!(
        sign_in(&app, &app.browser(), "carl", PASSWORD)
            .await
            .status(),
        401
    );
    assert_eq!(
        sign_in(&app, &app.browser(), "carl", NEW_PASSWORD)
            .await
            .status(),
        303
    );
}

fn prop(fake: &crate::support::graph_fake::GraphFake, upn: &str, name: &str) -> Value {
    fake.user(upn)
        .unwrap_or_else(|| panic!("{upn} in M365"))
        .get(name)
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_password_changed_at_the_portal_reaches_m365_and_ends_its_sessions() {
    let (app, fake) = connected("", "").await;
    app.create_user("dora", "dora@contoso.com", PASSWORD).await;
    let keys = vec!["dora".to_string()];
    app.state()
        .sync
        .bind(&Actor::Admin("root".into()), &keys, Utc::now())
        .await
        .unwrap();
    settled(&app, "dora", "bound").await;
    // Signing in here makes idbridge the password authority (the first push keeps sessions).
    let client = signed_in(&app, "dora", PASSWORD).await;
    eventually("first password push", || async {
        (prop(&fake, "dora@contoso.com", "passwordProfile")["password"] == PASSWORD).then_some(())
    })
    .await;
    settled(&app, "dora", "bound").await;
    assert_eq!(
        prop(&fake, "dora@contoso.com", "signInSessionsValidFromDateTime"),
        Value::Null
    );

    let (_, html) = get(&app, &client, "/").await;
    assert!(
        html.contains("https://www.office.com/login?whr=contoso.com"),
        "{html}"
    );

    let (status, _) = change_password(&app, &client, PASSWORD, NEW_PASSWORD, NEW_PASSWORD).await;
    assert_eq!(status, 303);
    let (_, html) = get(&app, &client, "/").await;
    assert!(html.contains("on its way to Microsoft 365"), "{html}");
    eventually("new password in M365", || async {
        (prop(&fake, "dora@contoso.com", "passwordProfile")["password"] == NEW_PASSWORD)
            .then_some(())
    })
    .await;
    settled(&app, "dora", "bound").await;
    // Seed 003: a password change signs the user out of Microsoft 365, as an admin reset does.
    assert!(prop(&fake, "dora@contoso.com", "signInSessionsValidFromDateTime").is_string());
    assert!(app.store.failed_jobs(None).await.unwrap().is_empty());
}

/// A server with `[smtp]` pointed at a fresh sink.
async fn with_mail(extra: &str) -> (TestApp, SmtpSink) {
    let sink = SmtpSink::start().await;
    let app = TestApp::spawn_with(&format!("{}\n{extra}", sink.settings())).await;
    (app, sink)
}

/// Posts the forgot-password form for `login`: (status, body).
async fn forgot(app: &TestApp, client: &reqwest::Client, login: &str) -> (u16, String) {
    let (status, html) = get(app, client, "/password/forgot").await;
    assert_eq!(status, 200, "{html}");
    let csrf = hidden_input(&html, "csrf").expect("form token");
    let r = client
        .post(app.url("/password/forgot"))
        .form(&[("csrf", csrf.as_str()), ("username", login)])
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Opens a reset link and posts its form: (status, body) of the POST.
async fn use_link(
    app: &TestApp,
    client: &reqwest::Client,
    token: &str,
    new: &str,
) -> (u16, String) {
    let (status, html) = get(app, client, &format!("/password/reset?token={token}")).await;
    assert_eq!(status, 200, "{html}");
    let csrf = hidden_input(&html, "csrf").expect("form token");
    let r = client
        .post(app.url("/password/reset"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("token", token),
            ("new_password", new),
            ("confirm", new),
        ])
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn a_reset_link_mailed_through_smtp_sets_a_new_password_once() {
    let (app, sink) = with_mail("").await;
    let erik = app.create_user("erik", "erik@contoso.com", PASSWORD).await;
    let before = signed_in(&app, "erik", PASSWORD).await;
    let client = app.browser();

    let (status, answer) = forgot(&app, &client, "erik@contoso.com").await;
    assert_eq!(status, 200);
    assert!(answer.contains("Check your email"), "{answer}");
    let mail = sink.wait_for(1).await.remove(0);
    assert_eq!(mail.to, vec!["erik@contoso.com".to_string()]);
    assert_eq!(mail.from, "it@contoso.com");
    assert!(
        mail.data.contains("Subject: Reset your password"),
        "{}",
        mail.data
    );
    assert!(
        mail.text().contains(&app.url("/password/reset?token=")),
        "{}",
        mail.text()
    );
    let token = mail.link_param("token").expect("a link with a token");
    assert_eq!(token.len(), 64);
    // Stored hashed only.
    assert!(app.store.find_reset_token(&token).await.unwrap().is_none());
    assert!(app
        .store
        .find_reset_token(&idbridge::web::token_hash(&token))
        .await
        .unwrap()
        .is_some_and(|row| row.user_id == erik.id));

    // A password the policy refuses leaves the link working.
    let (status, html) = use_link(&app, &client, &token, "erik-lower-only").await;
    assert_eq!(status, 422);
    assert!(html.contains("cannot be used"), "{html}");

    let (status, html) = use_link(&app, &client, &token, NEW_PASSWORD).await;
    assert_eq!(status, 200);
    assert!(html.contains("Password changed"), "{html}");

    // The new password signs in, the old does not, every session ended.
    assert_eq!(
        sign_in(&app, &app.browser(), "erik", PASSWORD)
            .await
            .status(),
        401
    );
    assert_eq!(
        sign_in(&app, &app.browser(), "erik", NEW_PASSWORD)
            .await
            .status(),
        303
    );
    assert!(get(&app, &before, "/")
        .await
        .1
        .contains("Sign in to your account"));

    // The link works once.
    let (status, html) = get(&app, &client, &format!("/password/reset?token={token}")).await;
    assert_eq!(status, 410);
    assert!(html.contains("already used"), "{html}");
    let (status, _) = get(&app, &client, "/password/reset?token=00ff").await;
    assert_eq!(status, 404);

    for event_type in [
        "password_reset_requested",
        "password_reset_sent",
        "password_reset_used",
    ] {
        let events = app.events(event_type).await;
        assert!(
            events.iter().any(|e| e.target.as_deref() == Some("erik")),
            "{event_type}: {events:?}"
        );
    }
    let set = app.events("user_password_set").await;
    assert!(
        set.iter().any(|e| e.details.contains("reset_link")),
        "{set:?}"
    );
    let (_, refused) = app.refusal_count("password_reset_refused").await;
    assert!(refused >= 2, "used and unknown links are refusals");
}

#[tokio::test]
async fn an_unknown_address_gets_the_same_answer_and_no_mail() {
    let (app, sink) = with_mail("").await;
    app.create_user("fay", "fay@contoso.com", PASSWORD).await;
    let client = app.browser();

    let known_started = std::time::Instant::now();
    let (status, known) = forgot(&app, &client, "fay").await;
    let known_took = known_started.elapsed();
    let unknown_started = std::time::Instant::now();
    let (unknown_status, unknown) = forgot(&app, &client, "nobody@contoso.com").await;
    let unknown_took = unknown_started.elapsed();
    assert_eq!((status, unknown_status), (200, 200));
    assert_eq!(
        known, unknown,
        "the same page whether or not the account exists"
    );
    // The mail goes out after the answer: neither answer waits for SMTP.
    assert!(
        known_took < Duration::from_secs(2) && unknown_took < Duration::from_secs(2),
        "{known_took:?} / {unknown_took:?}"
    );

    sink.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mails = sink.messages();
    assert_eq!(mails.len(), 1, "only the real account got mail: {mails:?}");
    assert_eq!(mails[0].to, vec!["fay@contoso.com".to_string()]);
    let requested = app.events("password_reset_requested").await;
    assert!(requested.iter().any(
        |e| e.target.as_deref() == Some("nobody@contoso.com") && e.details.contains("unknown")
    ));
}

#[tokio::test]
async fn reset_requests_are_rate_limited_per_name_and_per_address() {
    let (app, sink) =
        with_mail("[password_reset]\naccount_max_requests = 2\naddress_max_requests = 5\n").await;
    app.create_user("gus", "gus@contoso.com", PASSWORD).await;
    let client = app.browser();
    assert_eq!(forgot(&app, &client, "gus").await.0, 200);
    assert_eq!(forgot(&app, &client, "gus").await.0, 200);
    let (status, html) = forgot(&app, &client, "gus").await;
    assert_eq!(status, 429);
    assert!(html.contains("Too many password-reset requests"), "{html}");
    // An unknown name is limited the same way.
    assert_eq!(forgot(&app, &client, "ghost").await.0, 200);
    assert_eq!(forgot(&app, &client, "ghost").await.0, 200);
    assert_eq!(forgot(&app, &client, "ghost").await.0, 429);
    // Refused requests are not counted: four taken from this address, a fifth is the last.
    assert_eq!(forgot(&app, &client, "someone-else").await.0, 200);
    let (status, html) = forgot(&app, &client, "another-one").await;
    assert_eq!(status, 429, "the address is locked after five");
    assert!(html.contains("Too many password-reset requests"), "{html}");
    sink.wait_for(2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.messages().len(), 2, "two links for gus, nothing more");
    let locks = crate::support::lock_starts(&app, "password_reset_throttled").await;
    assert!(!locks.is_empty());
}

#[tokio::test]
async fn links_expire_and_all_die_when_one_is_used_or_the_password_changes() {
    let (app, sink) = with_mail("[password_reset]\naccount_max_requests = 5\n").await;
    let hal = app.create_user("hal", "hal@contoso.com", PASSWORD).await;
    let client = app.browser();
    for _ in 0..3 {
        assert_eq!(forgot(&app, &client, "hal").await.0, 200);
    }
    let mails = sink.wait_for(3).await;
    let tokens: Vec<String> = mails
        .iter()
        .map(|m| m.link_param("token").unwrap())
        .collect();

    // Expiry: the link is checked against the time it is used at (30 minutes by default).
    let service = &app.state().self_service;
    let later = Utc::now() + chrono::Duration::minutes(31);
    let expired = service.check_link(&tokens[0], None, later).await.unwrap();
    assert!(
        matches!(expired, Err((idbridge::portal::LinkRefusal::Expired, None))),
        "{expired:?}"
    );
    let outcome = service
        .complete_reset(
            &tokens[0],
            &SecretString::from(NEW_PASSWORD.to_string()),
            &SecretString::from(NEW_PASSWORD.to_string()),
            None,
            later,
        )
        .await
        .unwrap();
    assert!(
        matches!(
            outcome,
            idbridge::portal::ResetOutcome::Refused(idbridge::portal::LinkRefusal::Expired)
        ),
        "{outcome:?}"
    );

    // Using one ends the others.
    let (status, _) = use_link(&app, &client, &tokens[1], NEW_PASSWORD).await;
    assert_eq!(status, 200);
    let (status, html) = get(
        &app,
        &client,
        &format!("/password/reset?token={}", tokens[2]),
    )
    .await;
    assert_eq!(status, 410);
    assert!(
        html.contains("your password was changed after it was sent"),
        "{html}"
    );

    // So does a password change by an admin.
    assert_eq!(forgot(&app, &client, "hal").await.0, 200);
    let fresh = sink.wait_for(4).await[3].link_param("token").unwrap();
    assert_eq!(
        get(&app, &client, &format!("/password/reset?token={fresh}"))
            .await
            .0,
        200
    );
    app.state()
        .directory
        .set_password(
            &Actor::Admin("root".into()),
            &hal.id,
            &SecretString::from("Admin-Reset-Passw0rd".to_string()),
            Utc::now(),
        )
        .await
        .unwrap();
    let (status, html) = get(&app, &client, &format!("/password/reset?token={fresh}")).await;
    assert_eq!(status, 410);
    assert!(
        html.contains("your password was changed after it was sent"),
        "{html}"
    );
}

#[tokio::test]
async fn a_failed_delivery_is_recorded_and_without_smtp_the_page_says_whom_to_ask() {
    // Nothing listens on this port: the mailer's delivery fails after the same answer.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let app = TestApp::spawn_with(&format!(
        "[smtp]\nhost = \"127.0.0.1\"\nport = {port}\nfrom = \"it@contoso.com\"\ntls = \"none\"\ntimeout_seconds = 2\n"
    ))
    .await;
    app.create_user("ida", "ida@contoso.com", PASSWORD).await;
    let (status, html) = forgot(&app, &app.browser(), "ida").await;
    assert_eq!(status, 200);
    assert!(html.contains("Check your email"));
    eventually("the failed delivery recorded", || async {
        (!app.events("password_reset_send_failed").await.is_empty()).then_some(())
    })
    .await;

    let plain =
        TestApp::spawn_with("[saml]\nsupport_contact = \"the IT desk (ext. 4242)\"\n").await;
    let (status, html) = get(&plain, &plain.browser(), "/password/forgot").await;
    assert_eq!(status, 200);
    assert!(
        html.contains("Ask the IT desk (ext. 4242) to reset your password"),
        "{html}"
    );
}

#[tokio::test]
async fn the_portal_and_microsoft_365_share_one_sign_in_session() {
    use crate::sso::{app_with_bound_user, authn_request, auto_post, request_id, sso_post};
    let (app, _) = app_with_bound_user().await;

    // Signed in at the portal: Microsoft 365's AuthnRequest is answered at once.
    let portal_first = signed_in(&app, crate::sso::USERNAME, crate::sso::PASSWORD).await;
    let page = sso_post(&portal_first, &app, &authn_request(&request_id(), ""), None).await;
    auto_post(&page);

    // Signed in through Microsoft 365: the portal knows the user.
    let sso_first = app.browser();
    let page = crate::sso::sign_in(
        &sso_first,
        &app,
        &authn_request(&request_id(), ""),
        None,
        crate::sso::USERNAME,
    )
    .await;
    auto_post(&page);
    let (status, html) = get(&app, &sso_first, "/").await;
    assert_eq!(status, 200);
    assert!(html.contains("Hello, Test alice"), "{html}");
    // Signing out at the portal ends it for SSO too.
    let token = csrf(&app, &sso_first).await;
    let r = sso_first
        .post(app.url("/logout"))
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    // A bound user is signed out of Microsoft 365 too, and Microsoft sends the browser back
    // to /signed-out: the sign-in form, saying so (the round trip through Microsoft's fake
    // is in the browser test).
    assert_eq!(
        r.headers()["location"],
        format!(
            "{}/common/oauth2/v2.0/logout?post_logout_redirect_uri={}",
            app.state().config.m365.login_base_url,
            url::form_urlencoded::byte_serialize(app.url("/signed-out").as_bytes())
                .collect::<String>()
        )
        .as_str()
    );
    let r = sso_first.get(app.url("/signed-out")).send().await.unwrap();
    assert_eq!(r.headers()["location"], "/login?signed_out=1");
    let page = sso_post(&sso_first, &app, &authn_request(&request_id(), ""), None).await;
    assert!(page.has_login_form(), "signed out: {}", page.body);
}

#[tokio::test]
async fn a_portal_sign_in_goes_through_the_second_factor_steps_before_any_session() {
    let app = TestApp::spawn_with("[mfa]\npolicy = \"required\"\n").await;
    app.create_user("ines", "ines@contoso.com", PASSWORD).await;
    let client = app.browser();
    let r = sign_in(&app, &client, "ines", PASSWORD).await;
    assert_eq!(r.status(), 200);
    let cookies: Vec<String> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert!(
        !cookies.iter().any(|c| c.starts_with("idbridge_session=")),
        "no session before the second factor: {cookies:?}"
    );
    let html = r.text().await.unwrap();
    assert!(html.contains("Set up an authenticator app"), "{html}");
    assert!(get(&app, &client, "/")
        .await
        .1
        .contains("Sign in to your account"));
}

#[tokio::test]
async fn a_bad_smtp_password_file_stops_start_up_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("smtp-password");
    std::fs::write(&secret, "s3cret-smtp\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    for (path, problem) in [
        (secret.clone(), "readable by other users"),
        (dir.path().join("missing"), "missing"),
    ] {
        let config = crate::support::test_config(
            dir.path(),
            &format!(
                "[smtp]\nhost = \"smtp.example.com\"\nfrom = \"it@example.com\"\nusername = \"it\"\npassword_file = \"{}\"\n",
                path.display()
            ),
        );
        let err = match idbridge::server::App::build(config).await {
            Ok(_) => panic!("started with {}", path.display()),
            Err(err) => err.to_string(),
        };
        assert!(
            err.contains("smtp.password_file") && err.contains(problem),
            "{err}"
        );
        assert!(!err.contains("s3cret-smtp"), "{err}");
    }
}

#[tokio::test]
async fn an_enrolled_user_signs_in_to_the_portal_with_the_second_factor() {
    use idbridge::mfa::totp::Generator;
    let app = TestApp::spawn().await;
    let jon = app.create_user("jon", "jon@contoso.com", PASSWORD).await;
    let now = Utc::now();
    let mfa = app.state().idp.mfa();
    let enrolment = mfa.totp_enrolment(&jon, now).await.unwrap();
    let secret = totp_rs::Secret::Encoded(enrolment.secret_base32.clone())
        .to_bytes()
        .unwrap();
    let generator = Generator::new(secret, "test", "test").unwrap();
    let seconds = u64::try_from(now.timestamp()).unwrap();
    // Confirmed with the previous step's code, so the current one is still unused.
    assert!(mfa
        .confirm_totp(&jon, &generator.code_at(seconds - 30), now)
        .await
        .unwrap());

    let client = app.browser();
    let r = sign_in(&app, &client, "jon", PASSWORD).await;
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(
        html.contains("Verify it"),
        "the second factor is asked for: {html}"
    );
    assert!(get(&app, &client, "/")
        .await
        .1
        .contains("Sign in to your account"));
    let pending = hidden_input(&html, "pending").expect("the parked sign-in");
    let code = generator.code_at(u64::try_from(Utc::now().timestamp()).unwrap());
    let r = client
        .post(app.url("/saml/login/code"))
        .form(&[("pending", pending.as_str()), ("code", code.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap_or_default());
    assert_eq!(r.headers()["location"], "/");
    let (_, html) = get(&app, &client, "/").await;
    assert!(html.contains("Hello, Test jon"), "{html}");
}

#[tokio::test]
async fn a_link_asked_for_just_before_shutdown_is_still_sent() {
    let (app, sink) = with_mail("").await;
    app.create_user("kai", "kai@contoso.com", PASSWORD).await;
    assert_eq!(forgot(&app, &app.browser(), "kai").await.0, 200);
    let _dir = app.stop().await;
    assert_eq!(
        sink.messages().len(),
        1,
        "delivered before the server stopped"
    );
}

#[tokio::test]
async fn an_employee_sets_up_and_removes_an_authenticator_app_in_the_portal() {
    use idbridge::mfa::totp::Generator;
    let app = TestApp::spawn().await;
    app.create_user("kit", "kit@contoso.com", PASSWORD).await;
    let client = signed_in(&app, "kit", PASSWORD).await;
    let (_, home) = get(&app, &client, "/").await;
    assert!(home.contains("id=\"set-up-authenticator\""), "{home}");
    assert!(
        !home.contains("id=\"method-recovery\""),
        "no codes without a factor"
    );

    let (status, page) = get(&app, &client, "/security/authenticator").await;
    assert_eq!(status, 200);
    assert!(page.contains("data:image/svg+xml;base64,"), "{page}");
    let secret = page
        .split("<code id=\"totp-secret\">")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .expect("the key for typing")
        .to_string();
    let generator = Generator::new(
        totp_rs::Secret::Encoded(secret).to_bytes().unwrap(),
        "test",
        "test",
    )
    .unwrap();
    let token = hidden_input(&page, "csrf").unwrap();
    let post = |path: &'static str, fields: Vec<(&'static str, String)>| {
        let client = client.clone();
        let url = app.url(path);
        async move {
            let r = client.post(url).form(&fields).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        }
    };
    // A wrong code: refused with an event; without the session's token: nothing happens.
    let (status, body) = post(
        "/security/authenticator",
        vec![("csrf", token.clone()), ("code", "000000".into())],
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(app.events("mfa_failed").await.len(), 1);
    let now = u64::try_from(Utc::now().timestamp()).unwrap();
    let (status, _) = post(
        "/security/authenticator",
        vec![("csrf", "forged".into()), ("code", generator.code_at(now))],
    )
    .await;
    assert_eq!(status, 403);
    assert!(app.events("mfa_totp_enrolled").await.is_empty());

    let (status, codes) = post(
        "/security/authenticator",
        vec![("csrf", token.clone()), ("code", generator.code_at(now))],
    )
    .await;
    assert_eq!(status, 200, "{codes}");
    assert_eq!(codes.matches("<li><code>").count(), 10, "{codes}");
    assert_eq!(app.events("mfa_totp_enrolled").await.len(), 1);
    let (_, home) = get(&app, &client, "/").await;
    assert!(home.contains("id=\"method-recovery\""), "{home}");
    assert!(home.contains("10 unused"), "{home}");

    // New codes replace the old ones.
    let (status, fresh) = post("/security/recovery-codes", vec![("csrf", token.clone())]).await;
    assert_eq!(status, 200);
    assert_ne!(fresh, codes);
    assert_eq!(app.events("mfa_recovery_codes_created").await.len(), 2);

    // The next portal sign-in asks for the code.
    let other = app.browser();
    let r = sign_in(&app, &other, "kit", PASSWORD).await;
    assert!(r.text().await.unwrap().contains("Verify it"));

    let (status, _) = post("/security/authenticator/remove", vec![("csrf", token)]).await;
    assert_eq!(status, 303);
    assert_eq!(app.events("mfa_totp_removed").await.len(), 1);
    let (_, home) = get(&app, &client, "/").await;
    assert!(home.contains("id=\"set-up-authenticator\""), "{home}");
}

#[tokio::test]
async fn a_sign_in_continues_to_the_portal_page_it_came_from_and_nowhere_else() {
    let app = TestApp::spawn().await;
    app.create_user("lou", "lou@contoso.com", PASSWORD).await;
    for (next, lands) in [("/password", "/password"), ("https://evil.example/", "/")] {
        let client = app.browser();
        let page = client.get(app.url("/login")).send().await.unwrap();
        let csrf = hidden_input(&page.text().await.unwrap(), "csrf").unwrap();
        let r = client
            .post(app.url("/login"))
            .form(&[
                ("csrf", csrf.as_str()),
                ("username", "lou"),
                ("password", PASSWORD),
                ("next", next),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "{next}");
        assert_eq!(r.headers()["location"], lands, "{next}");
    }
}
