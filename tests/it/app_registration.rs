//! The Microsoft 365 app registration entered in the console and the API instead of
//! idbridge.toml: sealed at rest, used without a restart, file values read-only.

use idbridge::directory::AdminRole;
use serde_json::{json, Value};

use crate::support::console::{admin_browser, api_client, api_key};
use crate::support::graph_fake::GraphFake;
use crate::support::{html_unescape, TestApp};

/// `[m365]` pointing at the fake with no app registration at all, as on a fresh install.
fn fresh_settings(fake: &GraphFake) -> String {
    format!(
        "[m365]\nlogin_base_url = \"{}\"\ngraph_base_url = \"{}\"\n",
        fake.login_base_url(),
        fake.graph_base_url()
    )
}

async fn fresh() -> (TestApp, GraphFake) {
    let fake = GraphFake::start().await;
    fake.add_domain("contoso.com", false, true);
    let app = TestApp::spawn_with(&fresh_settings(&fake)).await;
    fake.register_redirect_uri(&app.url("/m365/callback"));
    (app, fake)
}

#[tokio::test]
async fn an_admin_enters_the_app_registration_in_the_console_and_connects_without_a_restart() {
    let (app, fake) = fresh().await;
    let admin = admin_browser(&app, "root", AdminRole::Admin).await;

    let (status, page) = admin.get(&app, "/admin/m365").await;
    assert_eq!(status, 200);
    assert!(page.contains("id=\"app-registration-form\""), "{page}");
    assert!(page.contains("id=\"config-problem\""), "{page}");
    assert!(
        html_unescape(&page).contains("application (client) ID is missing"),
        "{page}"
    );

    // A wrong client ID is refused with the fix, and nothing is stored.
    let r = admin
        .post(
            &app,
            "/admin/m365/app-registration",
            &[
                ("tenant", GraphFake::TENANT_ID),
                ("client_id", "my-app"),
                ("credential", "keep"),
            ],
        )
        .await;
    assert_eq!(r.status(), 422);
    let body = html_unescape(&r.text().await.unwrap());
    assert!(
        body.contains("is not a GUID") && body.contains("Overview"),
        "{body}"
    );
    assert!(app.store.app_registration().await.unwrap().is_none());

    // The secret option without a secret says what to paste.
    let r = admin
        .post(
            &app,
            "/admin/m365/app-registration",
            &[
                ("client_id", GraphFake::CLIENT_ID),
                ("credential", "secret"),
            ],
        )
        .await;
    assert_eq!(r.status(), 422);
    assert!(html_unescape(&r.text().await.unwrap()).contains("Paste the client secret"));

    let r = admin
        .post(
            &app,
            "/admin/m365/app-registration",
            &[
                ("tenant", GraphFake::TENANT_ID),
                ("client_id", GraphFake::CLIENT_ID),
                ("credential", "secret"),
                ("client_secret", GraphFake::CLIENT_SECRET),
            ],
        )
        .await;
    assert_eq!(r.status(), 303, "back to the page with a notice");
    let (_, page) = admin.get(&app, "/admin/m365").await;
    let page = html_unescape(&page);
    assert!(page.contains("App registration saved"), "{page}");
    assert!(!page.contains("id=\"config-problem\""), "{page}");
    assert!(page.contains("client secret</span>"), "{page}");
    assert!(
        !page.contains(GraphFake::CLIENT_SECRET),
        "the secret is never shown again"
    );

    // Sealed at rest, and the event says what changed without the secret.
    let row = app.store.app_registration().await.unwrap().unwrap();
    let sealed = row.client_secret_sealed.unwrap();
    assert!(!sealed.contains(GraphFake::CLIENT_SECRET));
    let events = app.events("m365_app_registration_changed").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].actor, "admin:root");
    let details = events[0].details.to_string();
    assert!(details.contains("clientSecret") && details.contains(GraphFake::CLIENT_ID));
    assert!(!details.contains(GraphFake::CLIENT_SECRET), "{details}");

    // Connect with the app's own credentials: no restart happened.
    let r = admin.post(&app, "/admin/m365/connect-app", &[]).await;
    assert_eq!(r.status(), 303);
    let (_, page) = admin.get(&app, "/admin/m365").await;
    assert!(page.contains("id=\"connection-state\">connected"), "{page}");
    assert_eq!(
        fake.client_auth_methods().last().map(String::as_str),
        Some("client_secret_post")
    );

    // It survives a restart, and the CLI (another process) uses it too.
    let app = app.restart_with(&fresh_settings(&fake)).await;
    let reg = app.state().m365.registration();
    assert_eq!(reg.client_id.as_deref(), Some(GraphFake::CLIENT_ID));
    assert!(reg.problem().is_none());
    let dir = app.dir.path().to_path_buf();
    let out = app
        .cli(&dir, &["m365", "connect", "--client-credentials"])
        .await;
    assert!(out.to_lowercase().contains("connected"), "{out}");
}

