//! Passkeys: ceremonies refused by the domain service (expired, reused, for another sign-in),
//! the JSON endpoints' CSRF and session checks, and the browser flows in Chromium with its
//! virtual authenticator (tests/browser/passkey_flows.mjs) through Microsoft 365's SAML flow,
//! each Response validated by pysaml2 (tests/sp/m365_verify.py).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration as StdDuration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::{Duration, Utc};
use idbridge::mfa::passkey::{AddedBy, PasskeyError, Refusal, SignIn};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::TestApp;

const PASSWORD: &str = "Correct horse 1!";
const M365: &str = "urn:federation:MicrosoftOnline";
const PASSWORDLESS: &str = "[mfa]\npasswordless = true\n";
const AC_PASSWORD: &str = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport";
const AC_MFA: &str = "http://schemas.microsoft.com/claims/multipleauthn";
/// A hung browser must not hang the suite.
const SCRIPT_TIMEOUT: StdDuration = StdDuration::from_secs(180);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// An assertion of the right shape whose content does not matter: the ceremony is refused
/// before webauthn-rs looks at it.
fn any_assertion() -> webauthn_rs::prelude::PublicKeyCredential {
    serde_json::from_value(json!({
        "id": "AAAA",
        "rawId": "AAAA",
        "type": "public-key",
        "response": {
            "authenticatorData": "AAAA",
            "clientDataJSON": "AAAA",
            "signature": "AAAA",
            "userHandle": null
        }
    }))
    .expect("assertion JSON")
}

