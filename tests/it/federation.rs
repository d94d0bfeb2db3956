//! Federating a domain to idbridge through Graph: the checks Microsoft makes, the preview of
//! who is affected, drift, and making the domain managed again; from the library and the CLI.

use chrono::Utc;
use idbridge::directory::AdminRole;
use idbridge::events::Actor;
use idbridge::m365::federation::{Confirmation, DomainSignIn, FederationError, FederationSettings};
use serde_json::{json, Value};

use crate::support::graph_fake::{FakeUserSpec, GraphFake};
use crate::support::m365::{configured, m365_settings, settled};
use crate::support::{binary, TestApp};

pub(crate) const FEDERATION_ROLES: &[&str] = &[
    "User.ReadWrite.All",
    "User-PasswordProfile.ReadWrite.All",
    "Domain.Read.All",
    "User.RevokeSessions.All",
    "Domain-InternalFederation.ReadWrite.All",
];

fn admin() -> Actor {
    Actor::Admin("alice".into())
}

/// idbridge's settings for `domain` as it is federated.
fn settings(app: &TestApp, domain: &str) -> FederationSettings {
    app.state()
        .idp
        .federation_settings(&app.state().config, domain)
}

/// What idbridge sends to federate `domain` now.
fn new_settings(app: &TestApp, domain: &str) -> FederationSettings {
    app.state()
        .idp
        .new_federation_settings(&app.state().config, domain)
}

/// A tenant with fabrikam.com (verified, not default) holding a bound user and a user that
/// is not bound, northwind.com (unverified), and contoso.com as the default domain.
pub(crate) async fn tenant(roles: &[&str]) -> (TestApp, GraphFake) {
    let (app, fake) = configured("", "").await;
    fake.set_app_roles(roles);
    fake.add_domain("fabrikam.com", false, false);
    fake.add_unverified_domain("northwind.com");
    fake.add_user(FakeUserSpec {
        upn: "breakglass@fabrikam.com".into(),
        account_enabled: true,
        ..FakeUserSpec::default()
    });
    app.state()
        .m365
        .connect_application(&Actor::cli(), Utc::now())
        .await
        .expect("connected");
    app.create_user("ana", "ana@fabrikam.com", "Corr3ct-Horse-Battery")
        .await;
    app.state()
        .sync
        .bind(&admin(), &["ana".to_string()], Utc::now())
        .await
        .unwrap();
    settled(&app, "ana", "bound").await;
    (app, fake)
}

