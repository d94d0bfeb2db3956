//! Multi-factor sign-in through the Microsoft 365 SAML flow: enrolment, TOTP and recovery
//! codes, the `multipleauthn` context, step-up, throttling, and passwords changed in place.

use chrono::{Duration, Utc};
use idbridge::directory::User;
use idbridge::mfa::totp::Generator;

use crate::sso::{
    app_with_bound_user, authn_request, auto_post, issuer_config, post_form, request_id,
    run_m365_sp, sign_in, sso_post, submit_login, Page, EMAIL, IMMUTABLE_ID, PASSWORD, UPN,
    USERNAME,
};
use crate::support::TestApp;

const MULTIPLE_AUTHN: &str = "http://schemas.microsoft.com/claims/multipleauthn";
const PASSWORD_PROTECTED: &str =
    "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport";

/// A RequestedAuthnContext asking for Microsoft's MFA class, as Entra sends it.
fn mfa_request(id: &str) -> String {
    authn_request(id, "").replace(
        "</samlp:AuthnRequest>",
        &format!(
            "<samlp:RequestedAuthnContext Comparison=\"minimum\"><AuthnContextClassRef xmlns=\"urn:oasis:names:tc:SAML:2.0:assertion\">{MULTIPLE_AUTHN}</AuthnContextClassRef></samlp:RequestedAuthnContext></samlp:AuthnRequest>"
        ),
    )
}

/// The generator for a base32 secret as shown on the enrolment page.
fn generator(secret_base32: &str) -> Generator {
    let bytes = totp_rs::Secret::Encoded(secret_base32.to_string())
        .to_bytes()
        .expect("base32 secret");
    Generator::new(bytes, "test", "test").expect("generator")
}

fn now_seconds() -> u64 {
    u64::try_from(Utc::now().timestamp()).unwrap()
}

/// Enrols an authenticator app for the user as the portal would, confirmed with the
/// previous step's code so the current one is still unused. Returns the base32 secret.
async fn enrol_totp(app: &TestApp, user: &User) -> String {
    let now = Utc::now();
    let mfa = app.state().idp.mfa();
    let enrolment = mfa.totp_enrolment(user, now).await.expect("enrolment");
    let code = generator(&enrolment.secret_base32).code_at(now_seconds() - 30);
    assert!(mfa.confirm_totp(user, &code, now).await.expect("confirm"));
    enrolment.secret_base32
}

/// The one form of `page` posting to `action`; panics with the page otherwise.
fn form_to(page: &Page, action: &str) -> crate::sso::Form {
    page.forms()
        .into_iter()
        .find(|f| f.action == action)
        .unwrap_or_else(|| panic!("no form to {action} ({}): {}", page.status, page.body))
}

async fn submit_code(browser: &reqwest::Client, app: &TestApp, page: &Page, code: &str) -> Page {
    let form = form_to(page, "/saml/login/code");
    let pending = form.input("pending").expect("pending").to_string();
    post_form(
        browser,
        app,
        "/saml/login/code",
        &[("pending", &pending), ("code", code)],
    )
    .await
}

/// The AuthnContextClassRef and AuthnInstant of the assertion on an auto-post page.
fn authn_statement(page: &Page) -> (String, String) {
    let xml = auto_post(page).xml;
    let doc = roxmltree::Document::parse(&xml).expect("response XML");
    let statement = doc
        .descendants()
        .find(|n| n.has_tag_name((crate::sso::NS_ASSERTION, "AuthnStatement")))
        .expect("AuthnStatement");
    let class_ref = statement
        .descendants()
        .find(|n| n.has_tag_name((crate::sso::NS_ASSERTION, "AuthnContextClassRef")))
        .and_then(|n| n.text())
        .expect("AuthnContextClassRef")
        .to_string();
    let instant = statement
        .attribute("AuthnInstant")
        .expect("AuthnInstant")
        .to_string();
    (class_ref, instant)
}

