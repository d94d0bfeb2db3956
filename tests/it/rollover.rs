//! Rolling the signing certificate over without a refused sign-in: at every step Microsoft
//! (the Graph fake) trusts the certificate idbridge signs with, as both independent verifiers
//! (pysaml2 trusting only what Microsoft holds, and xmlsec1) confirm; a Graph failure changes
//! nothing; the CLI's steps reach a running server through the database.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::federation::{tenant, FEDERATION_ROLES};
use crate::sso::{
    authn_request, auto_post, request_id, run_m365_sp, sso_post, submit_login, xmlsec_verify,
};
use crate::support::console::{api_client, api_key};
use crate::support::graph_fake::GraphFake;
use crate::support::TestApp;
use idbridge::directory::AdminRole;

const DOMAIN: &str = "fabrikam.com";
const USER: &str = "ana";
const PASSWORD: &str = "Corr3ct-Horse-Battery";
const ASSERTION_ID: &str = "urn:oasis:names:tc:SAML:2.0:assertion:Assertion";

/// What Microsoft trusts for the domain: `signingCertificate`, then `nextSigningCertificate`.
fn trusted(fake: &GraphFake) -> Vec<String> {
    let held = fake.federation(DOMAIN).expect("the domain is federated");
    ["signingCertificate", "nextSigningCertificate"]
        .iter()
        .filter_map(|k| held[*k].as_str().map(str::to_string))
        .collect()
}

fn pem(der_base64: &str) -> String {
    let lines: Vec<String> = der_base64
        .as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

/// Whether xmlsec1 finds the assertion of `xml` signed by the key of `der_base64`.
fn signed_by(xml: &str, der_base64: &str) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cert.pem");
    std::fs::write(&file, pem(der_base64)).unwrap();
    xmlsec_verify(xml, &file, ASSERTION_ID).is_ok()
}

/// A whole sign-in of the bound user; the SAMLResponse XML.
async fn response(app: &TestApp) -> String {
    let browser = app.browser();
    let page = sso_post(&browser, app, &authn_request(&request_id(), ""), None).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let done = submit_login(&browser, app, &page, USER, PASSWORD).await;
    auto_post(&done).xml
}

/// pysaml2, configured as Microsoft trusting only `certificates`, accepts a whole sign-in.
async fn microsoft_accepts(app: &TestApp, certificates: Vec<String>) {
    let mut args = vec![
        app.base_url.clone(),
        USER.into(),
        PASSWORD.into(),
        "--acs".into(),
        acs(app),
        "--domain".into(),
        DOMAIN.into(),
    ];
    for c in certificates {
        args.push("--trust-cert".into());
        args.push(c);
    }
    let result = tokio::task::spawn_blocking(move || run_m365_sp(args))
        .await
        .unwrap();
    assert!(result["name_id"].is_string(), "{result}");
}

/// Where idbridge posts Responses: the fake's login.srf.
fn acs(app: &TestApp) -> String {
    format!("{}/login.srf", app.state().config.m365.login_base_url)
}