fn refusal(result: Result<impl std::fmt::Debug, PasskeyError>) -> Refusal {
    match result {
        Err(PasskeyError::Refused(r)) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn refused_reasons(app: &TestApp) -> Vec<String> {
    app.events("passkey_refused")
        .await
        .iter()
        .map(|e| {
            let details: Value = serde_json::from_str(&e.details).expect("details");
            details["reason"].as_str().unwrap_or_default().to_string()
        })
        .collect()
}

#[tokio::test]
async fn expired_reused_and_misdirected_ceremonies_are_refused_with_events() {
    let app = TestApp::spawn_localhost(PASSWORDLESS).await;
    let passkeys = &app.state().passkeys;
    let now = Utc::now();

    // Finished six minutes after it started: past its five-minute window. (Started now and
    // finished in the future rather than started in the past: the server's janitor, purging
    // expired ceremonies by the real clock at start, could take a back-dated one first.)
    let old = passkeys
        .start_sign_in(SignIn::Passwordless { pending: "p1" }, now)
        .await
        .expect("started");
    let later = now + Duration::minutes(6);
    let sign_in = SignIn::Passwordless { pending: "p1" };
    let result = passkeys
        .finish_sign_in(sign_in, &old.ceremony, &any_assertion(), None, later)
        .await;
    assert_eq!(refusal(result), Refusal::CeremonyExpired);
    // Taken by that attempt: it cannot be tried again.
    let result = passkeys
        .finish_sign_in(sign_in, &old.ceremony, &any_assertion(), None, later)
        .await;
    assert_eq!(refusal(result), Refusal::CeremonyUnknown);

    // A ceremony of one parked sign-in does not finish another.
    let other = passkeys
        .start_sign_in(SignIn::Passwordless { pending: "p2" }, now)
        .await
        .expect("started");
    let result = passkeys
        .finish_sign_in(sign_in, &other.ceremony, &any_assertion(), None, now)
        .await;
    assert_eq!(refusal(result), Refusal::CeremonyMismatch);

    // A live ceremony answered with a credential nobody registered.
    let live = passkeys.start_sign_in(sign_in, now).await.expect("started");
    let options = &live.options["publicKey"];
    assert!(options["challenge"].as_str().is_some_and(|c| c.len() >= 43));
    assert_eq!(options["rpId"], "localhost");
    assert_eq!(options["userVerification"], "required");
    assert!(live.options.get("mediation").is_none(), "{}", live.options);
    let result = passkeys
        .finish_sign_in(sign_in, &live.ceremony, &any_assertion(), None, now)
        .await;
    assert_eq!(refusal(result), Refusal::UnknownCredential);

    // Asking again replaces the sign-in's earlier challenge: one live ceremony per sign-in.
    let p3 = SignIn::Passwordless { pending: "p3" };
    let earlier = passkeys.start_sign_in(p3, now).await.expect("started");
    let _later = passkeys.start_sign_in(p3, now).await.expect("started");
    let result = passkeys
        .finish_sign_in(p3, &earlier.ceremony, &any_assertion(), None, now)
        .await;
    assert_eq!(refusal(result), Refusal::CeremonyUnknown);

    let reasons = refused_reasons(&app).await;
    for reason in [
        "ceremony_expired",
        "ceremony_unknown_or_used",
        "ceremony_mismatch",
        "unknown_credential",
    ] {
        assert!(reasons.iter().any(|r| r == reason), "{reason}: {reasons:?}");
    }
}

#[tokio::test]
async fn passwordless_is_off_unless_configured() {
    let app = TestApp::spawn_localhost("").await;
    let result = app
        .state()
        .passkeys
        .start_sign_in(SignIn::Passwordless { pending: "p" }, Utc::now())
        .await;
    assert!(
        matches!(result, Err(PasskeyError::PasswordlessDisabled)),
        "{result:?}"
    );
    assert!(!app.state().passkeys.passwordless());
}

#[tokio::test]
async fn the_json_endpoints_want_a_session_and_idbridge_s_own_origin() {
    let app = TestApp::spawn_localhost("").await;
    let client = app.browser();
    let url = app.url("/mfa/passkeys/register/start");

    // No Origin (or another site's): refused before anything else, with an event.
    for origin in [None, Some("https://evil.example")] {
        let mut request = client
            .post(&url)
            .header("content-type", "application/json")
            .body("{}");
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{origin:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "forbidden");
    }
    // The right origin, but a form's content type (what a cross-site form can send).
    let response = client
        .post(&url)
        .header("origin", &app.base_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("a=b")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    // Same origin, JSON, but nobody signed in.
    let response = client
        .post(&url)
        .header("origin", &app.base_url)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let refused = app.events("passkey_refused").await;
    assert!(
        refused.iter().any(|e| e.details.contains("cross_origin")),
        "{refused:?}"
    );

    // A parked sign-in that does not exist (or is another browser's).
    let response = client
        .post(app.url("/mfa/passkeys/authenticate/start"))
        .header("origin", &app.base_url)
        .header("content-type", "application/json")
        .body(r#"{"pending": "0000"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "sign_in_expired");

    // The script is served as JavaScript, and pages allow it.
    let response = client.get(app.url("/mfa/passkey.js")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
}

// ---------------------------------------------------------------------------------------------
// Chromium
// ---------------------------------------------------------------------------------------------

/// A Microsoft-shaped AuthnRequest (as tests/it/sso.rs and tests/sp/m365_sp.py send it),
/// base64 for the HTTP-POST binding, with its ID.
fn m365_authn_request() -> (String, String) {
    let id = format!("_{}", idbridge::directory::new_record_id());
    let instant = Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
    let xml = format!(
        r#"<samlp:AuthnRequest ID="{id}" Version="2.0" IssueInstant="{instant}" xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol"><Issuer xmlns="urn:oasis:names:tc:SAML:2.0:assertion">{M365}</Issuer><samlp:NameIDPolicy Format="urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"/></samlp:AuthnRequest>"#
    );
    (id, BASE64.encode(xml))
}

/// Validates a captured Response with pysaml2 configured as Microsoft.
fn m365_verify(base_url: &str, request_id: &str, saml_response: &str) -> Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("response.b64");
    std::fs::write(&file, saml_response).expect("write response");
    let output = std::process::Command::new("python3")
        .arg(repo().join("tests/sp/m365_verify.py"))
        .arg(base_url)
        .arg(request_id)
        .arg(&file)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "m365_verify.py failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("m365_verify.py prints JSON")
}

async fn run_passkey_script(app: &TestApp, requests: &[String], out: &Path, part: &str) {
    let chromium = std::env::var_os("IDBRIDGE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        chromium.exists() && repo().join("tests/browser/node_modules/playwright-core").is_dir(),
        "Chromium or tests/browser/node_modules is missing: run ./scripts/test, which installs them"
    );
    let started = Instant::now();
    let child = tokio::process::Command::new("node")
        .arg(repo().join("tests/browser/passkey_flows.mjs"))
        .current_dir(repo().join("tests/browser"))
        .env("IDBRIDGE_URL", &app.base_url)
        // lib.mjs reads the console's settings too; these flows use none of them.
        .env("IDBRIDGE_ADMIN", "unused")
        .env("IDBRIDGE_ADMIN_ONE_TIME_PASSWORD", "unused")
        .env("IDBRIDGE_ADMIN_NEW_PASSWORD", "unused")
        .env("IDBRIDGE_SCREENSHOT_DIR", repo().join("target/screenshots"))
        .env("IDBRIDGE_CHROMIUM", chromium)
        .env("IDBRIDGE_OUT", out)
        .env("IDBRIDGE_PASSKEY_PART", part)
        .env(
            "IDBRIDGE_SAML_REQUESTS",
            serde_json::to_string(requests).unwrap(),
        )
        .env("IDBRIDGE_USER", "alice")
        .env("IDBRIDGE_OTHER_USER", "bob")
        .env("IDBRIDGE_PASSWORD", PASSWORD)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let output = tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("passkey_flows.mjs did not finish within {SCRIPT_TIMEOUT:?}"))
        .expect("node ran");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!(
        "passkey_flows.mjs ({:.1} s):\n{text}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        output.status.success(),
        "passkey_flows.mjs failed ({}):\n{text}",
        output.status
    );
}

/// Which parts of the script run: `all` needs the sign-in steps of the MFA flow.
const PART: &str = "all";

#[tokio::test]
async fn passkeys_in_chromium_register_sign_in_and_refuse() {
    let app = TestApp::spawn_localhost(PASSWORDLESS).await;
    let alice = app
        .create_user("alice", "alice@contoso.com", PASSWORD)
        .await;
    app.bind(&alice, "YWxpY2UtaW1tdXRhYmxl", "alice@contoso.com")
        .await;
    let bob = app.create_user("bob", "bob@contoso.com", PASSWORD).await;
    app.bind(&bob, "Ym9iLWltbXV0YWJsZQ==", "bob@contoso.com")
        .await;
    let (ids, requests): (Vec<String>, Vec<String>) = (0..12).map(|_| m365_authn_request()).unzip();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("passkeys.json");

    run_passkey_script(&app, &requests, &out, PART).await;

    let result: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let mut contexts = std::collections::BTreeMap::new();
    for capture in result["captured"].as_array().unwrap() {
        let label = capture["label"].as_str().unwrap().to_string();
        let index = capture["requestIndex"].as_u64().unwrap() as usize;
        let response = capture["samlResponse"].as_str().expect("a SAMLResponse");
        let base_url = app.base_url.clone();
        let request_id = ids[index].clone();
        let response = response.to_string();
        let checked =
            tokio::task::spawn_blocking(move || m365_verify(&base_url, &request_id, &response))
                .await
                .unwrap();
        assert_eq!(checked["in_response_to"], ids[index].as_str(), "{label}");
        let expected_name_id = if label.starts_with("bob") {
            "Ym9iLWltbXV0YWJsZQ=="
        } else {
            "YWxpY2UtaW1tdXRhYmxl"
        };
        assert_eq!(checked["name_id"], expected_name_id, "{label}");
        contexts.insert(label, checked["authn_context_class_ref"][0].clone());
    }
    assert_eq!(contexts["password"], AC_PASSWORD);

    let registered = app.events("passkey_register").await;
    assert!(
        registered
            .iter()
            .any(|e| e.actor == "user:alice" && e.details.contains("Work laptop")),
        "{registered:?}"
    );
    if PART == "register" {
        return;
    }
    // `multipleauthn` exactly when a second factor passed; a user-verified passkey alone
    // counts as two (possession and the PIN or biometrics that unlocked it).
    assert_eq!(contexts["second_factor"], AC_MFA);
    assert_eq!(contexts["passwordless"], AC_MFA);
    assert_eq!(contexts["bob_password"], AC_PASSWORD);

    let refusals = &result["refusals"];
    for (case, code) in [
        ("replayed", "ceremony_unknown_or_used"),
        ("wrong_origin", "verification_failed"),
        ("another_user", "another_user"),
        ("claimed_handle", "another_user"),
    ] {
        assert_eq!(refusals[case]["status"], 403, "{case}: {refusals}");
        assert_eq!(refusals[case]["body"]["error"]["code"], code, "{case}");
    }
    let reasons = refused_reasons(&app).await;
    for reason in [
        "ceremony_unknown_or_used",
        "verification_failed",
        "another_user",
    ] {
        assert!(reasons.iter().any(|r| r == reason), "{reason}: {reasons:?}");
    }
    let origin = app.events("passkey_refused").await;
    assert!(
        origin.iter().any(|e| e.details.contains("InvalidRPOrigin")),
        "{origin:?}"
    );
    let clone = app.events("passkey_clone_suspected").await;
    assert!(
        clone
            .iter()
            .any(|e| e.target.as_deref() == Some("alice") && e.details.contains("Work laptop")),
        "{clone:?}"
    );
    assert!(!app.events("passkey_delete").await.is_empty());
    let left: Vec<String> = app
        .store
        .list_passkeys(&alice.id)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.label)
        .collect();
    assert_eq!(left, ["Phone"]);
    assert_eq!(app.store.list_passkeys(&bob.id).await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_ip_address_base_url_starts_without_passkeys() {
    // The default base URL (http://127.0.0.1:…) cannot be a WebAuthn relying party.
    let app = TestApp::spawn_with(PASSWORDLESS).await;
    assert!(!app.state().passkeys.available());
    assert!(
        !app.state().passkeys.passwordless(),
        "no passkey button then"
    );
    let alice = app
        .create_user("alice", "alice@contoso.com", PASSWORD)
        .await;
    let result = app
        .state()
        .passkeys
        .start_registration(&alice, AddedBy::Session { passed_mfa: false }, Utc::now())
        .await;
    assert!(
        matches!(result, Err(PasskeyError::Unavailable)),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_user_with_a_second_factor_adds_a_passkey_only_from_a_session_that_passed_one() {
    let app = TestApp::spawn_localhost("").await;
    let alice = app
        .create_user("alice", "alice@contoso.com", PASSWORD)
        .await;
    let passkeys = &app.state().passkeys;
    // No factor yet: a password-only session may add the first one.
    let first = passkeys
        .start_registration(&alice, AddedBy::Session { passed_mfa: false }, Utc::now())
        .await;
    assert!(first.is_ok(), "{first:?}");
    let row = idbridge::store::PasskeyRow {
        id: idbridge::directory::new_record_id(),
        user_id: alice.id.clone(),
        credential_id: "AAAA".into(),
        label: "Work laptop".into(),
        credential: "{}".into(),
        created_at: Utc::now().timestamp_millis(),
        last_used_at: None,
    };
    let event = idbridge::events::NewEvent::new(
        Utc::now(),
        &idbridge::events::Actor::System,
        "passkey_register",
        Some("alice"),
    );
    app.store.insert_passkey(&row, &event).await.unwrap();
    let result = passkeys
        .start_registration(&alice, AddedBy::Session { passed_mfa: false }, Utc::now())
        .await;
    assert!(
        matches!(result, Err(PasskeyError::SecondFactorFirst)),
        "{result:?}"
    );
    // A session that passed a second factor may: the browser test adds Alice's second passkey
    // after a sign-in with her first.
}

#[tokio::test]
async fn a_user_who_must_enrol_can_enrol_a_passkey_at_sign_in_in_chromium() {
    let app = TestApp::spawn_localhost("[mfa]\npolicy = \"required\"\n").await;
    let alice = app
        .create_user("alice", "alice@contoso.com", PASSWORD)
        .await;
    app.bind(&alice, "YWxpY2UtaW1tdXRhYmxl", "alice@contoso.com")
        .await;
    let (ids, requests): (Vec<String>, Vec<String>) = (0..3).map(|_| m365_authn_request()).unzip();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("passkeys.json");

    run_passkey_script(&app, &requests, &out, "enrol").await;

    let result: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let captured = result["captured"].as_array().unwrap();
    assert_eq!(captured.len(), 2, "{result}");
    for capture in captured {
        let index = capture["requestIndex"].as_u64().unwrap() as usize;
        let (base_url, request_id) = (app.base_url.clone(), ids[index].clone());
        let response = capture["samlResponse"].as_str().unwrap().to_string();
        let checked =
            tokio::task::spawn_blocking(move || m365_verify(&base_url, &request_id, &response))
                .await
                .unwrap();
        assert_eq!(
            checked["authn_context_class_ref"][0], AC_MFA,
            "{}",
            capture["label"]
        );
    }
    let passed = app.events("mfa_passed").await;
    assert_eq!(
        passed
            .iter()
            .filter(|e| e.details.contains("\"passkey\""))
            .count(),
        2,
        "{passed:?}"
    );
    let passkeys = app.store.list_passkeys(&alice.id).await.unwrap();
    assert_eq!(passkeys.len(), 1);
    assert_eq!(passkeys[0].label, "Work laptop");
}