#[tokio::test]
async fn a_required_policy_enrols_at_first_sign_in_and_the_assertion_says_multipleauthn() {
    let config = format!("{}\n[mfa]\npolicy = \"required\"\n", issuer_config());
    let app = TestApp::spawn_with(&config).await;
    let user = app.create_user(USERNAME, EMAIL, PASSWORD).await;
    app.bind(&user, IMMUTABLE_ID, UPN).await;
    let browser = app.browser();
    let page = sign_in(
        &browser,
        &app,
        &authn_request(&request_id(), ""),
        None,
        USERNAME,
    )
    .await;
    // Enrolment before any assertion.
    assert!(!page.has_saml_response(), "{}", page.body);
    assert!(
        page.body.contains("data:image/svg+xml;base64,"),
        "QR code: {}",
        page.body
    );
    let form = form_to(&page, "/saml/login/enrol");
    let pending = form.input("pending").unwrap().to_string();
    let secret = page
        .body
        .split("<code id=\"totp-secret\">")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .expect("the secret for typing")
        .to_string();

    // A wrong confirming code is refused with an event; the same secret is shown again.
    let wrong = post_form(
        &browser,
        &app,
        "/saml/login/enrol",
        &[("pending", &pending), ("code", "000000")],
    )
    .await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert!(wrong.body.contains(&secret), "the same secret again");
    assert!(!wrong.has_saml_response());
    let failed = app.events("mfa_failed").await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].target.as_deref(), Some(USERNAME));

    // The right code shows ten recovery codes once, then the sign-in goes on.
    let code = generator(&secret).code_at(now_seconds());
    let codes_page = post_form(
        &browser,
        &app,
        "/saml/login/enrol",
        &[("pending", &pending), ("code", &code)],
    )
    .await;
    assert_eq!(codes_page.status, 200, "{}", codes_page.body);
    let codes = codes_page.body.matches("<li><code>").count();
    assert_eq!(codes, 10, "{}", codes_page.body);
    assert!(!codes_page.has_saml_response());
    let next = form_to(&codes_page, "/saml/login/continue");
    let done = post_form(
        &browser,
        &app,
        "/saml/login/continue",
        &[("pending", next.input("pending").unwrap())],
    )
    .await;
    let (class_ref, _) = authn_statement(&done);
    assert_eq!(class_ref, MULTIPLE_AUTHN);
    for kind in [
        "mfa_totp_enrolled",
        "mfa_recovery_codes_created",
        "mfa_passed",
        "sso_assertion_issued",
    ] {
        assert_eq!(app.events(kind).await.len(), 1, "{kind}");
    }
    // The parked request is used up: continuing again answers nothing.
    let again = post_form(
        &browser,
        &app,
        "/saml/login/continue",
        &[("pending", next.input("pending").unwrap())],
    )
    .await;
    assert!(!again.has_saml_response(), "answered twice: {}", again.body);
}

#[tokio::test]
async fn an_enrolled_user_passes_totp_through_the_flow_pysaml2_checks_as_microsoft() {
    let (app, user) = app_with_bound_user().await;
    let secret = enrol_totp(&app, &user).await;
    let args = vec![
        app.base_url.clone(),
        USERNAME.to_string(),
        PASSWORD.to_string(),
        "--totp-secret".to_string(),
        secret,
        "--request-mfa".to_string(),
    ];
    let result = tokio::task::spawn_blocking(move || run_m365_sp(args))
        .await
        .expect("SP script thread");
    assert_eq!(result["name_id"], IMMUTABLE_ID);
    assert_eq!(result["in_response_to"], result["request_id"]);
    assert_eq!(
        result["authn_context_class_ref"],
        serde_json::json!([MULTIPLE_AUTHN])
    );
}

#[tokio::test]
async fn a_code_is_accepted_once_and_password_only_sign_ins_say_password() {
    let (app, user) = app_with_bound_user().await;
    // Without factors under the optional policy: password only, and said so.
    let browser = app.browser();
    let page = sign_in(
        &browser,
        &app,
        &authn_request(&request_id(), ""),
        None,
        USERNAME,
    )
    .await;
    assert_eq!(authn_statement(&page).0, PASSWORD_PROTECTED);

    let secret = enrol_totp(&app, &user).await;
    let first = app.browser();
    let page = sign_in(
        &first,
        &app,
        &authn_request(&request_id(), ""),
        None,
        USERNAME,
    )
    .await;
    assert!(
        !page.has_saml_response(),
        "a second factor first: {}",
        page.body
    );
    let code = generator(&secret).code_at(now_seconds());
    let done = submit_code(&first, &app, &page, &code).await;
    assert_eq!(authn_statement(&done).0, MULTIPLE_AUTHN);

    // The same code in another browser's sign-in is refused: accepted once.
    let second = app.browser();
    let page = sign_in(
        &second,
        &app,
        &authn_request(&request_id(), ""),
        None,
        USERNAME,
    )
    .await;
    let refused = submit_code(&second, &app, &page, &code).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(refused.body.contains("already used"), "{}", refused.body);
    assert!(!refused.has_saml_response());
    assert_eq!(app.events("mfa_failed").await.len(), 1);
}

