//! The employee pages in German: every page an employee meets (SAML sign-in, second factor,
//! enrolment, an expired password, refusals, the portal and its forms) rendered with
//! `Accept-Language: de`, and none shows a sentence of the English catalogue or a missing
//! message.

use chrono::{Duration, Utc};

use crate::sso::{
    authn_request, issuer_config, post_form, request_id, sso_post, submit_login, Page, EMAIL,
    IMMUTABLE_ID, PASSWORD, UPN, USERNAME,
};
use crate::support::{hidden_input, TestApp};

/// A German browser: cookies kept, redirects not followed.
fn german_browser() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::ACCEPT_LANGUAGE,
        "de-DE,de;q=0.9,en;q=0.5".parse().unwrap(),
    );
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .default_headers(headers)
        .build()
        .unwrap()
}

/// (key, source text) of the messages of one language's catalogue.
fn catalogue(lang: &str) -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("locales")
        .join(lang);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            if let Some((key, value)) = line.split_once(" = ") {
                if line.starts_with(|c: char| c.is_ascii_lowercase()) {
                    out.push((key.to_string(), value.to_string()));
                }
            }
        }
    }
    out
}

/// The English sentences a German page must not show: each message's text between its
/// placeables, where it differs from every German message.
fn english_fragments() -> Vec<String> {
    let german: String = catalogue("de")
        .into_iter()
        .map(|(_, v)| v)
        .collect::<Vec<_>>()
        .join("\n");
    let mut fragments = Vec::new();
    for (_, value) in catalogue("en") {
        for piece in value.split(['{', '}']).step_by(2) {
            let piece = piece.trim().trim_end_matches(['.', ':', '…']);
            if piece.split_whitespace().count() >= 2 && piece.len() >= 10 && !german.contains(piece)
            {
                fragments.push(piece.to_string());
            }
        }
    }
    assert!(fragments.len() > 100, "{} fragments", fragments.len());
    fragments
}

/// What a person reads on the page: the text between tags and the attribute values
/// (alt, placeholder, aria-label, the passkey script's texts).
fn readable(html: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => {
                in_tag = true;
                text.push(' ');
            }
            '>' => {
                in_tag = false;
                text.push(' ');
            }
            '"' if in_tag => text.push(' '),
            c => text.push(c),
        }
    }
    crate::support::html_unescape(&text)
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Fails when `page` is not fully German.
fn assert_german(what: &str, html: &str, english: &[String]) {
    assert!(html.contains("<html lang=\"de\">"), "{what}: lang: {html}");
    assert!(
        !html.contains("Unknown localization") && !html.contains("Unknown localization key"),
        "{what}: a message is missing: {html}"
    );
    let text = readable(html);
    let left: Vec<&String> = english
        .iter()
        .filter(|e| text.contains(e.as_str()))
        .collect();
    assert!(left.is_empty(), "{what}: English left {left:?} in: {text}");
}