#[tokio::test]
async fn a_domain_is_federated_through_graph_after_its_checks_and_preview_then_made_managed_again()
{
    let (app, fake) = tenant(FEDERATION_ROLES).await;
    let m365 = &app.state().m365;
    let ours = new_settings(&app, "fabrikam.com");
    assert_eq!(
        ours.issuer_uri,
        app.url("/saml/fabrikam.com"),
        "its own issuer"
    );
    let now = Utc::now();

    // Refused with the reason, nothing sent.
    let refused = |r: Result<_, FederationError>| match r {
        Err(e) => e,
        Ok(_) => panic!("federated although it should have been refused"),
    };
    let e = refused(
        m365.federate_domain(&admin(), "contoso.onmicrosoft.com", &ours, true, true, now)
            .await,
    );
    assert!(matches!(e, FederationError::Initial(_)), "{e}");
    let e = refused(
        m365.federate_domain(&admin(), "northwind.com", &ours, true, true, now)
            .await,
    );
    assert!(matches!(e, FederationError::Unverified(_)), "{e}");
    assert!(e.to_string().contains("DNS"), "says how to verify: {e}");
    let e = refused(
        m365.federate_domain(&admin(), "tailspin.com", &ours, true, true, now)
            .await,
    );
    assert!(matches!(e, FederationError::UnknownDomain(_)), "{e}");
    let e = refused(
        m365.federate_domain(&admin(), "contoso.com", &ours, false, true, now)
            .await,
    );
    assert!(e.to_string().contains("default domain"), "{e}");
    let e = refused(
        m365.federate_domain(&admin(), "fabrikam.com", &ours, false, false, now)
            .await,
    );
    assert!(
        matches!(
            e,
            FederationError::NeedsConfirmation {
                confirmation: Confirmation::UsersNotBound,
                ..
            }
        ) && e.to_string().contains("breakglass@fabrikam.com"),
        "names who could no longer sign in: {e}"
    );
    assert!(
        fake.federation("fabrikam.com").is_none(),
        "nothing was sent"
    );

    // The preview, then the federation.
    let preview = m365.federation_preview("fabrikam.com").await.unwrap();
    assert_eq!(preview.bound, ["ana@fabrikam.com"]);
    assert_eq!(preview.not_bound, ["breakglass@fabrikam.com"]);
    let done = m365
        .federate_domain(&admin(), "FABRIKAM.com", &ours, false, true, now)
        .await
        .unwrap();
    assert_eq!(done.bound, ["ana@fabrikam.com"]);
    let held = fake
        .federation("fabrikam.com")
        .expect("federated in Microsoft 365");
    assert_eq!(held["issuerUri"], json!(ours.issuer_uri));
    assert_eq!(
        held["passiveSignInUri"],
        json!(app.url("/saml/sso/fabrikam.com"))
    );
    assert_eq!(held["signOutUri"], json!(app.url("/saml/slo")));
    assert_eq!(held["signingCertificate"], json!(ours.signing_certificate));
    assert_eq!(held["preferredAuthenticationProtocol"], "saml");
    assert_eq!(
        held["federatedIdpMfaBehavior"],
        "acceptIfMfaDoneByFederatedIdp"
    );
    let events = app.events("m365_domain_federated").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].actor, "admin:alice");
    assert_eq!(events[0].target.as_deref(), Some("fabrikam.com"));
    assert!(events[0].details.contains("breakglass@fabrikam.com"));
    // Every node reads the domain's issuer from the database (this one now, for the test).
    app.state().reload_signing().await.unwrap();
    assert_eq!(settings(&app, "fabrikam.com"), ours);

    let statuses = m365.domain_statuses(|d| settings(&app, d)).await.unwrap();
    let status = |name: &str| {
        statuses
            .iter()
            .find(|s| s.domain == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} listed"))
    };
    assert_eq!(status("fabrikam.com").sign_in, DomainSignIn::Idbridge);
    assert!(status("fabrikam.com").drift.is_empty());
    assert_eq!(status("contoso.com").sign_in, DomainSignIn::Managed);
    assert!(status("contoso.com").is_default);
    assert!(status("contoso.onmicrosoft.com").is_initial);
    assert!(!status("northwind.com").is_verified);
    let e = refused(
        m365.federate_domain(&admin(), "fabrikam.com", &ours, false, true, now)
            .await,
    );
    assert!(matches!(e, FederationError::AlreadyFederated(_)), "{e}");

    // Somebody changes the certificate Microsoft holds: drift, on that property only.
    fake.set_federation_property("fabrikam.com", "signingCertificate", json!("MIIOLD"));
    let statuses = m365.domain_statuses(|d| settings(&app, d)).await.unwrap();
    let fabrikam = statuses
        .iter()
        .find(|s| s.domain == "fabrikam.com")
        .unwrap();
    assert_eq!(fabrikam.sign_in, DomainSignIn::Idbridge);
    assert_eq!(fabrikam.drift.len(), 1, "{:?}", fabrikam.drift);
    assert_eq!(fabrikam.drift[0].property, "signingCertificate");
    assert_eq!(fabrikam.drift[0].microsoft.as_deref(), Some("MIIOLD"));
    // /readyz says so too (checked in the background; the node stays ready).
    let readyz = || async {
        let r = reqwest::get(app.url("/readyz")).await.unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()
    };
    readyz().await;
    let ready = crate::support::m365::eventually("readyz reports the drift", || async {
        let body = readyz().await;
        (body["checks"]["federation"]["ok"] == json!(false)).then_some(body)
    })
    .await;
    let domains = ready["checks"]["federation"]["domains"].as_array().unwrap();
    assert_eq!(domains.len(), 1, "{ready}");
    assert_eq!(domains[0]["drift"][0]["property"], "signingCertificate");
    assert!(
        ready["warnings"]
            .to_string()
            .contains("fabrikam.com differs from idbridge in signingCertificate"),
        "{ready}"
    );

    // Managed again, after a confirmation.
    let e = refused(
        m365.unfederate_domain(&admin(), "fabrikam.com", false, now)
            .await,
    );
    assert!(
        matches!(
            e,
            FederationError::NeedsConfirmation {
                confirmation: Confirmation::Unfederate,
                ..
            }
        ) && e.to_string().contains("managed"),
        "{e}"
    );
    assert!(fake.federation("fabrikam.com").is_some());
    m365.unfederate_domain(&admin(), "fabrikam.com", true, now)
        .await
        .unwrap();
    assert!(fake.federation("fabrikam.com").is_none());
    let e = refused(
        m365.unfederate_domain(&admin(), "fabrikam.com", true, now)
            .await,
    );
    assert!(matches!(e, FederationError::NotFederated(_)), "{e}");
    assert_eq!(app.events("m365_domain_unfederated").await.len(), 1);
}