#[tokio::test]
async fn a_session_steps_up_when_microsoft_asks_for_mfa_and_keeps_its_authn_instant() {
    let (app, user) = app_with_bound_user().await;
    let browser = app.browser();
    let page = sign_in(
        &browser,
        &app,
        &authn_request(&request_id(), ""),
        None,
        USERNAME,
    )
    .await;
    let (class_ref, first_instant) = authn_statement(&page);
    assert_eq!(class_ref, PASSWORD_PROTECTED);
    // The user adds an authenticator app (as in the portal) after signing in.
    let secret = enrol_totp(&app, &user).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    // Microsoft asks for MFA: the session is asked for the second factor, not the password.
    let page = sso_post(&browser, &app, &mfa_request(&request_id()), None).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(!page.has_login_form(), "no password again: {}", page.body);
    assert!(!page.has_saml_response());
    let code = generator(&secret).code_at(now_seconds());
    let done = submit_code(&browser, &app, &page, &code).await;
    let (class_ref, instant) = authn_statement(&done);
    assert_eq!(class_ref, MULTIPLE_AUTHN);
    // AuthnInstant is the last real authentication (the password), not the SSO.
    assert_eq!(instant, first_instant);

    // The stepped-up session answers later requests with multipleauthn at once.
    let page = sso_post(&browser, &app, &mfa_request(&request_id()), None).await;
    assert_eq!(authn_statement(&page).0, MULTIPLE_AUTHN);

    // ForceAuthn asks for the password again.
    let page = sso_post(
        &browser,
        &app,
        &authn_request(&request_id(), "ForceAuthn=\"true\""),
        None,
    )
    .await;
    assert!(page.has_login_form(), "{}", page.body);
}

#[tokio::test]
async fn passive_requests_needing_mfa_get_no_passive_instead_of_a_page() {
    let (app, _) = app_with_bound_user().await;
    let browser = app.browser();
    let page = sign_in(
        &browser,
        &app,
        &authn_request(&request_id(), ""),
        None,
        USERNAME,
    )
    .await;
    auto_post(&page);
    let passive = mfa_request(&request_id()).replace(
        "<samlp:AuthnRequest ",
        "<samlp:AuthnRequest IsPassive=\"true\" ",
    );
    let page = sso_post(&browser, &app, &passive, None).await;
    let xml = auto_post(&page).xml;
    assert!(
        xml.contains("urn:oasis:names:tc:SAML:2.0:status:NoPassive"),
        "{xml}"
    );
}

#[tokio::test]
async fn a_recovery_code_signs_in_once() {
    let (app, user) = app_with_bound_user().await;
    enrol_totp(&app, &user).await;
    let codes = app
        .state()
        .idp
        .mfa()
        .new_recovery_codes(&idbridge::events::Actor::System, &user, Utc::now())
        .await
        .unwrap();
    let browser = app.browser();
    let page = sign_in(
        &browser,
        &app,
        &authn_request(&request_id(), ""),
        None,
        USERNAME,
    )
    .await;
    // Typed loosely: lower case, spaces for dashes.
    let typed = codes[3].to_lowercase().replace('-', " ");
    let done = submit_code(&browser, &app, &page, &typed).await;
    assert_eq!(authn_statement(&done).0, MULTIPLE_AUTHN);
    let used = app.events("mfa_recovery_code_used").await;
    assert_eq!(used.len(), 1);
    assert_eq!(crate::sso::details(&used[0])["codesLeft"], 9);

    let other = app.browser();
    let page = sign_in(
        &other,
        &app,
        &authn_request(&request_id(), ""),
        None,
        USERNAME,
    )
    .await;
    let refused = submit_code(&other, &app, &page, &codes[3]).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(!refused.has_saml_response());
}

