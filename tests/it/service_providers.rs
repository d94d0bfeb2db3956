//! SAML service providers registered in the console and the API instead of idbridge.toml:
//! in use without a restart (on every node), validated field by field, file entries read-only.

use chrono::Utc;
use idbridge::directory::AdminRole;
use roxmltree::Document;
use serde_json::{json, Value};

use crate::sso::{
    attr_of, authn_request_full, auto_post, find, issuer_config, request_id, sso_post,
    submit_login, xmlsec_verify, ASSERTION_ID_ATTR, EMAIL, NS_ASSERTION, PASSWORD, USERNAME,
};
use crate::support::console::{admin_browser, api_client, api_key};
use crate::support::m365::eventually;
use crate::support::{html_unescape, TestApp};

const WIKI: &str = "https://wiki.example.com/saml";
const WIKI_ACS: &str = "https://wiki.example.com/saml/acs";

fn path_of(entity_id: &str) -> String {
    format!(
        "/api/v1/saml/service-providers/{}",
        url::form_urlencoded::byte_serialize(entity_id.as_bytes()).collect::<String>()
    )
}

async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client.request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("API answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// What a wiki's SAML sign-in gives the user `USERNAME`: the NameID and the attributes, with
/// the Response checked by xmlsec1.
async fn wiki_sign_in(app: &TestApp) -> Result<(String, Vec<String>), String> {
    let browser = app.browser();
    let xml = authn_request_full(&request_id(), WIKI, "", Utc::now());
    let page = sso_post(&browser, app, &xml, None).await;
    if !page.body.contains("name=\"password\"") {
        return Err(page.body);
    }
    let answer = submit_login(&browser, app, &page, USERNAME, PASSWORD).await;
    let post = auto_post(&answer);
    assert_eq!(post.action, WIKI_ACS);
    xmlsec_verify(&post.xml, &app.cert_path(), ASSERTION_ID_ATTR).expect("xmlsec1 verifies");
    let doc = Document::parse(&post.xml).unwrap();
    let response = doc.root_element();
    assert_eq!(find(response, NS_ASSERTION, "Audience").text(), Some(WIKI));
    let name_id = find(response, NS_ASSERTION, "NameID");
    let mut names: Vec<String> = response
        .descendants()
        .filter(|n| n.has_tag_name((NS_ASSERTION, "Attribute")))
        .map(|a| attr_of(a, "Name").to_string())
        .collect();
    names.sort();
    Ok((name_id.text().unwrap_or_default().to_string(), names))
}

#[tokio::test]
async fn a_service_provider_registered_through_the_api_signs_in_at_once_and_is_removed_at_once() {
    let app = TestApp::spawn_with(&issuer_config()).await;
    app.create_user(USERNAME, EMAIL, PASSWORD).await;
    let client = api_client(&api_key(&app, "ops", AdminRole::Admin).await);
    let list = app.url("/api/v1/saml/service-providers");

    // Unknown before: the request is refused.
    assert!(wiki_sign_in(&app).await.is_err());

    let (status, body) = send(
        &client,
        reqwest::Method::POST,
        list.clone(),
        Some(json!({
            "entityId": WIKI,
            "name": "Team wiki",
            "acsUrls": [WIKI_ACS],
            "nameId": "email",
            "attributes": {"mail": "email", "givenName": "firstname"},
        })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["origin"], "console");
    assert_eq!(body["updatedBy"], "apikey:ops");
    assert_eq!(
        wiki_sign_in(&app).await.expect("the wiki is known now"),
        (EMAIL.to_string(), vec!["givenName".into(), "mail".into()])
    );

    // Registering it twice is a conflict naming what to do.
    let (status, body) = send(
        &client,
        reqwest::Method::POST,
        list.clone(),
        Some(json!({"entityId": WIKI, "acsUrls": [WIKI_ACS]})),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("registered already"));

    // A change: the username as NameID, no attributes.
    let (status, body) = send(
        &client,
        reqwest::Method::PUT,
        app.url(&path_of(WIKI)),
        Some(json!({"name": "Wiki", "acsUrls": [WIKI_ACS], "nameId": "username"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "Wiki");
    assert_eq!(
        wiki_sign_in(&app).await.unwrap(),
        (USERNAME.to_string(), vec![])
    );
    let (status, one) = send(&client, reqwest::Method::GET, app.url(&path_of(WIKI)), None).await;
    assert_eq!((status, one["nameId"].clone()), (200, json!("username")));

    // Microsoft 365 is listed first, built in; it cannot be removed.
    let (_, all) = send(&client, reqwest::Method::GET, list.clone(), None).await;
    assert_eq!(all[0]["entityId"], "urn:federation:MicrosoftOnline");
    assert_eq!(all[0]["origin"], "builtIn");
    let (status, _) = send(
        &client,
        reqwest::Method::DELETE,
        app.url(&path_of("urn:federation:MicrosoftOnline")),
        None,
    )
    .await;
    assert_eq!(status, 409);

    let (status, _) = send(
        &client,
        reqwest::Method::DELETE,
        app.url(&path_of(WIKI)),
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert!(
        wiki_sign_in(&app).await.is_err(),
        "refused as soon as removed"
    );
    let (status, _) = send(
        &client,
        reqwest::Method::DELETE,
        app.url(&path_of(WIKI)),
        None,
    )
    .await;
    assert_eq!(status, 404);

    let kinds: Vec<String> = app
        .store
        .recent_events_for(WIKI, 50)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_type)
        .collect();
    for kind in ["saml_sp_registered", "saml_sp_changed", "saml_sp_removed"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }
}

#[tokio::test]
async fn each_invalid_field_is_named_and_nothing_is_stored() {
    let app = TestApp::spawn().await;
    let client = api_client(&api_key(&app, "ops", AdminRole::Admin).await);
    let list = app.url("/api/v1/saml/service-providers");
    let cases = [
        (json!({"acsUrls": [WIKI_ACS]}), "entityId"),
        (
            json!({"entityId": "not a uri", "acsUrls": [WIKI_ACS]}),
            "entityId",
        ),
        (json!({"entityId": WIKI, "acsUrls": []}), "acsUrls"),
        (
            json!({"entityId": WIKI, "acsUrls": ["http://wiki.example.com/acs"]}),
            "acsUrls",
        ),
        (
            json!({"entityId": WIKI, "acsUrls": [WIKI_ACS], "sloUrl": "ftp://x/"}),
            "sloUrl",
        ),
        (
            json!({"entityId": WIKI, "acsUrls": [WIKI_ACS], "nameId": "upn"}),
            "nameId",
        ),
        (
            json!({"entityId": WIKI, "acsUrls": [WIKI_ACS], "attributes": {"x": "salary"}}),
            "attributes",
        ),
        (
            json!({"entityId": WIKI, "acsUrls": [WIKI_ACS], "certificatePem": "hello"}),
            "certificatePem",
        ),
        (
            json!({"entityId": WIKI, "acsUrls": [WIKI_ACS], "wantAuthnRequestsSigned": true}),
            "wantAuthnRequestsSigned",
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = send(
            &client,
            reqwest::Method::POST,
            list.clone(),
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{body}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Fix:"),
            "{answer}"
        );
    }
    let (status, body) = send(
        &client,
        reqwest::Method::POST,
        list.clone(),
        Some(json!({"entityId": "urn:federation:MicrosoftOnline", "acsUrls": [WIKI_ACS]})),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    let reader = api_client(&api_key(&app, "auditor", AdminRole::ReadOnly).await);
    let (status, _) = send(
        &reader,
        reqwest::Method::POST,
        list.clone(),
        Some(json!({"entityId": WIKI, "acsUrls": [WIKI_ACS]})),
    )
    .await;
    assert_eq!(status, 403);
    assert!(app.store.service_providers().await.unwrap().is_empty());
}

#[tokio::test]
async fn an_admin_registers_edits_and_removes_a_service_provider_in_the_console() {
    let app = TestApp::spawn_with(&format!(
        "{}\n[[saml.service_providers]]\nentity_id = \"https://files.example.com\"\n\
         acs_urls = [\"https://files.example.com/acs\"]\n",
        issuer_config()
    ))
    .await;
    app.create_user(USERNAME, EMAIL, PASSWORD).await;
    let admin = admin_browser(&app, "root", AdminRole::Admin).await;
    let (_, page) = admin.get(&app, "/admin/saml").await;
    assert!(page.contains("id=\"sp-form\""), "{page}");
    assert!(
        page.contains("idbridge.toml"),
        "the file's entry says where it is set"
    );

    // A refusal keeps what was typed.
    let r = admin
        .post(
            &app,
            "/admin/saml/service-providers",
            &[
                ("mode", "register"),
                ("entity_id", WIKI),
                ("name", "Team wiki"),
                ("acs_urls", "http://wiki.example.com/acs"),
                ("attributes", "mail = email"),
            ],
        )
        .await;
    assert_eq!(r.status(), 422);
    let page = html_unescape(&r.text().await.unwrap());
    assert!(page.contains("plain http"), "{page}");
    assert!(page.contains("value=\"Team wiki\""), "kept: {page}");
    assert!(page.contains(">mail = email</textarea>"), "kept: {page}");
    let r = admin
        .post(
            &app,
            "/admin/saml/service-providers",
            &[
                ("mode", "register"),
                ("entity_id", WIKI),
                ("name", "Team wiki"),
                ("acs_urls", "badline"),
                ("attributes", "mail"),
            ],
        )
        .await;
    assert_eq!(r.status(), 422);
    assert!(html_unescape(&r.text().await.unwrap()).contains("line 1 (\"mail\")"));

    let r = admin
        .post(
            &app,
            "/admin/saml/service-providers",
            &[
                ("mode", "register"),
                ("entity_id", WIKI),
                ("name", "Team wiki"),
                ("acs_urls", &format!("{WIKI_ACS}\n")),
                ("name_id", "email"),
                ("attributes", "mail = email\r\ngivenName = firstname"),
            ],
        )
        .await;
    assert_eq!(r.status(), 303);
    let (_, page) = admin.get(&app, "/admin/saml").await;
    let page = html_unescape(&page);
    assert!(page.contains("Team wiki is registered"), "{page}");
    assert!(page.contains("by admin:root"), "{page}");
    assert_eq!(
        wiki_sign_in(&app).await.unwrap(),
        (EMAIL.to_string(), vec!["givenName".into(), "mail".into()])
    );

    // Edit: the form opens with the stored values, the entity ID read-only.
    let edit = format!(
        "/admin/saml?edit={}",
        url::form_urlencoded::byte_serialize(WIKI.as_bytes()).collect::<String>()
    );
    assert!(page.contains(&format!("href=\"{edit}#sp-form\"")), "{page}");
    let (_, form) = admin.get(&app, &edit).await;
    let form = html_unescape(&form);
    assert!(form.contains("value=\"change\""), "{form}");
    assert!(
        form.contains("mail = email\ngivenName = firstname"),
        "{form}"
    );
    let r = admin
        .post(
            &app,
            "/admin/saml/service-providers",
            &[
                ("mode", "change"),
                ("entity_id", WIKI),
                ("acs_urls", WIKI_ACS),
                ("name_id", "username"),
            ],
        )
        .await;
    assert_eq!(r.status(), 303);
    assert_eq!(
        wiki_sign_in(&app).await.unwrap(),
        (USERNAME.to_string(), vec![])
    );

    // The file's entry cannot be changed here.
    let r = admin
        .post(
            &app,
            "/admin/saml/service-providers/remove",
            &[("entity_id", "https://files.example.com")],
        )
        .await;
    assert_eq!(r.status(), 409);
    assert!(r.text().await.unwrap().contains("idbridge.toml"));

    let r = admin
        .post(
            &app,
            "/admin/saml/service-providers/remove",
            &[("entity_id", WIKI)],
        )
        .await;
    assert_eq!(r.status(), 303);
    assert!(wiki_sign_in(&app).await.is_err());

    // A read-only admin sees the list but no form.
    let reader = admin_browser(&app, "auditor", AdminRole::ReadOnly).await;
    let (_, page) = reader.get(&app, "/admin/saml").await;
    assert!(!page.contains("id=\"sp-form\""));
}

#[tokio::test]
async fn another_node_uses_a_registration_within_seconds() {
    if !TestApp::on_postgres() {
        eprintln!("several nodes need PostgreSQL (TEST_POSTGRES_URL); scripts/test runs it there");
        return;
    }
    let a = TestApp::spawn_with(&format!("node_name = \"node-a\"\n{}", issuer_config())).await;
    let b = a.spawn_node("node-b", &issuer_config()).await;
    a.create_user(USERNAME, EMAIL, PASSWORD).await;
    let client = api_client(&api_key(&a, "ops", AdminRole::Admin).await);
    let (status, body) = send(
        &client,
        reqwest::Method::POST,
        a.url("/api/v1/saml/service-providers"),
        Some(json!({"entityId": WIKI, "acsUrls": [WIKI_ACS], "nameId": "email"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    eventually("node B knows the wiki", || async {
        b.state().idp.service_providers().get(WIKI).map(|_| ())
    })
    .await;
    assert_eq!(wiki_sign_in(&b).await.unwrap().0, EMAIL);
}