#[tokio::test]
async fn every_employee_page_is_german_for_a_german_browser() {
    let english = english_fragments();
    let extra = format!(
        "{}\n[password_policy]\nexpiry_days = 30\n[mfa]\npolicy = \"required\"\n",
        issuer_config()
    );
    let app = TestApp::spawn_with(&extra).await;
    let user = app.create_user(USERNAME, EMAIL, PASSWORD).await;
    app.bind(&user, IMMUTABLE_ID, UPN).await;
    let browser = german_browser();

    // The SAML sign-in page, and its wrong-password answer.
    let page = sso_post(&browser, &app, &authn_request(&request_id(), ""), None).await;
    assert_eq!(page.status, 200);
    assert_german("sign-in", &page.body, &english);
    assert!(page.body.contains("Melden Sie sich an"), "{}", page.body);
    let wrong = submit_login(&browser, &app, &page, USERNAME, "Wrong-Passw0rd!").await;
    assert_eq!(wrong.status, 401);
    assert_german("wrong password", &wrong.body, &english);
    assert!(wrong.body.contains("Benutzername oder Passwort ist falsch"));

    // The first sign-in enrols an authenticator app (the policy requires one).
    let enrol = submit_login(&browser, &app, &wrong, USERNAME, PASSWORD).await;
    assert_eq!(enrol.status, 200, "{}", enrol.body);
    assert!(enrol.body.contains("/saml/login/enrol"), "{}", enrol.body);
    assert_german("enrolment", &enrol.body, &english);
    let pending = hidden_input(&enrol.body, "pending").unwrap();
    let bad_code = post_form(
        &browser,
        &app,
        "/saml/login/enrol",
        &[("pending", &pending), ("code", "000000")],
    )
    .await;
    assert_german("wrong enrolment code", &bad_code.body, &english);
    assert!(bad_code.body.contains("Dieser Code passt nicht"));

    // A second factor for a user who has one.
    let second = app.create_user("bob", "bob@contoso.com", PASSWORD).await;
    app.bind(&second, "Ym9iLWltbXV0YWJsZS1pZA==", "bob@contoso.com")
        .await;
    let mfa = app.state().idp.mfa();
    let now = Utc::now();
    let enrolment = mfa.totp_enrolment(&second, now).await.unwrap();
    let secret = totp_rs::Secret::Encoded(enrolment.secret_base32.clone())
        .to_bytes()
        .unwrap();
    let code = idbridge::mfa::totp::Generator::new(secret, "test", "test")
        .unwrap()
        .code_at(u64::try_from(now.timestamp()).unwrap() - 30);
    assert!(mfa.confirm_totp(&second, &code, now).await.unwrap());
    let bob = german_browser();
    let page = sso_post(&bob, &app, &authn_request(&request_id(), ""), None).await;
    let factor = submit_login(&bob, &app, &page, "bob", PASSWORD).await;
    assert!(factor.body.contains("/saml/login/code"), "{}", factor.body);
    assert_german("second factor", &factor.body, &english);
    let pending = hidden_input(&factor.body, "pending").unwrap();
    let wrong_code = post_form(
        &bob,
        &app,
        "/saml/login/code",
        &[("pending", &pending), ("code", "000000")],
    )
    .await;
    assert_german("wrong second-factor code", &wrong_code.body, &english);

    // An expired password is changed in place; its rules are German too.
    let carol = app
        .create_user("carol", "carol@contoso.com", PASSWORD)
        .await;
    app.bind(&carol, "Y2Fyb2wtaW1tdXRhYmxlLWlk", "carol@contoso.com")
        .await;
    let long_ago = (Utc::now() - Duration::days(31)).timestamp_millis();
    app.store
        .set_password_changed_at(&carol.id, long_ago)
        .await
        .unwrap();
    let carol_browser = german_browser();
    let page = sso_post(
        &carol_browser,
        &app,
        &authn_request(&request_id(), ""),
        None,
    )
    .await;
    let expired = submit_login(&carol_browser, &app, &page, "carol", PASSWORD).await;
    assert!(
        expired.body.contains("/saml/login/password"),
        "{}",
        expired.body
    );
    assert_german("expired password", &expired.body, &english);
    assert!(expired.body.contains("Ihr Passwort ist abgelaufen"));
    let pending = hidden_input(&expired.body, "pending").unwrap();
    let weak = post_form(
        &carol_browser,
        &app,
        "/saml/login/password",
        &[
            ("pending", &pending),
            ("new_password", "short"),
            ("confirm_password", "short"),
        ],
    )
    .await;
    assert_eq!(weak.status, 422);
    assert_german("refused password", &weak.body, &english);
    assert!(weak
        .body
        .contains("Dieses Passwort kann nicht verwendet werden"));

    let dave = german_browser();
    // A sign-in request that cannot be used, the bare sign-out page, a missing page.
    let stale = sso_post(&dave, &app, "<not-saml/>", None).await;
    assert_eq!(stale.status, 400);
    assert_german("rejected request", &stale.body, &english);
    for path in ["/saml/slo", "/no-such-page", "/password/forgot", "/login"] {
        let page = get(&dave, &app, path).await;
        assert_german(path, &page.body, &english);
    }
}