/// The certificates the metadata publishes.
async fn published(app: &TestApp) -> Vec<String> {
    let xml = reqwest::get(app.url("/saml/metadata"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    doc.descendants()
        .filter(|n| n.has_tag_name(("http://www.w3.org/2000/09/xmldsig#", "X509Certificate")))
        .filter_map(|n| n.text().map(str::to_string))
        .collect()
}

async fn federated() -> (TestApp, GraphFake, reqwest::Client) {
    let (app, fake) = tenant(FEDERATION_ROLES).await;
    let http = api_client(&api_key(&app, "ops", AdminRole::Admin).await);
    let r = http
        .put(app.url(&format!("/api/v1/m365/domains/{DOMAIN}/federation")))
        .json(&json!({"confirmUsersNotBound": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    (app, fake, http)
}

async fn step(app: &TestApp, http: &reqwest::Client, path: &str) -> (u16, Value) {
    let r = http.post(app.url(path)).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn the_signing_certificate_rolls_over_with_microsoft_trusting_every_step() {
    let (app, fake, http) = federated().await;
    let old = app
        .state()
        .idp
        .signing()
        .certificate_der_base64()
        .to_string();
    assert_eq!(trusted(&fake), std::slice::from_ref(&old));
    microsoft_accepts(&app, trusted(&fake)).await;
    assert!(signed_by(&response(&app).await, &old));

    // 1. Prepare: published and trusted as next, not signing yet.
    let (status, body) = step(&app, &http, "/api/v1/signing-certificates/next").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["certificates"]["stage"], "nextPrepared");
    assert_eq!(body["federatedDomainsUpdated"], json!([DOMAIN]));
    let new = body["certificates"]["next"]["derBase64"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(new, old);
    assert_eq!(trusted(&fake), [old.clone(), new.clone()]);
    assert_eq!(published(&app).await, [old.clone(), new.clone()]);
    let xml = response(&app).await;
    assert!(signed_by(&xml, &old) && !signed_by(&xml, &new));
    microsoft_accepts(&app, trusted(&fake)).await;
    let (status, body) = step(&app, &http, "/api/v1/signing-certificates/next").await;
    assert_eq!(status, 409, "a second prepare is refused: {body}");
    assert_eq!(body["error"]["field"], "stage");

    // 2. Promote: the new one signs, the old one stays trusted.
    let (status, body) = step(&app, &http, "/api/v1/signing-certificates/promote").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["certificates"]["stage"], "promoted");
    assert_eq!(trusted(&fake), [new.clone(), old.clone()]);
    assert_eq!(published(&app).await, [new.clone(), old.clone()]);
    let xml = response(&app).await;
    assert!(signed_by(&xml, &new) && !signed_by(&xml, &old));
    microsoft_accepts(&app, trusted(&fake)).await;
    // Microsoft trusting only the old certificate would now refuse: the check can fail.
    let refused = tokio::task::spawn_blocking({
        let args = vec![
            app.base_url.clone(),
            USER.to_string(),
            PASSWORD.to_string(),
            "--acs".to_string(),
            acs(&app),
            "--domain".to_string(),
            DOMAIN.to_string(),
            "--trust-cert".to_string(),
            old.clone(),
        ];
        move || std::panic::catch_unwind(|| run_m365_sp(args)).is_err()
    })
    .await
    .unwrap();
    assert!(
        refused,
        "a Microsoft trusting only the old certificate must refuse"
    );
    // No drift: Microsoft holds what idbridge would send.
    let domains: Value = http
        .get(app.url("/api/v1/m365/domains"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let fabrikam = domains
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["domain"] == DOMAIN)
        .unwrap();
    assert_eq!(fabrikam["drift"], json!([]), "{fabrikam}");

    // 3. Retire: too soon without confirmation, then Microsoft forgets the old one.
    let (status, body) = step(&app, &http, "/api/v1/signing-certificates/retire").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "confirm");
    assert_eq!(trusted(&fake), [new.clone(), old.clone()]);
    let (status, body) = step(
        &app,
        &http,
        "/api/v1/signing-certificates/retire?confirm=true",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["certificates"]["stage"], "steady");
    assert_eq!(trusted(&fake), std::slice::from_ref(&new));
    assert_eq!(published(&app).await, std::slice::from_ref(&new));
    microsoft_accepts(&app, trusted(&fake)).await;
    assert!(signed_by(&response(&app).await, &new));

    for kind in [
        "signing_certificate_prepared",
        "signing_certificate_promoted",
        "signing_certificate_retired",
    ] {
        let events = app.events(kind).await;
        assert_eq!(events.len(), 1, "{kind}");
        let details: Value = serde_json::from_str(&events[0].details).unwrap();
        assert_eq!(
            details["federatedDomainsUpdated"],
            json!([DOMAIN]),
            "{kind}"
        );
    }

    // A restart signs with the promoted certificate (stored, not in the files).
    let dir = app.stop().await;
    let again = TestApp::spawn_in(dir, "").await;
    assert_eq!(
        again.state().idp.signing().certificate_der_base64(),
        new.as_str()
    );
}

#[tokio::test]
async fn a_graph_failure_changes_nothing_here_or_at_microsoft() {
    let (app, fake, http) = federated().await;
    let old = trusted(&fake);
    fake.fail_next(3, 500);
    let (status, body) = step(&app, &http, "/api/v1/signing-certificates/next").await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("Graph")
            || body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Microsoft"),
        "{body}"
    );
    assert_eq!(trusted(&fake), old);
    let overview: Value = http
        .get(app.url("/api/v1/signing-certificates"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(overview["stage"], "steady", "{overview}");
    assert_eq!(published(&app).await, old);
    assert!(app.events("signing_certificate_prepared").await.is_empty());
    // Promote and retire with nothing to promote or retire: refused, with the next step.
    let (status, body) = step(&app, &http, "/api/v1/signing-certificates/promote").await;
    assert_eq!(status, 409);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cert next"),
        "{body}"
    );
    let (status, _) = step(
        &app,
        &http,
        "/api/v1/signing-certificates/retire?confirm=true",
    )
    .await;
    assert_eq!(status, 409);
}

#[tokio::test]
async fn the_cli_rolls_over_without_microsoft_365_and_a_running_server_follows() {
    let app = TestApp::spawn().await;
    let old = app
        .state()
        .idp
        .signing()
        .certificate_der_base64()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = app.cli(dir.path(), &["cert", "next"]).await;
    assert!(out.contains("next signing certificate prepared"), "{out}");
    // Not connected: the PowerShell to give a domain federated by hand the certificates.
    assert!(out.contains("Microsoft 365 is not connected"), "{out}");
    assert!(
        out.contains("Update-MgDomainFederationConfiguration") && out.contains(&old),
        "{out}"
    );
    assert!(out.contains("next sha256 fingerprint:"), "{out}");

    // The server publishes it within its reload period, then signs with it once promoted.
    let deadline = Instant::now() + Duration::from_secs(30);
    while published(&app).await.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the server did not publish the next certificate"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let new = published(&app).await[1].clone();
    let out = app.cli(dir.path(), &["cert", "promote"]).await;
    assert!(out.contains("promoted"), "{out}");
    while app.state().idp.signing().certificate_der_base64() != new {
        assert!(
            Instant::now() < deadline,
            "the server did not sign with the promoted certificate"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let show = app.cli(dir.path(), &["cert", "show", "--der-base64"]).await;
    assert_eq!(show.trim(), new);
    let show = app.cli(dir.path(), &["cert", "show"]).await;
    assert!(show.contains("previous sha256 fingerprint:"), "{show}");
    assert!(show.contains("stored:"), "{show}");
}

#[tokio::test]
async fn the_console_saml_page_takes_each_step_and_a_read_only_admin_sees_no_buttons() {
    use crate::support::console::admin_browser;
    let app = TestApp::spawn().await;
    let reader = admin_browser(&app, "auditor", AdminRole::ReadOnly).await;
    let (_, page) = reader.get(&app, "/admin/saml").await;
    assert!(page.contains("id=\"rollover\""), "{page}");
    assert!(!page.contains("Prepare the next certificate"), "{page}");
    let r = reader
        .post(&app, "/admin/saml/certificates", &[("step", "next")])
        .await;
    assert_eq!(r.status(), 403);
    assert!(app.state().idp.signing_set().next.is_none());

    let admin = admin_browser(&app, "root", AdminRole::Admin).await;
    let (_, page) = admin.get(&app, "/admin/saml").await;
    assert!(page.contains("Prepare the next certificate"), "{page}");
    let r = admin
        .post(&app, "/admin/saml/certificates", &[("step", "next")])
        .await;
    assert_eq!(r.status(), 303);
    let (_, page) = admin.get(&app, "/admin/saml#rollover").await;
    assert!(page.contains("id=\"next-certificate\""), "{page}");
    assert!(
        page.contains("Microsoft 365 is not connected"),
        "the notice: {page}"
    );
    assert!(
        page.contains("Promote: sign with the next certificate"),
        "{page}"
    );
    let next = app.state().idp.signing_set().next.unwrap();
    assert!(page.contains(&next.fingerprint_sha256()), "{page}");

    let r = admin
        .post(&app, "/admin/saml/certificates", &[("step", "promote")])
        .await;
    assert_eq!(r.status(), 303);
    assert_eq!(
        app.state().idp.signing().fingerprint_sha256(),
        next.fingerprint_sha256(),
        "this node signs with the promoted certificate at once"
    );
    // Retiring at once is refused with the reason, and the checkbox confirms it.
    let r = admin
        .post(&app, "/admin/saml/certificates", &[("step", "retire")])
        .await;
    assert_eq!(r.status(), 422);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("Nothing changed") && body.contains("on their way"),
        "{body}"
    );
    let r = admin
        .post(
            &app,
            "/admin/saml/certificates",
            &[("step", "retire"), ("confirm", "yes")],
        )
        .await;
    assert_eq!(r.status(), 303);
    let (_, page) = admin.get(&app, "/admin/saml").await;
    assert!(!page.contains("id=\"previous-certificate\""), "{page}");
    assert!(page.contains("Prepare the next certificate"), "{page}");
    assert_eq!(app.events("signing_certificate_retired").await.len(), 1);
}