#[tokio::test]
async fn a_generated_certificate_connects_once_uploaded_to_the_app_registration() {
    let (app, fake) = fresh().await;
    let api = api_client(&api_key(&app, "setup", AdminRole::Admin).await);
    let put = |body: Value| {
        let api = api.clone();
        let url = app.url("/api/v1/m365/app-registration");
        async move {
            let r = api.put(url).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };

    let (status, body) = put(json!({"clientId": "nope"})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "clientId");
    let (status, body) = put(json!({"tenant": "not a tenant"})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "tenant");
    let (status, body) =
        put(json!({"credential": {"type": "upload", "certificatePem": "x", "privateKeyPem": "y"}}))
            .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "credential");
    let (status, body) = put(json!({"secret": "unknown field"})).await;
    assert!(status == 400 || status == 422, "{status} {body}");

    let (status, body) = put(json!({
        "tenant": GraphFake::TENANT_ID,
        "clientId": GraphFake::CLIENT_ID,
        "credential": {"type": "generate"},
    }))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["credential"]["value"], "certificate");
    assert_eq!(body["credential"]["source"], "console");
    assert_eq!(body["credential"]["updatedBy"], "apikey:setup");
    assert!(body["problem"].is_null(), "{body}");
    let thumbprint = body["certificate"]["thumbprint"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(thumbprint.len(), 40);

    let pem = api
        .get(app.url("/api/v1/m365/app-registration/certificate"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    assert!(!pem.contains("PRIVATE KEY"));

    // Before the admin uploads it, Microsoft refuses the assertion; after, it connects.
    fake.register_certificate(&pem);
    let r = api
        .post(app.url("/api/v1/m365/connection"))
        .json(&json!({"mode": "application"}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["connection"]["state"], "connected", "{body}");
    assert_eq!(
        fake.client_auth_methods().last().map(String::as_str),
        Some("private_key_jwt")
    );

    // The key never leaves idbridge: the GET shows no secret material.
    let shown = api
        .get(app.url("/api/v1/m365/app-registration"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !shown.contains("PRIVATE") && shown.contains(&thumbprint),
        "{shown}"
    );

    // Read-only keys cannot change it.
    let read_only = api_client(&api_key(&app, "viewer", AdminRole::ReadOnly).await);
    let r = read_only
        .put(app.url("/api/v1/m365/app-registration"))
        .json(&json!({"tenant": "organizations"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn values_set_in_the_file_are_read_only_in_the_console_and_the_api() {
    let fake = GraphFake::start().await;
    let app = TestApp::spawn_with(&format!(
        "{}client_id = \"{}\"\n",
        fresh_settings(&fake),
        GraphFake::CLIENT_ID
    ))
    .await;
    let api = api_client(&api_key(&app, "setup", AdminRole::Admin).await);
    let r = api
        .put(app.url("/api/v1/m365/app-registration"))
        .json(&json!({"clientId": "6f8c3b2a-6d1e-4f7a-9b0c-1e2d3f4a5b6c"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["field"], "m365.client_id", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("change it there"),
        "{body}"
    );

    // The secret is not in the file: it can be entered here.
    let r = api
        .put(app.url("/api/v1/m365/app-registration"))
        .json(&json!({"credential": {"type": "secret", "value": GraphFake::CLIENT_SECRET}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["clientId"]["source"], "file");
    assert_eq!(body["clientId"]["setIn"], "the configuration");
    assert_eq!(body["credential"]["source"], "console");

    let admin = admin_browser(&app, "root", AdminRole::Admin).await;
    let (_, page) = admin.get(&app, "/admin/m365").await;
    assert!(
        page.contains("name=\"client_id\"") && page.contains("Set in the configuration"),
        "{page}"
    );
    let client_id_input = page
        .split("id=\"reg-client-id\"")
        .nth(1)
        .and_then(|rest| rest.split('>').next())
        .unwrap_or_default();
    assert!(client_id_input.contains("readonly"), "{client_id_input}");
}