#[tokio::test]
async fn the_portal_is_german_for_a_german_browser() {
    let english = english_fragments();
    let app = TestApp::spawn_with(&issuer_config()).await;
    app.create_user(USERNAME, EMAIL, PASSWORD).await;
    // A user not bound to Microsoft 365 is refused there, in German.
    app.create_user("dave", "dave@contoso.com", PASSWORD).await;
    let dave = german_browser();
    let page = sso_post(&dave, &app, &authn_request(&request_id(), ""), None).await;
    let refused = submit_login(&dave, &app, &page, "dave", PASSWORD).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_german("not-bound refusal", &refused.body, &english);
    assert!(refused.body.contains("nicht eingerichtet"));

    let browser = german_browser();
    let login = get(&browser, &app, "/login").await;
    assert_german("portal sign-in", &login.body, &english);
    let csrf = hidden_input(&login.body, "csrf").unwrap();
    let wrong = post_form(
        &browser,
        &app,
        "/login",
        &[
            ("csrf", &csrf),
            ("username", USERNAME),
            ("password", "nope"),
            ("next", "/"),
        ],
    )
    .await;
    assert_german("portal wrong password", &wrong.body, &english);
    let signed_in = post_form(
        &browser,
        &app,
        "/login",
        &[
            ("csrf", &csrf),
            ("username", USERNAME),
            ("password", PASSWORD),
            ("next", "/"),
        ],
    )
    .await;
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);
    for path in [
        "/",
        "/password",
        "/security/authenticator",
        "/mfa/passkeys/manage",
    ] {
        let page = get(&browser, &app, path).await;
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        assert_german(path, &page.body, &english);
    }
    let home = get(&browser, &app, "/").await;
    assert!(home.body.contains("Anmeldemethoden"), "{}", home.body);
    assert!(home.body.contains("Vorname"), "{}", home.body);
    // A refused password change.
    let csrf = hidden_input(&home.body, "csrf").unwrap();
    let refused = post_form(
        &browser,
        &app,
        "/password",
        &[
            ("csrf", &csrf),
            ("current", "wrong"),
            ("new_password", "Fresh-Passw0rd-2026"),
            ("confirm", "Fresh-Passw0rd-2026"),
        ],
    )
    .await;
    assert_german("password change refused", &refused.body, &english);
    assert!(refused.body.contains("Das aktuelle Passwort ist falsch"));
}

#[tokio::test]
async fn the_language_follows_accept_language_with_english_as_fallback() {
    let app = TestApp::spawn().await;
    let client = reqwest::Client::new();
    for (header, lang, heading) in [
        ("de", "de", "Bei Ihrem Konto anmelden"),
        (
            "fr-CH, fr;q=0.9, de;q=0.7, en;q=0.5",
            "de",
            "Bei Ihrem Konto anmelden",
        ),
        ("de;q=0.3, en;q=0.8", "en", "Sign in to your account"),
        ("fr, ja", "en", "Sign in to your account"),
        ("", "en", "Sign in to your account"),
    ] {
        let mut request = client.get(app.url("/login"));
        if !header.is_empty() {
            request = request.header("accept-language", header);
        }
        let response = request.send().await.unwrap();
        let vary = response.headers().get_all("vary").iter().any(|v| {
            v.to_str()
                .unwrap_or_default()
                .to_ascii_lowercase()
                .contains("accept-language")
        });
        assert!(vary, "{header}: caches must tell languages apart");
        let html = response.text().await.unwrap();
        assert!(
            html.contains(&format!("<html lang=\"{lang}\">")),
            "{header}: {html}"
        );
        assert!(html.contains(heading), "{header}: {html}");
    }
}

async fn get(client: &reqwest::Client, app: &TestApp, path: &str) -> Page {
    let response = client.get(app.url(path)).send().await.unwrap();
    Page::read(response).await
}