#[tokio::test]
async fn wrong_codes_lock_the_second_factor_even_for_the_right_code() {
    let (app, user) = app_with_bound_user().await;
    let secret = enrol_totp(&app, &user).await;
    let browser = app.browser();
    let page = sign_in(
        &browser,
        &app,
        &authn_request(&request_id(), ""),
        None,
        USERNAME,
    )
    .await;
    let right = generator(&secret).code_at(now_seconds());
    let wrong = if right == "123456" {
        "654321"
    } else {
        "123456"
    };
    let mut last = page;
    for _ in 0..5 {
        last = submit_code(&browser, &app, &last, wrong).await;
        assert_eq!(last.status, 401, "{}", last.body);
    }
    let locked = submit_code(&browser, &app, &last, &right).await;
    assert_eq!(locked.status, 429, "{}", locked.body);
    assert!(locked.body.contains("Try again in"), "{}", locked.body);
    assert!(!locked.has_saml_response());
    assert_eq!(app.events("mfa_throttled").await.len(), 1);
    assert_eq!(app.events("mfa_failed").await.len(), 5);
}

#[tokio::test]
async fn an_expired_password_is_changed_in_place_and_the_sign_in_goes_on() {
    let extra = format!("{}\n[password_policy]\nexpiry_days = 30\n", issuer_config());
    let app = TestApp::spawn_with(&extra).await;
    let user = app.create_user(USERNAME, EMAIL, PASSWORD).await;
    app.bind(&user, IMMUTABLE_ID, UPN).await;
    let long_ago = (Utc::now() - Duration::days(31)).timestamp_millis();
    app.store
        .set_password_changed_at(&user.id, long_ago)
        .await
        .expect("backdate password");
    let browser = app.browser();
    let page = sign_in(
        &browser,
        &app,
        &authn_request(&request_id(), ""),
        None,
        USERNAME,
    )
    .await;
    assert!(
        page.body.contains("Your password has expired"),
        "{}",
        page.body
    );
    assert!(!page.has_saml_response());
    let form = form_to(&page, "/saml/login/password");
    let pending = form.input("pending").unwrap().to_string();
    let post = |new: &'static str, confirm: &'static str| {
        let browser = browser.clone();
        let pending = pending.clone();
        let app = &app;
        async move {
            post_form(
                &browser,
                app,
                "/saml/login/password",
                &[
                    ("pending", &pending),
                    ("new_password", new),
                    ("confirm_password", confirm),
                ],
            )
            .await
        }
    };
    let differ = post("New horse 2!x", "New horse 2!y").await;
    assert_eq!(differ.status, 401);
    assert!(differ.body.contains("differ"), "{}", differ.body);
    let weak = post("short", "short").await;
    assert_eq!(weak.status, 422, "{}", weak.body);
    assert!(weak.body.contains("at least 8 characters"), "{}", weak.body);
    let reused = post(PASSWORD, PASSWORD).await;
    assert_eq!(reused.status, 422, "{}", reused.body);
    let done = post("New horse 2!x", "New horse 2!x").await;
    let (class_ref, _) = authn_statement(&done);
    assert_eq!(class_ref, PASSWORD_PROTECTED);
    assert_eq!(app.events("user_password_set").await.len(), 1);

    // The new password is the password now.
    let fresh = app.browser();
    let page = sso_post(&fresh, &app, &authn_request(&request_id(), ""), None).await;
    let old = submit_login(&fresh, &app, &page, USERNAME, PASSWORD).await;
    assert_eq!(old.status, 401);
    let new = submit_login(&fresh, &app, &old, USERNAME, "New horse 2!x").await;
    auto_post(&new);
}

#[tokio::test]
async fn an_admin_can_require_a_password_change_and_reset_factors_from_the_cli() {
    let (app, user) = app_with_bound_user().await;
    enrol_totp(&app, &user).await;
    let dir = tempfile::tempdir().unwrap();
    let out = app
        .cli(dir.path(), &["user", "require-password-change", USERNAME])
        .await;
    assert!(out.contains("alice"), "{out}");
    let out = app
        .cli(dir.path(), &["user", "mfa", "reset", USERNAME])
        .await;
    assert!(out.contains("alice"), "{out}");
    assert_eq!(app.events("mfa_reset").await.len(), 1);
    assert_eq!(app.events("user_password_change_required").await.len(), 1);

    // The next sign-in asks for a new password, then no second factor (they were reset).
    let browser = app.browser();
    let page = sign_in(
        &browser,
        &app,
        &authn_request(&request_id(), ""),
        None,
        USERNAME,
    )
    .await;
    assert!(
        page.body.contains("asks you to choose a new password"),
        "{}",
        page.body
    );
    let form = form_to(&page, "/saml/login/password");
    let done = post_form(
        &browser,
        &app,
        "/saml/login/password",
        &[
            ("pending", form.input("pending").unwrap()),
            ("new_password", "Fresh horse 3!"),
            ("confirm_password", "Fresh horse 3!"),
        ],
    )
    .await;
    assert_eq!(authn_statement(&done).0, PASSWORD_PROTECTED);

    // Under the chosen policy, `user mfa require` makes the next sign-in enrol.
    let out = app
        .cli(dir.path(), &["user", "mfa", "require", USERNAME])
        .await;
    assert!(out.contains("alice"), "{out}");
    assert_eq!(app.events("mfa_requirement_set").await.len(), 1);
}