#[tokio::test]
async fn without_the_federation_permission_the_error_names_it_and_nothing_changes() {
    let (app, fake) = tenant(&FEDERATION_ROLES[..4]).await;
    let ours = settings(&app, "fabrikam.com");
    let e = app
        .state()
        .m365
        .federate_domain(&admin(), "fabrikam.com", &ours, false, true, Utc::now())
        .await
        .expect_err("refused by Graph");
    let text = e.to_string();
    assert!(
        text.contains("403") && text.contains("Domain-InternalFederation.ReadWrite.All"),
        "{text}"
    );
    assert!(fake.federation("fabrikam.com").is_none());
    assert!(app.events("m365_domain_federated").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_domains_previews_federates_and_unfederates() {
    let (app, fake) = tenant(FEDERATION_ROLES).await;
    let work = tempfile::tempdir().unwrap();
    let config = &app.state().config;
    let file = work.path().join("idbridge.toml");
    std::fs::write(
        &file,
        format!(
            "base_url = {:?}\ndata_dir = {:?}\ndatabase_url = {:?}\n{}\n[certs]\nkey_file = {:?}\ncert_file = {:?}\n",
            config.base_url,
            config.data_dir.display().to_string(),
            config.database_url(),
            m365_settings(&fake, "", ""),
            config.certs.key_file.display().to_string(),
            config.certs.cert_file.display().to_string(),
        ),
    )
    .unwrap();
    // Asynchronously: the server shares this test's runtime.
    let run = async |args: &[&str]| {
        let out = tokio::process::Command::new(binary())
            .arg("--config")
            .arg(&file)
            .args(args)
            .current_dir(work.path())
            .env("RUST_LOG", "warn")
            .output()
            .await
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["m365", "domains"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("fabrikam.com\tmanaged"), "{out}");
    assert!(out.contains("contoso.com\tmanaged\tdefault"), "{out}");
    assert!(out.contains("northwind.com\tmanaged\tunverified"), "{out}");

    // Without --yes: who is affected, what would be sent, the PowerShell, and nothing changed.
    let (code, _, err) = run(&["m365", "federate", "fabrikam.com"]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("nothing changed") && err.contains("breakglass@fabrikam.com"),
        "{err}"
    );
    assert!(
        err.contains("New-MgDomainFederationConfiguration -DomainId \"fabrikam.com\""),
        "{err}"
    );
    assert!(err.contains("\"passiveSignInUri\""), "{err}");
    assert!(fake.federation("fabrikam.com").is_none());
    let (code, _, err) = run(&["m365", "federate", "contoso.onmicrosoft.com", "--yes"]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("initial domain"), "{err}");

    let (code, out, err) = run(&["m365", "federate", "fabrikam.com", "--yes"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("federated to idbridge") && out.contains("1 bound"),
        "{out}"
    );
    let held: Value = fake.federation("fabrikam.com").unwrap();
    assert_eq!(held["issuerUri"], json!(app.url("/saml/fabrikam.com")));
    let (_, out, _) = run(&["m365", "domains"]).await;
    assert!(out.contains("fabrikam.com\tfederated to idbridge"), "{out}");
    assert!(!out.contains("differs"), "{out}");
    fake.set_federation_property(
        "fabrikam.com",
        "signOutUri",
        json!("https://old.example/slo"),
    );
    let (_, out, _) = run(&["m365", "domains"]).await;
    assert!(
        out.contains("differs: signOutUri is https://old.example/slo in Microsoft 365"),
        "{out}"
    );

    let (code, _, err) = run(&["m365", "unfederate", "fabrikam.com"]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("--yes"), "{err}");
    let (code, out, err) = run(&["m365", "unfederate", "fabrikam.com", "--yes"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("managed again"), "{out}");
    assert!(fake.federation("fabrikam.com").is_none());
}

#[tokio::test]
async fn the_api_previews_federates_refuses_with_fields_and_unfederates() {
    let (app, fake) = tenant(FEDERATION_ROLES).await;
    let key = crate::support::console::api_key(&app, "ops", AdminRole::Admin).await;
    let http = crate::support::console::api_client(&key);
    let call = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut r = http.request(method, app.url(path));
        if let Some(b) = body {
            r = r.json(&b);
        }
        async move {
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, list) = call(reqwest::Method::GET, "/api/v1/m365/domains", None).await;
    assert_eq!(status, 200, "{list}");
    let fabrikam = list
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["domain"] == "fabrikam.com")
        .unwrap();
    assert_eq!(fabrikam["signIn"], "managed");

    let path = "/api/v1/m365/domains/fabrikam.com/federation";
    let (status, plan) = call(reqwest::Method::GET, path, None).await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(
        plan["preview"]["notBound"],
        json!(["breakglass@fabrikam.com"])
    );
    assert_eq!(plan["graphBody"]["preferredAuthenticationProtocol"], "saml");
    assert!(plan["powershell"]
        .as_str()
        .unwrap()
        .contains("fabrikam.com"));

    let (status, err) = call(reqwest::Method::PUT, path, None).await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["error"]["field"], "confirmUsersNotBound");
    let (status, err) = call(
        reqwest::Method::PUT,
        "/api/v1/m365/domains/northwind.com/federation",
        Some(json!({"confirmUsersNotBound": true})),
    )
    .await;
    assert_eq!(
        (status, err["error"]["field"].clone()),
        (409, json!("domain")),
        "{err}"
    );
    let (status, err) = call(
        reqwest::Method::PUT,
        "/api/v1/m365/domains/tailspin.com/federation",
        None,
    )
    .await;
    assert_eq!(status, 404, "{err}");
    assert!(fake.federation("fabrikam.com").is_none());

    let (status, done) = call(
        reqwest::Method::PUT,
        path,
        Some(json!({"confirmUsersNotBound": true})),
    )
    .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["bound"], json!(["ana@fabrikam.com"]));
    assert!(fake.federation("fabrikam.com").is_some());
    assert_eq!(
        app.events("m365_domain_federated").await[0].actor,
        "apikey:ops"
    );

    let (status, err) = call(reqwest::Method::DELETE, path, None).await;
    assert_eq!(
        (status, err["error"]["field"].clone()),
        (422, json!("confirm")),
        "{err}"
    );
    let (status, _) = call(
        reqwest::Method::DELETE,
        &format!("{path}?confirm=true"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(fake.federation("fabrikam.com").is_none());
}

#[tokio::test]
async fn the_console_shows_each_domain_s_sign_in_and_drift() {
    let (app, fake) = tenant(FEDERATION_ROLES).await;
    let ours = settings(&app, "fabrikam.com");
    app.state()
        .m365
        .federate_domain(&admin(), "fabrikam.com", &ours, false, true, Utc::now())
        .await
        .unwrap();
    fake.set_federation_property(
        "fabrikam.com",
        "passiveSignInUri",
        json!("https://old.example/sso"),
    );
    let browser = crate::support::console::admin_browser(&app, "root", AdminRole::Admin).await;
    let (status, page) = browser.get(&app, "/admin/m365").await;
    assert_eq!(status, 200);
    let row = |domain: &str| {
        page.split("<tr>")
            .find(|r| r.contains(&format!("<td>{domain}</td>")))
            .unwrap_or_else(|| panic!("{domain} listed: {page}"))
            .to_string()
    };
    // Ours by its issuer although its sign-in page was changed, with the difference shown.
    assert!(row("fabrikam.com").contains("federated to idbridge"));
    assert!(
        row("fabrikam.com").contains("passiveSignInUri: Microsoft 365 has https://old.example/sso"),
        "{}",
        row("fabrikam.com")
    );
    assert!(row("contoso.com").contains("managed") && row("contoso.com").contains("default"));
    assert!(row("northwind.com").contains("unverified"));
}

#[tokio::test]
async fn the_console_federates_after_a_confirmation_page_and_makes_managed_again() {
    let (app, fake) = tenant(FEDERATION_ROLES).await;
    let browser = crate::support::console::admin_browser(&app, "root", AdminRole::Admin).await;
    let (_, page) = browser.get(&app, "/admin/m365").await;
    assert!(
        page.contains("action=\"/admin/m365/domains/federate\""),
        "offered"
    );

    // The confirmation page: who is affected, what is sent; nothing changed yet.
    let r = browser
        .post(
            &app,
            "/admin/m365/domains/federate",
            &[("domain", "fabrikam.com")],
        )
        .await;
    assert_eq!(r.status(), 200);
    let confirm = r.text().await.unwrap();
    assert!(
        confirm.contains("Federate fabrikam.com to idbridge?"),
        "{confirm}"
    );
    assert!(
        confirm.contains("<li>ana@fabrikam.com</li>")
            && confirm.contains("<li>breakglass@fabrikam.com</li>")
    );
    assert!(
        confirm.contains("name=\"confirm_unbound\""),
        "asks about the users not bound"
    );
    assert!(confirm.contains("New-MgDomainFederationConfiguration"));
    assert!(fake.federation("fabrikam.com").is_none());

    // Confirmed without ticking the users not bound: refused with the reason, nothing sent.
    let r = browser
        .post(
            &app,
            "/admin/m365/domains/federate",
            &[("domain", "fabrikam.com"), ("confirmed", "yes")],
        )
        .await;
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("breakglass@fabrikam.com"));
    assert!(fake.federation("fabrikam.com").is_none());

    // The default domain's page asks for that confirmation too.
    let r = browser
        .post(
            &app,
            "/admin/m365/domains/federate",
            &[("domain", "contoso.com")],
        )
        .await;
    assert!(r.text().await.unwrap().contains("name=\"confirm_default\""));

    let r = browser
        .post(
            &app,
            "/admin/m365/domains/federate",
            &[
                ("domain", "fabrikam.com"),
                ("confirmed", "yes"),
                ("confirm_unbound", "yes"),
            ],
        )
        .await;
    assert_eq!(r.status(), 303);
    assert!(fake.federation("fabrikam.com").is_some());
    assert_eq!(
        app.events("m365_domain_federated").await[0].actor,
        "admin:root"
    );
    let (_, page) = browser.get(&app, "/admin/m365").await;
    assert!(
        page.contains("federated to idbridge") && page.contains("Make managed"),
        "{page}"
    );

    let r = browser
        .post(
            &app,
            "/admin/m365/domains/unfederate",
            &[("domain", "fabrikam.com"), ("confirmed", "yes")],
        )
        .await;
    assert_eq!(r.status(), 303);
    assert!(fake.federation("fabrikam.com").is_none());

    // A read-only admin sees the domains but cannot change them.
    let viewer = crate::support::console::admin_browser(&app, "viewer", AdminRole::ReadOnly).await;
    let (_, page) = viewer.get(&app, "/admin/m365").await;
    assert!(page.contains("<td>fabrikam.com</td>") && !page.contains("Federate…"));
    let r = viewer
        .post(
            &app,
            "/admin/m365/domains/federate",
            &[
                ("domain", "fabrikam.com"),
                ("confirmed", "yes"),
                ("confirm_unbound", "yes"),
            ],
        )
        .await;
    assert_eq!(r.status(), 403);
    assert!(fake.federation("fabrikam.com").is_none());
}

#[tokio::test]
async fn each_federated_domain_gets_its_own_issuer_and_sign_in_url_and_responses_follow_the_upn() {
    use crate::sso::{authn_request, auto_post, request_id, run_m365_sp, sso_post, submit_login};
    let (app, fake) = tenant(FEDERATION_ROLES).await;
    fake.add_domain("tailspin.com", false, false);
    app.create_user("tom", "tom@tailspin.com", "Corr3ct-Horse-Battery")
        .await;
    app.state()
        .sync
        .bind(&admin(), &["tom".to_string()], Utc::now())
        .await
        .unwrap();
    settled(&app, "tom", "bound").await;
    let key = crate::support::console::api_key(&app, "ops", AdminRole::Admin).await;
    let http = crate::support::console::api_client(&key);
    for domain in ["fabrikam.com", "tailspin.com"] {
        let r = http
            .put(app.url(&format!("/api/v1/m365/domains/{domain}/federation")))
            .json(&json!({"confirmUsersNotBound": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{domain}: {}", r.text().await.unwrap());
        let held = fake.federation(domain).unwrap();
        assert_eq!(
            held["issuerUri"],
            json!(app.url(&format!("/saml/{domain}")))
        );
        assert_eq!(
            held["passiveSignInUri"],
            json!(app.url(&format!("/saml/sso/{domain}")))
        );
    }
    // No drift: idbridge expects what it sent, per domain.
    let domains: Value = http
        .get(app.url("/api/v1/m365/domains"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for domain in ["fabrikam.com", "tailspin.com"] {
        let d = domains
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["domain"] == domain)
            .unwrap();
        assert_eq!(d["signIn"], "idbridge", "{d}");
        assert_eq!(d["drift"], json!([]), "{d}");
    }

    // Each user's Response carries the issuer of their UPN's domain, wherever they start.
    for (user, domain) in [("ana", "fabrikam.com"), ("tom", "tailspin.com")] {
        let browser = app.browser();
        let page = sso_post(&browser, &app, &authn_request(&request_id(), ""), None).await;
        let done = submit_login(&browser, &app, &page, user, "Corr3ct-Horse-Battery").await;
        let xml = auto_post(&done).xml;
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let issuers: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name(("urn:oasis:names:tc:SAML:2.0:assertion", "Issuer")))
            .filter_map(|n| n.text())
            .collect();
        let expected = app.url(&format!("/saml/{domain}"));
        assert_eq!(issuers, [expected.as_str(), expected.as_str()], "{user}");

        // pysaml2 as Microsoft for that domain: its metadata, its sign-in URL.
        let args = vec![
            app.base_url.clone(),
            user.to_string(),
            "Corr3ct-Horse-Battery".to_string(),
            "--domain".to_string(),
            domain.to_string(),
            "--acs".to_string(),
            format!("{}/login.srf", app.state().config.m365.login_base_url),
        ];
        let result = tokio::task::spawn_blocking(move || run_m365_sp(args))
            .await
            .unwrap();
        assert_eq!(result["issuer"], json!(expected), "{result}");
    }
    // Only domains with their own issuer have their own metadata.
    let r = reqwest::get(app.url("/saml/metadata/contoso.com"))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Made managed again, the domain's record goes: its users get the one issuer.
    let r = http
        .delete(app.url("/api/v1/m365/domains/tailspin.com/federation?confirm=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = reqwest::get(app.url("/saml/metadata/tailspin.com"))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = reqwest::get(app.url("/saml/metadata/fabrikam.com"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