#[tokio::test]
async fn the_api_shows_requires_and_resets_a_user_s_second_factors() {
    use crate::support::console::{api_client, api_key};
    use idbridge::directory::AdminRole;
    let config = format!("{}\n[mfa]\npolicy = \"chosen\"\n", issuer_config());
    let app = TestApp::spawn_with(&config).await;
    let user = app.create_user(USERNAME, EMAIL, PASSWORD).await;
    app.bind(&user, IMMUTABLE_ID, UPN).await;
    let api = api_client(&api_key(&app, "ci", AdminRole::Admin).await);
    let url = app.url(&format!("/api/v1/users/{USERNAME}/mfa"));
    let status: serde_json::Value = api.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["policy"], "chosen");
    assert_eq!(status["required"], false);
    assert_eq!(status["totp"], false);

    let r = api
        .put(format!("{url}/required"))
        .json(&serde_json::json!({"required": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let status: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status["chosen"], true);
    assert_eq!(status["required"], true);

    // Chosen: the next sign-in enrols before any assertion.
    let browser = app.browser();
    let page = sign_in(
        &browser,
        &app,
        &authn_request(&request_id(), ""),
        None,
        USERNAME,
    )
    .await;
    assert!(
        page.body.contains("Set up an authenticator app"),
        "{}",
        page.body
    );
    assert!(!page.has_saml_response());

    enrol_totp(&app, &user).await;
    let status: serde_json::Value = api.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["totp"], true);
    let r = api.delete(&url).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let status: serde_json::Value = api.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["totp"], false);
    let reset = app.events("mfa_reset").await;
    assert_eq!(reset.len(), 1);
    assert_eq!(reset[0].actor, "apikey:ci");

    let r = api
        .post(app.url(&format!("/api/v1/users/{USERNAME}/require-password-change")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(app.events("user_password_change_required").await.len(), 1);
}

#[tokio::test]
async fn the_console_resets_factors_and_requires_a_new_password() {
    use crate::support::console::admin_browser;
    use idbridge::directory::AdminRole;
    let config = format!("{}\n[mfa]\npolicy = \"chosen\"\n", issuer_config());
    let app = TestApp::spawn_with(&config).await;
    let user = app.create_user(USERNAME, EMAIL, PASSWORD).await;
    enrol_totp(&app, &user).await;
    let admin = admin_browser(&app, "root", AdminRole::Admin).await;
    let page_path = format!("/admin/users/{}", user.id);
    let (status, page) = admin.get(&app, &page_path).await;
    assert_eq!(status, 200);
    assert!(page.contains("authenticator app"), "{page}");
    assert!(page.contains("id=\"mfa-reset-form\""), "{page}");

    for path in ["mfa/reset", "mfa/required", "require-password-change"] {
        let r = admin
            .post(
                &app,
                &format!("{page_path}/{path}"),
                &[("required", "true")][..usize::from(path == "mfa/required")],
            )
            .await;
        assert_eq!(r.status(), 303, "{path}");
    }
    let (_, page) = admin.get(&app, &page_path).await;
    assert!(
        page.contains("Second factors: <strong>none</strong>"),
        "{page}"
    );
    assert!(
        page.contains("The MFA policy requires one of alice"),
        "{page}"
    );
    assert!(page.contains("id=\"must-change\""), "{page}");
    assert_eq!(app.events("mfa_reset").await[0].actor, "admin:root");

    // A form without the session's CSRF token changes nothing.
    let r = admin
        .client
        .post(app.url(&format!("{page_path}/mfa/required")))
        .form(&[("required", "false")])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    assert_eq!(app.events("mfa_requirement_set").await.len(), 1);
}
