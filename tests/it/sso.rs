//! The SAML 2.0 identity provider end to end: the real server, a browser-like client, and
//! independent verifiers (pysaml2 configured as Microsoft 365, xmlsec1, our own XML checks).

use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration as StdDuration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::{DateTime, Duration, Utc};
use idbridge::directory::{User, UserState};
use idbridge::events::Actor;
use reqwest::StatusCode;
use roxmltree::{Document, Node};

use crate::support::TestApp;

// ---------------------------------------------------------------------------------------------
// Constants of the Microsoft 365 federation
// ---------------------------------------------------------------------------------------------

pub(crate) const M365: &str = "urn:federation:MicrosoftOnline";
pub(crate) const ACS: &str = "https://login.microsoftonline.com/login.srf";
/// Issuer as an admin sets it for a federated domain (compared byte for byte by Entra).
pub(crate) const ISSUER: &str = "https://idp.example.com/saml/contoso.com";
/// Standard base64 with `+` and `=`, as directory sync tools produce immutable IDs.
pub(crate) const IMMUTABLE_ID: &str = "yU+2g8ZoAE2X4a4AAfw+KQ==";
/// Deliberately different from the user's email, so IDPEmail is proven to be the UPN.
pub(crate) const UPN: &str = "alice.smith@contoso.com";
pub(crate) const USERNAME: &str = "alice";
pub(crate) const EMAIL: &str = "alice@contoso.com";
pub(crate) const PASSWORD: &str = "Correct horse 1!";

pub(crate) const NS_ASSERTION: &str = "urn:oasis:names:tc:SAML:2.0:assertion";
const NS_PROTOCOL: &str = "urn:oasis:names:tc:SAML:2.0:protocol";
const NS_METADATA: &str = "urn:oasis:names:tc:SAML:2.0:metadata";
const NS_DSIG: &str = "http://www.w3.org/2000/09/xmldsig#";
const NAMEID_PERSISTENT: &str = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent";
const NAMEID_EMAIL: &str = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress";
const STATUS_SUCCESS: &str = "urn:oasis:names:tc:SAML:2.0:status:Success";
const STATUS_RESPONDER: &str = "urn:oasis:names:tc:SAML:2.0:status:Responder";
const STATUS_NO_PASSIVE: &str = "urn:oasis:names:tc:SAML:2.0:status:NoPassive";
const BINDING_POST: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST";
const BINDING_REDIRECT: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect";
pub(crate) const ASSERTION_ID_ATTR: &str = "urn:oasis:names:tc:SAML:2.0:assertion:Assertion";
const LOGOUT_RESPONSE_ID_ATTR: &str = "urn:oasis:names:tc:SAML:2.0:protocol:LogoutResponse";

pub(crate) const INSTALL_HINT: &str =
    "install the SAML test tools: `apt-get install -y xmlsec1 python3 python3-pip` \
     then `pip install pysaml2 lxml` (pysaml2 pulls in requests)";

// ---------------------------------------------------------------------------------------------
// Setup helpers
// ---------------------------------------------------------------------------------------------

pub(crate) fn issuer_config() -> String {
    format!("[saml]\nissuer = \"{ISSUER}\"\n")
}

/// A server with the configured issuer and one user bound to Microsoft 365.
pub(crate) async fn app_with_bound_user() -> (TestApp, User) {
    let app = TestApp::spawn_with(&issuer_config()).await;
    let user = app.create_user(USERNAME, EMAIL, PASSWORD).await;
    app.bind(&user, IMMUTABLE_ID, UPN).await;
    (app, user)
}

/// A fresh request ID shaped like Microsoft's (`_` + UUID).
pub(crate) fn request_id() -> String {
    let hex = idbridge::saml::new_id();
    let h = &hex[1..];
    format!(
        "_{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn xs_datetime(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// An AuthnRequest exactly like Microsoft's sample, issued now; `extra` adds root attributes.
pub(crate) fn authn_request(id: &str, extra: &str) -> String {
    authn_request_full(id, M365, extra, Utc::now())
}

pub(crate) fn authn_request_full(
    id: &str,
    issuer: &str,
    extra: &str,
    instant: DateTime<Utc>,
) -> String {
    format!(
        r#"<samlp:AuthnRequest ID="{id}" Version="2.0" IssueInstant="{instant}"{extra} xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol"><Issuer xmlns="urn:oasis:names:tc:SAML:2.0:assertion">{issuer}</Issuer><samlp:NameIDPolicy Format="urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"/></samlp:AuthnRequest>"#,
        instant = xs_datetime(instant),
        extra = if extra.is_empty() {
            String::new()
        } else {
            format!(" {extra}")
        },
    )
}

/// A LogoutRequest as Entra sends it over HTTP-Redirect (unsigned).
fn logout_request(id: &str, name_id: &str) -> String {
    logout_request_for(id, name_id, "")
}

/// A LogoutRequest naming a NameID and a SessionIndex (unsigned).
fn logout_request_for(id: &str, name_id: &str, session_index: &str) -> String {
    let index = if session_index.is_empty() {
        String::new()
    } else {
        format!("<samlp:SessionIndex>{session_index}</samlp:SessionIndex>")
    };
    format!(
        r#"<samlp:LogoutRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" ID="{id}" IssueInstant="{now}" Version="2.0"><Issuer xmlns="urn:oasis:names:tc:SAML:2.0:assertion">{M365}</Issuer><NameID xmlns="urn:oasis:names:tc:SAML:2.0:assertion" Format="{NAMEID_PERSISTENT}">{name_id}</NameID>{index}</samlp:LogoutRequest>"#,
        now = xs_datetime(Utc::now()),
    )
}

/// The SessionIndex of the AuthnStatement in a Response.
fn session_index_of(response_xml: &str) -> String {
    let doc = Document::parse(response_xml).unwrap();
    let statement = find(doc.root_element(), NS_ASSERTION, "AuthnStatement");
    attr_of(statement, "SessionIndex").to_string()
}

/// HTTP-Redirect encoding done here with flate2 (not the crate's encoder): raw DEFLATE + base64.
fn deflate_base64(data: &[u8]) -> String {
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).expect("deflate");
    BASE64.encode(encoder.finish().expect("deflate"))
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers
// ---------------------------------------------------------------------------------------------

/// One answer of the server, read completely.
#[derive(Debug)]
pub(crate) struct Page {
    pub(crate) status: StatusCode,
    pub(crate) body: String,
    set_cookies: Vec<String>,
    content_type: String,
    csp: String,
}

impl Page {
    pub(crate) async fn read(response: reqwest::Response) -> Self {
        let status = response.status();
        let set_cookies = response
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap_or_default().to_string())
            .collect();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let csp = response
            .headers()
            .get(reqwest::header::CONTENT_SECURITY_POLICY)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = response.text().await.expect("body");
        Self {
            status,
            body,
            set_cookies,
            content_type,
            csp,
        }
    }

    /// The value a Set-Cookie of this answer gives to `name` (None if not set).
    pub(crate) fn cookie(&self, name: &str) -> Option<String> {
        self.set_cookies.iter().find_map(|c| {
            let (pair, _) = c.split_once(';').unwrap_or((c, ""));
            let (n, v) = pair.split_once('=')?;
            (n.trim() == name).then(|| v.trim().to_string())
        })
    }

    pub(crate) fn forms(&self) -> Vec<Form> {
        forms(&self.body)
    }

    /// The login form of the page; panics with the page when there is none.
    pub(crate) fn login_form(&self) -> Form {
        self.forms()
            .into_iter()
            .find(|f| f.input("password").is_some())
            .unwrap_or_else(|| panic!("no login form ({}): {}", self.status, self.body))
    }

    pub(crate) fn has_login_form(&self) -> bool {
        self.forms().iter().any(|f| f.input("password").is_some())
    }

    pub(crate) fn has_saml_response(&self) -> bool {
        self.body.contains("SAMLResponse")
            || self
                .forms()
                .iter()
                .any(|f| f.input("SAMLResponse").is_some())
    }
}

/// A form of a page: action, method and its inputs (names and HTML-decoded values).
#[derive(Debug, Clone)]
pub(crate) struct Form {
    pub(crate) action: String,
    pub(crate) method: String,
    pub(crate) inputs: Vec<(String, String)>,
}

impl Form {
    pub(crate) fn input(&self, name: &str) -> Option<&str> {
        self.inputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Minimal HTML form scanner for the server's own templates (attributes in double quotes).
pub(crate) fn forms(html: &str) -> Vec<Form> {
    let mut found = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find("<form") {
        let after = &rest[start..];
        let end = after.find("</form>").unwrap_or(after.len());
        let form_html = &after[..end];
        let open_tag = &form_html[..form_html.find('>').unwrap_or(form_html.len())];
        let mut inputs = Vec::new();
        let mut inner = form_html;
        while let Some(i) = inner.find("<input") {
            let tag_end = inner[i..].find('>').map_or(inner.len(), |e| i + e);
            let tag = &inner[i..tag_end];
            if let Some(name) = attr(tag, "name") {
                inputs.push((name, attr(tag, "value").unwrap_or_default()));
            }
            inner = &inner[tag_end..];
        }
        found.push(Form {
            action: attr(open_tag, "action").unwrap_or_default(),
            method: attr(open_tag, "method").unwrap_or_else(|| "get".into()),
            inputs,
        });
        rest = &after[end..];
    }
    found
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let marker = format!(" {name}=\"");
    let start = tag.find(&marker)? + marker.len();
    let end = tag[start..].find('"')? + start;
    Some(html_decode(&tag[start..end]))
}

/// Decodes HTML character references (named ones the templates use, and all numeric ones).
fn html_decode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let tail = &rest[amp..];
        let Some(semi) = tail.find(';').filter(|&i| i <= 10) else {
            out.push('&');
            rest = &tail[1..];
            continue;
        };
        let entity = &tail[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .map(|h| u32::from_str_radix(h, 16))
                .or_else(|| entity.strip_prefix('#').map(|d| d.parse::<u32>()))
                .and_then(|n| n.ok())
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &tail[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Sends an AuthnRequest with the HTTP-POST binding (base64, no deflate), as Microsoft does.
pub(crate) async fn sso_post(
    client: &reqwest::Client,
    app: &TestApp,
    xml: &str,
    relay: Option<&str>,
) -> Page {
    let encoded = BASE64.encode(xml);
    let mut fields = vec![("SAMLRequest", encoded.as_str())];
    fields.extend(relay.map(|r| ("RelayState", r)));
    post_form(client, app, "/saml/sso", &fields).await
}

/// Sends an AuthnRequest with the HTTP-Redirect binding (deflate + base64 in the query).
async fn sso_redirect(
    client: &reqwest::Client,
    app: &TestApp,
    xml: &str,
    relay: Option<&str>,
) -> Page {
    let encoded = deflate_base64(xml.as_bytes());
    let mut query = vec![("SAMLRequest", encoded.as_str())];
    query.extend(relay.map(|r| ("RelayState", r)));
    let response = client
        .get(app.url("/saml/sso"))
        .query(&query)
        .send()
        .await
        .expect("GET /saml/sso");
    Page::read(response).await
}

pub(crate) async fn post_form(
    client: &reqwest::Client,
    app: &TestApp,
    path: &str,
    fields: &[(&str, &str)],
) -> Page {
    let response = client
        .post(app.url(path))
        .form(fields)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    Page::read(response).await
}

/// Fills the login form of `page` and submits it (to the form's own action).
pub(crate) async fn submit_login(
    client: &reqwest::Client,
    app: &TestApp,
    page: &Page,
    username: &str,
    password: &str,
) -> Page {
    let form = page.login_form();
    assert_eq!(form.method, "post", "login form method");
    assert_eq!(form.action, "/saml/login", "login form action");
    let pending = form.input("pending").expect("pending field").to_string();
    assert!(!pending.is_empty(), "pending token is empty");
    post_form(
        client,
        app,
        &form.action,
        &[
            ("pending", &pending),
            ("username", username),
            ("password", password),
        ],
    )
    .await
}

/// The whole browser flow with the POST binding: AuthnRequest, login form, sign-in.
pub(crate) async fn sign_in(
    client: &reqwest::Client,
    app: &TestApp,
    xml: &str,
    relay: Option<&str>,
    username: &str,
) -> Page {
    let page = sso_post(client, app, xml, relay).await;
    assert_eq!(page.status, 200, "AuthnRequest answer: {}", page.body);
    assert!(
        page.has_login_form(),
        "expected the login form: {}",
        page.body
    );
    submit_login(client, app, &page, username, PASSWORD).await
}

/// What the auto-post page sends to the service provider.
#[derive(Debug)]
pub(crate) struct AutoPost {
    pub(crate) action: String,
    /// The decoded SAMLResponse XML.
    pub(crate) xml: String,
    pub(crate) relay_state: Option<String>,
}

pub(crate) fn auto_post(page: &Page) -> AutoPost {
    assert_eq!(
        page.status, 200,
        "expected the auto-post page: {}",
        page.body
    );
    let posts: Vec<Form> = page
        .forms()
        .into_iter()
        .filter(|f| f.input("SAMLResponse").is_some())
        .collect();
    assert_eq!(
        posts.len(),
        1,
        "expected one form with a SAMLResponse: {}",
        page.body
    );
    let form = &posts[0];
    assert_eq!(form.method, "post");
    assert!(
        !page.has_login_form(),
        "an auto-post page must not show a login form"
    );
    let encoded = form.input("SAMLResponse").unwrap();
    let bytes = BASE64
        .decode(encoded)
        .unwrap_or_else(|e| panic!("SAMLResponse is not base64 ({e}): {encoded}"));
    AutoPost {
        action: form.action.clone(),
        xml: String::from_utf8(bytes).expect("SAMLResponse is UTF-8"),
        relay_state: form.input("RelayState").map(str::to_string),
    }
}

/// A client that sends only the given session cookie (to prove what the server remembers).
async fn with_session_cookie(app: &TestApp, token: &str, xml: &str) -> Page {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = client
        .post(app.url("/saml/sso"))
        .header(reqwest::header::COOKIE, format!("idbridge_session={token}"))
        .form(&[("SAMLRequest", BASE64.encode(xml))])
        .send()
        .await
        .unwrap();
    Page::read(response).await
}

async fn metadata(app: &TestApp) -> Page {
    Page::read(reqwest::get(app.url("/saml/metadata")).await.unwrap()).await
}

// ---------------------------------------------------------------------------------------------
// XML helpers
// ---------------------------------------------------------------------------------------------

fn child<'a, 'i>(node: Node<'a, 'i>, ns: &str, name: &str) -> Node<'a, 'i> {
    node.children()
        .find(|c| c.has_tag_name((ns, name)))
        .unwrap_or_else(|| panic!("<{}> has no {name} child", node.tag_name().name()))
}

pub(crate) fn find<'a, 'i>(node: Node<'a, 'i>, ns: &str, name: &str) -> Node<'a, 'i> {
    node.descendants()
        .find(|c| c.has_tag_name((ns, name)))
        .unwrap_or_else(|| panic!("no {name} in the document"))
}

pub(crate) fn attr_of<'a>(node: Node<'a, '_>, name: &str) -> &'a str {
    node.attribute(name)
        .unwrap_or_else(|| panic!("<{}> has no {name} attribute", node.tag_name().name()))
}

fn instant(node: Node<'_, '_>, name: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(attr_of(node, name))
        .unwrap_or_else(|e| panic!("{name} is not an xs:dateTime: {e}"))
        .with_timezone(&Utc)
}

fn assert_near(actual: DateTime<Utc>, expected: DateTime<Utc>, what: &str) {
    let diff = (actual - expected).num_seconds().abs();
    assert!(
        diff <= 15,
        "{what}: {actual} is {diff} s away from {expected}"
    );
}

/// The X509Certificate of the metadata.
fn metadata_certificate(xml: &str) -> String {
    let doc = Document::parse(xml).expect("metadata is XML");
    find(doc.root_element(), NS_DSIG, "X509Certificate")
        .text()
        .expect("certificate text")
        .trim()
        .to_string()
}

/// Base64 of the DER of the PEM certificate file, computed independently of the server.
fn pem_certificate_base64(path: &Path) -> String {
    let pem = std::fs::read_to_string(path).expect("read certificate PEM");
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .map(str::trim)
        .collect();
    let der = BASE64.decode(&body).expect("PEM body is base64");
    assert!(der.len() > 500 && der[0] == 0x30, "not a DER certificate");
    BASE64.encode(der)
}

/// Runs `xmlsec1 --verify`; Ok(()) when the signature is valid, Err(stderr) otherwise.
pub(crate) fn xmlsec_verify(xml: &str, cert: &Path, id_attr: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let doc = dir.path().join("message.xml");
    std::fs::write(&doc, xml).expect("write xml");
    let out = Command::new("xmlsec1")
        .arg("--verify")
        .arg("--pubkey-cert-pem")
        .arg(cert)
        .arg("--id-attr:ID")
        .arg(id_attr)
        .arg(&doc)
        .output()
        .unwrap_or_else(|e| panic!("cannot run xmlsec1 ({e}); {INSTALL_HINT}"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // "OK"/"FAIL" means xmlsec1 got as far as checking; anything else is a setup problem.
    assert!(
        stderr.lines().any(|l| l == "OK" || l == "FAIL"),
        "xmlsec1 did not reach a verdict (status {}): {stderr}",
        out.status
    );
    if out.status.success() {
        Ok(())
    } else {
        Err(stderr)
    }
}

// ---------------------------------------------------------------------------------------------
// Event helpers
// ---------------------------------------------------------------------------------------------

pub(crate) fn details(event: &idbridge::store::EventRow) -> serde_json::Value {
    serde_json::from_str(&event.details).expect("event details are JSON")
}

/// Reasons of the `sso_access_refused` events, newest first.
pub(crate) async fn refusal_reasons(app: &TestApp) -> Vec<String> {
    app.events("sso_access_refused")
        .await
        .iter()
        .map(|e| {
            details(e)["reason"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

async fn rejected_count(app: &TestApp) -> usize {
    app.events("saml_request_rejected").await.len()
}

/// Asserts a 400 page with a `saml_request_rejected` event whose reason mentions `reason`.
async fn assert_rejected(app: &TestApp, page: &Page, before: usize, reason: &str) {
    assert_eq!(
        page.status, 400,
        "expected 400 for {reason:?}: {}",
        page.body
    );
    assert!(
        page.body.contains("request cannot be used"),
        "{}",
        page.body
    );
    assert!(
        !page.has_saml_response(),
        "a rejected request got a SAMLResponse: {}",
        page.body
    );
    assert!(
        !page.has_login_form(),
        "a rejected request got a login form"
    );
    let events = app.events("saml_request_rejected").await;
    assert_eq!(
        events.len(),
        before + 1,
        "one saml_request_rejected event for {reason:?}"
    );
    let got = details(&events[0])["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        got.contains(reason),
        "event reason {got:?} should mention {reason:?}"
    );
}

/// Asserts the refusal page: 403, why, whom to ask, and nothing for Microsoft.
pub(crate) fn assert_refusal_page(page: &Page, why: &str) {
    assert_eq!(page.status, 403, "expected a refusal page: {}", page.body);
    // It does not confirm a guessed password, and gives a reference and time to quote.
    assert!(
        !page.body.contains("correctly"),
        "the refusal must not confirm the password: {}",
        page.body
    );
    assert!(
        page.body.contains("Reference: <code>R-") && page.body.contains(" UTC</code>"),
        "a reference and time to quote: {}",
        page.body
    );
    assert!(
        page.body.contains(why),
        "the page should say {why:?}: {}",
        page.body
    );
    assert!(
        page.body.contains("your IT administrator"),
        "the page should say whom to ask: {}",
        page.body
    );
    assert!(
        !page.body.contains("login.microsoftonline.com"),
        "a refusal must not post to Microsoft"
    );
    assert!(
        !page.has_saml_response(),
        "a refusal must carry no SAMLResponse"
    );
    assert!(
        page.forms().is_empty(),
        "a refusal page has no form: {}",
        page.body
    );
}

// =============================================================================================
// 1. The Microsoft 365 flow, validated by pysaml2 configured as Microsoft's SP
// =============================================================================================

pub(crate) fn run_m365_sp(args: Vec<String>) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sp/m365_sp.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(&args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}); {INSTALL_HINT}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => {}
        Some(3) => panic!("the SP test tools are missing: {stderr}\n{INSTALL_HINT}"),
        _ => panic!(
            "the pysaml2 SP rejected the flow (status {}):\n{stderr}\n{stdout}",
            out.status
        ),
    }
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("SP output is not JSON ({e}): {stdout}"))
}

#[tokio::test]
async fn m365_flow_is_accepted_by_pysaml2_configured_as_microsoft() {
    let (app, _) = app_with_bound_user().await;
    let relay = "https://portal.office.com/landing?a=1&b=<two>&c=\"3\"";
    let args = vec![
        app.base_url.clone(),
        USERNAME.to_string(),
        PASSWORD.to_string(),
        "--relay-state".to_string(),
        relay.to_string(),
    ];
    let result = tokio::task::spawn_blocking(move || run_m365_sp(args))
        .await
        .expect("SP script thread");

    assert_eq!(
        result["name_id"], IMMUTABLE_ID,
        "NameID must be the immutable ID exactly"
    );
    assert_eq!(result["name_id_format"], NAMEID_PERSISTENT);
    assert_eq!(
        result["idp_email"],
        serde_json::json!([UPN]),
        "IDPEmail must be the UPN"
    );
    assert_eq!(result["issuer"], ISSUER, "assertion Issuer byte for byte");
    assert_eq!(
        result["response_issuer"], ISSUER,
        "response Issuer byte for byte"
    );
    assert_eq!(result["in_response_to"], result["request_id"]);
    assert_eq!(
        result["relay_state"], relay,
        "RelayState returned unchanged"
    );
    assert_eq!(result["acs"], ACS);
    assert_eq!(result["audience"], serde_json::json!([M365]));
    assert_eq!(app.events("sso_assertion_issued").await.len(), 1);
}

#[tokio::test]
async fn m365_refusal_is_a_page_not_a_response_for_pysaml2_flow() {
    // The same script, for an unbound user: the login answer is a 403 without SAMLResponse.
    let app = TestApp::spawn_with(&issuer_config()).await;
    app.create_user(USERNAME, EMAIL, PASSWORD).await;
    let args = vec![
        app.base_url.clone(),
        USERNAME.to_string(),
        PASSWORD.to_string(),
        "--expect-status".to_string(),
        "403".to_string(),
    ];
    let result = tokio::task::spawn_blocking(move || run_m365_sp(args))
        .await
        .expect("SP script thread");
    assert_eq!(result["status"], 403);
    assert_eq!(refusal_reasons(&app).await, ["not_bound_to_m365"]);
}

// =============================================================================================
// 2. xmlsec1 and every field Microsoft checks
// =============================================================================================

#[tokio::test]
async fn response_fields_signature_and_auto_post_page() {
    let (app, _) = app_with_bound_user().await;
    let browser = app.browser();
    let id = request_id();
    let relay = r#"https://outlook.office.com/?x=1&y=<b>"q"'s"#;
    let page = sign_in(
        &browser,
        &app,
        &authn_request(&id, ""),
        Some(relay),
        USERNAME,
    )
    .await;
    let now = Utc::now();

    // The auto-post page: to the ACS, RelayState echoed but HTML-escaped.
    let post = auto_post(&page);
    assert_eq!(post.action, ACS);
    assert_eq!(post.relay_state.as_deref(), Some(relay));
    assert!(
        !page.body.contains(relay),
        "RelayState must be HTML-escaped"
    );
    assert!(
        !page.body.contains("<b>") && !page.body.contains(r#""q""#),
        "raw <>\" of the RelayState in the page"
    );
    let session_cookie = page
        .set_cookies
        .iter()
        .find(|c| c.starts_with("idbridge_session="))
        .expect("sign-in sets the session cookie");
    assert!(
        session_cookie.contains("HttpOnly"),
        "session cookie must be HttpOnly: {session_cookie}"
    );

    // xmlsec1 accepts the signature with the server's certificate...
    let xml = &post.xml;
    let cert = app.cert_path();
    if let Err(e) = xmlsec_verify(xml, &cert, ASSERTION_ID_ATTR) {
        panic!("xmlsec1 rejected the signed assertion: {e}\n{xml}");
    }
    // ...and rejects any change to what it signs.
    let name_id_el = format!(">{IMMUTABLE_ID}</saml:NameID>");
    assert!(
        xml.contains(&name_id_el),
        "NameID not found as expected: {xml}"
    );
    let tampered = xml.replace(&name_id_el, &name_id_el.replace("KQ==", "KR=="));
    assert_ne!(&tampered, xml);
    assert!(
        xmlsec_verify(&tampered, &cert, ASSERTION_ID_ATTR).is_err(),
        "tampered NameID verified"
    );
    let email_el = format!(">{UPN}</saml:AttributeValue>");
    assert!(
        xml.contains(&email_el),
        "IDPEmail not found as expected: {xml}"
    );
    let tampered = xml.replace(&email_el, &email_el.replacen("alice", "alicf", 1));
    assert_ne!(&tampered, xml);
    assert!(
        xmlsec_verify(&tampered, &cert, ASSERTION_ID_ATTR).is_err(),
        "tampered IDPEmail verified"
    );

    // Field by field.
    let doc = idbridge::saml::parse_document(xml).expect("response parses");
    let response = doc.root_element();
    assert!(response.has_tag_name((NS_PROTOCOL, "Response")));
    assert_eq!(attr_of(response, "Destination"), ACS);
    assert_eq!(attr_of(response, "InResponseTo"), id);
    assert_eq!(attr_of(response, "Version"), "2.0");
    assert_near(
        instant(response, "IssueInstant"),
        now,
        "Response IssueInstant",
    );
    assert_eq!(child(response, NS_ASSERTION, "Issuer").text(), Some(ISSUER));
    let status = child(
        child(response, NS_PROTOCOL, "Status"),
        NS_PROTOCOL,
        "StatusCode",
    );
    assert_eq!(attr_of(status, "Value"), STATUS_SUCCESS);
    assert!(
        !response
            .children()
            .any(|c| c.has_tag_name((NS_DSIG, "Signature"))),
        "only the Assertion is signed, not the Response"
    );
    let assertions: Vec<_> = response
        .children()
        .filter(|c| c.has_tag_name((NS_ASSERTION, "Assertion")))
        .collect();
    assert_eq!(assertions.len(), 1, "exactly one assertion");
    let assertion = assertions[0];
    assert_eq!(
        response
            .descendants()
            .filter(|n| n.has_tag_name((NS_DSIG, "Signature")))
            .count(),
        1,
        "exactly one signature in the document"
    );

    let kids: Vec<_> = assertion.children().filter(Node::is_element).collect();
    assert!(
        kids[0].has_tag_name((NS_ASSERTION, "Issuer")),
        "Issuer first"
    );
    assert_eq!(kids[0].text(), Some(ISSUER));
    assert!(
        kids[1].has_tag_name((NS_DSIG, "Signature")),
        "Signature right after the Issuer"
    );
    let signature = kids[1];

    let subject = child(assertion, NS_ASSERTION, "Subject");
    let name_id = child(subject, NS_ASSERTION, "NameID");
    assert_eq!(name_id.text(), Some(IMMUTABLE_ID));
    assert_eq!(attr_of(name_id, "Format"), NAMEID_PERSISTENT);
    let confirmation = child(subject, NS_ASSERTION, "SubjectConfirmation");
    assert_eq!(
        attr_of(confirmation, "Method"),
        "urn:oasis:names:tc:SAML:2.0:cm:bearer"
    );
    let data = child(confirmation, NS_ASSERTION, "SubjectConfirmationData");
    assert_eq!(attr_of(data, "Recipient"), ACS);
    assert_eq!(attr_of(data, "InResponseTo"), id);
    assert_near(
        instant(data, "NotOnOrAfter"),
        now + Duration::seconds(300),
        "SubjectConfirmationData NotOnOrAfter",
    );

    let conditions = child(assertion, NS_ASSERTION, "Conditions");
    let not_before = instant(conditions, "NotBefore");
    assert!(
        not_before < now,
        "Conditions NotBefore {not_before} is not in the past"
    );
    assert_near(
        not_before,
        now - Duration::seconds(120),
        "Conditions NotBefore (skew 120 s)",
    );
    assert_near(
        instant(conditions, "NotOnOrAfter"),
        now + Duration::seconds(3600),
        "Conditions NotOnOrAfter",
    );
    let audience = child(
        child(conditions, NS_ASSERTION, "AudienceRestriction"),
        NS_ASSERTION,
        "Audience",
    );
    assert_eq!(audience.text(), Some(M365));

    let authn = child(assertion, NS_ASSERTION, "AuthnStatement");
    assert!(
        !attr_of(authn, "SessionIndex").is_empty(),
        "SessionIndex present"
    );
    assert_near(instant(authn, "AuthnInstant"), now, "AuthnInstant");
    let class_ref = child(
        child(authn, NS_ASSERTION, "AuthnContext"),
        NS_ASSERTION,
        "AuthnContextClassRef",
    );
    assert_eq!(
        class_ref.text(),
        Some("urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport")
    );

    let attribute = child(
        child(assertion, NS_ASSERTION, "AttributeStatement"),
        NS_ASSERTION,
        "Attribute",
    );
    assert_eq!(attr_of(attribute, "Name"), "IDPEmail");
    let values: Vec<_> = attribute
        .children()
        .filter(|c| c.has_tag_name((NS_ASSERTION, "AttributeValue")))
        .map(|c| c.text().unwrap_or_default())
        .collect();
    assert_eq!(values, [UPN]);

    let signed_info = child(signature, NS_DSIG, "SignedInfo");
    assert_eq!(
        attr_of(
            child(signed_info, NS_DSIG, "CanonicalizationMethod"),
            "Algorithm"
        ),
        "http://www.w3.org/2001/10/xml-exc-c14n#"
    );
    assert_eq!(
        attr_of(child(signed_info, NS_DSIG, "SignatureMethod"), "Algorithm"),
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
    );
    let references: Vec<_> = signed_info
        .children()
        .filter(|c| c.has_tag_name((NS_DSIG, "Reference")))
        .collect();
    assert_eq!(references.len(), 1, "one Reference");
    let assertion_id = attr_of(assertion, "ID");
    assert_eq!(attr_of(references[0], "URI"), format!("#{assertion_id}"));
    assert_eq!(
        attr_of(child(references[0], NS_DSIG, "DigestMethod"), "Algorithm"),
        "http://www.w3.org/2001/04/xmlenc#sha256"
    );
    let key_cert = find(
        child(signature, NS_DSIG, "KeyInfo"),
        NS_DSIG,
        "X509Certificate",
    );
    let md = metadata(&app).await;
    assert_eq!(
        key_cert.text().map(str::trim),
        Some(metadata_certificate(&md.body).as_str())
    );

    let response_id = attr_of(response, "ID");
    assert_ne!(response_id, assertion_id);
    for rid in [response_id, assertion_id] {
        assert!(
            rid.starts_with('_') && rid.len() == 33,
            "ID {rid:?} is not _ + 32 chars"
        );
    }
}

// =============================================================================================
// 3. Session reuse, ForceAuthn, IsPassive
// =============================================================================================

#[tokio::test]
async fn an_existing_session_answers_at_once() {
    let (app, _) = app_with_bound_user().await;
    let browser = app.browser();
    let first = sign_in(
        &browser,
        &app,
        &authn_request(&request_id(), ""),
        None,
        USERNAME,
    )
    .await;
    let first_post = auto_post(&first);
    let token = first.cookie("idbridge_session").expect("session cookie");

    let id = request_id();
    let page = sso_post(&browser, &app, &authn_request(&id, ""), Some("again")).await;
    let post = auto_post(&page);
    assert_eq!(post.action, ACS);
    assert_eq!(post.relay_state.as_deref(), Some("again"));
    let doc = Document::parse(&post.xml).unwrap();
    assert_eq!(attr_of(doc.root_element(), "InResponseTo"), id);
    assert_eq!(
        find(doc.root_element(), NS_ASSERTION, "NameID").text(),
        Some(IMMUTABLE_ID)
    );
    // Same session: same SessionIndex as the first assertion.
    let first_doc = Document::parse(&first_post.xml).unwrap();
    assert_eq!(
        attr_of(
            find(doc.root_element(), NS_ASSERTION, "AuthnStatement"),
            "SessionIndex"
        ),
        attr_of(
            find(first_doc.root_element(), NS_ASSERTION, "AuthnStatement"),
            "SessionIndex"
        ),
    );
    if let Err(e) = xmlsec_verify(&post.xml, &app.cert_path(), ASSERTION_ID_ATTR) {
        panic!("session answer does not verify: {e}");
    }
    // The server-side session is what counts, not the client: the bare cookie works too.
    let page = with_session_cookie(&app, &token, &authn_request(&request_id(), "")).await;
    auto_post(&page);
    // And a wrong cookie does not.
    let page =
        with_session_cookie(&app, "0123456789abcdef", &authn_request(&request_id(), "")).await;
    assert!(
        page.has_login_form(),
        "an unknown session token must show the login form"
    );
}

#[tokio::test]
async fn force_authn_shows_the_login_form_despite_a_session() {
    let (app, _) = app_with_bound_user().await;
    let browser = app.browser();
    let first = sign_in(
        &browser,
        &app,
        &authn_request(&request_id(), ""),
        None,
        USERNAME,
    )
    .await;
    auto_post(&first);

    let id = request_id();
    let page = sso_post(
        &browser,
        &app,
        &authn_request(&id, r#"ForceAuthn="true""#),
        None,
    )
    .await;
    assert_eq!(page.status, 200);
    assert!(
        page.has_login_form(),
        "ForceAuthn must ask for the password again: {}",
        page.body
    );
    assert!(!page.has_saml_response());
    let answer = submit_login(&browser, &app, &page, USERNAME, PASSWORD).await;
    let post = auto_post(&answer);
    let doc = Document::parse(&post.xml).unwrap();
    assert_eq!(attr_of(doc.root_element(), "InResponseTo"), id);
    let authn_instant = instant(
        find(doc.root_element(), NS_ASSERTION, "AuthnStatement"),
        "AuthnInstant",
    );
    assert_near(
        authn_instant,
        Utc::now(),
        "a fresh AuthnInstant after ForceAuthn",
    );
}

#[tokio::test]
async fn is_passive_without_session_answers_no_passive() {
    let (app, _) = app_with_bound_user().await;
    let browser = app.browser();
    let id = request_id();
    let page = sso_post(
        &browser,
        &app,
        &authn_request(&id, r#"IsPassive="true""#),
        Some("rs"),
    )
    .await;
    let post = auto_post(&page);
    assert_eq!(post.action, ACS);
    assert_eq!(post.relay_state.as_deref(), Some("rs"));
    let doc = Document::parse(&post.xml).unwrap();
    let response = doc.root_element();
    assert!(response.has_tag_name((NS_PROTOCOL, "Response")));
    assert_eq!(attr_of(response, "InResponseTo"), id);
    assert_eq!(attr_of(response, "Destination"), ACS);
    let top = child(
        child(response, NS_PROTOCOL, "Status"),
        NS_PROTOCOL,
        "StatusCode",
    );
    assert_eq!(attr_of(top, "Value"), STATUS_RESPONDER);
    assert_eq!(
        attr_of(child(top, NS_PROTOCOL, "StatusCode"), "Value"),
        STATUS_NO_PASSIVE
    );
    assert!(
        !response
            .descendants()
            .any(|n| n.has_tag_name((NS_ASSERTION, "Assertion"))),
        "NoPassive carries no assertion"
    );
    assert!(!post.xml.contains(IMMUTABLE_ID));
    assert!(app.events("sso_assertion_issued").await.is_empty());

    // With a session, IsPassive is answered with an assertion.
    let signed_in = sign_in(
        &browser,
        &app,
        &authn_request(&request_id(), ""),
        None,
        USERNAME,
    )
    .await;
    auto_post(&signed_in);
    let page = sso_post(
        &browser,
        &app,
        &authn_request(&request_id(), r#"IsPassive="true""#),
        None,
    )
    .await;
    let post = auto_post(&page);
    assert!(
        post.xml.contains(IMMUTABLE_ID),
        "IsPassive with a session gets an assertion"
    );
}

// =============================================================================================
// 4. HTTP-Redirect binding
// =============================================================================================

#[tokio::test]
async fn redirect_binding_shows_the_login_form_and_completes() {
    let (app, _) = app_with_bound_user().await;
    let browser = app.browser();
    let id = request_id();
    let relay = "a b&c=d/é";
    let page = sso_redirect(&browser, &app, &authn_request(&id, ""), Some(relay)).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("Sign in to continue to Microsoft 365"),
        "{}",
        page.body
    );
    assert!(
        page.cookie("idbridge_browser").is_some(),
        "the login form binds the browser"
    );
    let answer = submit_login(&browser, &app, &page, USERNAME, PASSWORD).await;
    let post = auto_post(&answer);
    assert_eq!(post.action, ACS);
    assert_eq!(post.relay_state.as_deref(), Some(relay));
    let doc = Document::parse(&post.xml).unwrap();
    assert_eq!(attr_of(doc.root_element(), "InResponseTo"), id);
}

// =============================================================================================
// 5. Access refusals
// =============================================================================================

#[tokio::test]
async fn unbound_user_is_refused_for_microsoft_365() {
    let app = TestApp::spawn_with(&issuer_config()).await;
    app.create_user(USERNAME, EMAIL, PASSWORD).await;
    let browser = app.browser();
    let page = sign_in(
        &browser,
        &app,
        &authn_request(&request_id(), ""),
        Some("rs"),
        USERNAME,
    )
    .await;
    assert_refusal_page(&page, "not connected to Microsoft 365");
    assert!(
        page.body.contains("bind your account to Microsoft 365"),
        "{}",
        page.body
    );
    assert_eq!(refusal_reasons(&app).await, ["not_bound_to_m365"]);
    let event = &app.events("sso_access_refused").await[0];
    assert_eq!(event.target.as_deref(), Some(USERNAME));
    assert_eq!(details(event)["serviceProvider"], M365);
    // The reference on the page is the one in the event, for the helpdesk to find.
    let reference = details(event)["reference"].as_str().unwrap().to_string();
    assert!(
        reference.starts_with("R-") && reference.len() == 10,
        "{reference}"
    );
    assert!(page.body.contains(&reference), "{}", page.body);
    assert!(app.events("sso_assertion_issued").await.is_empty());
}

#[tokio::test]
async fn suspended_user_is_refused() {
    let (app, _) = app_with_bound_user().await;
    app.state()
        .directory
        .set_state(&Actor::System, USERNAME, UserState::Suspended, Utc::now())
        .await
        .expect("suspend");
    let browser = app.browser();
    let page = sign_in(
        &browser,
        &app,
        &authn_request(&request_id(), ""),
        None,
        USERNAME,
    )
    .await;
    assert_refusal_page(&page, "suspended");
    assert!(
        page.cookie("idbridge_session").is_none(),
        "a suspended user gets no session"
    );
    assert_eq!(refusal_reasons(&app).await, ["suspended"]);
    assert!(app.events("sso_assertion_issued").await.is_empty());
}

#[tokio::test]
async fn suspension_ends_access_for_an_existing_session() {
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
    let token = page.cookie("idbridge_session").expect("session cookie");
    app.state()
        .directory
        .set_state(&Actor::System, USERNAME, UserState::Suspended, Utc::now())
        .await
        .expect("suspend");

    // Suspension ends the sessions: the next request asks for the password (no assertion)...
    let page = sso_post(&browser, &app, &authn_request(&request_id(), ""), None).await;
    assert!(
        !page.has_saml_response(),
        "a suspended user's session still answered: {}",
        page.body
    );
    assert!(
        page.has_login_form(),
        "expected the login form: {}",
        page.body
    );
    let replayed = with_session_cookie(&app, &token, &authn_request(&request_id(), "")).await;
    assert!(
        !replayed.has_saml_response() && replayed.has_login_form(),
        "old session cookie still works"
    );
    // ...and the correct password is then refused.
    let refused = submit_login(&browser, &app, &page, USERNAME, PASSWORD).await;
    assert_refusal_page(&refused, "suspended");
    assert_eq!(refusal_reasons(&app).await, ["suspended"]);
    assert_eq!(
        app.events("sso_assertion_issued").await.len(),
        1,
        "only the first assertion"
    );
}

#[tokio::test]
async fn a_cached_session_ends_when_the_cli_or_the_server_suspends_the_user() {
    // A sign-in with a session reads no database once its session is cached; every change
    // must still reach it: through this server at once, through the CLI (another process)
    // within the change poll.
    let (app, _) = app_with_bound_user().await;
    let other = app.create_user("bob", "bob@contoso.com", PASSWORD).await;
    app.bind(&other, "Ym9iLWltbXV0YWJsZS1pZA==", "bob@contoso.com")
        .await;
    let alice = app.browser();
    let bob = app.browser();
    for (browser, name) in [(&alice, USERNAME), (&bob, "bob")] {
        let page = sign_in(browser, &app, &authn_request(&request_id(), ""), None, name).await;
        auto_post(&page);
        // Answered from the session, which is now cached.
        let again = sso_post(browser, &app, &authn_request(&request_id(), ""), None).await;
        assert!(again.has_saml_response(), "{}", again.body);
    }

    // Through the server: refused on the very next request.
    app.state()
        .directory
        .set_state(&Actor::System, "bob", UserState::Suspended, Utc::now())
        .await
        .expect("suspend");
    let page = sso_post(&bob, &app, &authn_request(&request_id(), ""), None).await;
    assert!(!page.has_saml_response(), "answered from a stale cache");

    // Alice's session is cached again (the change above dropped the whole cache). The
    // server's own write also reaches the database counter, so the background poll drops
    // the cache once more within its interval: take that poll here, then allow a few
    // rounds in case the background poll lands between two sign-ins.
    app.state().store.poll_changes().await.expect("poll");
    let mut cached = false;
    for _ in 0..10 {
        let (hits_before, _) = app.state().idp.session_cache_stats();
        for _ in 0..2 {
            let page = sso_post(&alice, &app, &authn_request(&request_id(), ""), None).await;
            assert!(page.has_saml_response(), "{}", page.body);
        }
        if app.state().idp.session_cache_stats().0 > hits_before {
            cached = true;
            break;
        }
    }
    assert!(cached, "a second sign-in was never answered from the cache");

    // Through the CLI, which writes the database directly.
    let dir = tempfile::tempdir().unwrap();
    app.cli(dir.path(), &["user", "suspend", USERNAME]).await;
    let deadline = Instant::now() + StdDuration::from_secs(10);
    loop {
        let page = sso_post(&alice, &app, &authn_request(&request_id(), ""), None).await;
        if !page.has_saml_response() {
            assert!(page.has_login_form(), "{}", page.body);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the CLI's suspension never reached the cached session"
        );
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn another_process_s_change_moves_the_change_epoch_only_through_the_poll() {
    // Two store handles on one database stand for the server and the CLI: each counts its own
    // writes at once, and sees the other's only when it polls the database's change counter
    // (kept by triggers), which is what lets the server's session cache trust its entries.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/db.sqlite?mode=rwc", dir.path().display());
    let server = idbridge::store::Store::connect(&url).await.unwrap();
    server.migrate().await.unwrap();
    let cli = idbridge::store::Store::connect(&url).await.unwrap();
    let directory = idbridge::directory::Directory::new(cli.clone(), Default::default());
    let changes = idbridge::directory::UserChanges::new()
        .with(idbridge::directory::Attribute::Username, "carol")
        .with(idbridge::directory::Attribute::Email, "carol@contoso.com")
        .with(idbridge::directory::Attribute::Firstname, "Carol")
        .with(idbridge::directory::Attribute::Lastname, "Jones");
    directory
        .create_user(&Actor::System, &changes, None, Utc::now())
        .await
        .unwrap();
    server.poll_changes().await.unwrap();
    let before = server.change_epoch();
    let cli_before = cli.change_epoch();

    directory
        .set_state(&Actor::System, "carol", UserState::Suspended, Utc::now())
        .await
        .unwrap();
    assert!(
        cli.change_epoch() > cli_before,
        "the writer's own epoch moves at once"
    );
    assert_eq!(server.change_epoch(), before, "not seen before the poll");
    assert!(
        server.poll_changes().await.unwrap(),
        "the poll sees the change"
    );
    assert!(server.change_epoch() > before);
    assert!(!server.poll_changes().await.unwrap(), "and only once");
}

#[tokio::test]
async fn a_live_session_is_refused_once_the_password_expires() {
    // The account is re-checked on every answer, not only at the password prompt.
    let extra = format!("{}\n[password_policy]\nexpiry_days = 30\n", issuer_config());
    let app = TestApp::spawn_with(&extra).await;
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
    auto_post(&page);
    let long_ago = (Utc::now() - Duration::days(31)).timestamp_millis();
    app.store
        .set_password_changed_at(&user.id, long_ago)
        .await
        .expect("backdate password");
    let page = sso_post(&browser, &app, &authn_request(&request_id(), ""), None).await;
    assert_refusal_page(&page, "Your password has expired");
    assert_eq!(refusal_reasons(&app).await, ["password_expired"]);
    assert_eq!(
        details(&app.events("sso_access_refused").await[0])["serviceProvider"],
        M365
    );
    assert_eq!(
        app.events("sso_assertion_issued").await.len(),
        1,
        "only the first assertion"
    );
}

// =============================================================================================
// 6. Wrong password
// =============================================================================================

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_answer() {
    let (app, _) = app_with_bound_user().await;
    let browser = app.browser();
    let page = sso_post(&browser, &app, &authn_request(&request_id(), ""), None).await;
    let wrong = submit_login(&browser, &app, &page, USERNAME, "Wrong horse 1!").await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert!(
        wrong
            .body
            .contains("The username or password is incorrect."),
        "{}",
        wrong.body
    );
    assert!(wrong.has_login_form(), "the login form is shown again");
    assert!(!wrong.has_saml_response());
    assert!(
        wrong.cookie("idbridge_session").is_none(),
        "no session after a wrong password"
    );
    assert_eq!(
        wrong.login_form().input("username"),
        Some(USERNAME),
        "username kept"
    );
    assert_eq!(app.events("sso_login_failed").await.len(), 1);

    let unknown = submit_login(&browser, &app, &wrong, "nobody", "Wrong horse 1!").await;
    assert_eq!(unknown.status, 401);
    assert!(unknown
        .body
        .contains("The username or password is incorrect."));
    assert!(unknown.has_login_form());
    assert!(unknown.cookie("idbridge_session").is_none());
    assert_eq!(app.events("sso_login_failed").await.len(), 2);
    assert!(app.events("sso_login_success").await.is_empty());

    // The retry form works with the right password.
    let ok = submit_login(&browser, &app, &unknown, USERNAME, PASSWORD).await;
    let post = auto_post(&ok);
    assert!(post.xml.contains(IMMUTABLE_ID));
}

// =============================================================================================
// 7. Bad input: a 400 page, a security event, never a SAMLResponse
// =============================================================================================

#[tokio::test]
async fn undecodable_requests_are_rejected() {
    let app = TestApp::spawn_with(&issuer_config()).await;
    let browser = app.browser();

    let before = rejected_count(&app).await;
    let page = post_form(
        &browser,
        &app,
        "/saml/sso",
        &[("SAMLRequest", "not*base64!")],
    )
    .await;
    assert_rejected(&app, &page, before, "base64").await;

    // Without a request (a bookmarked sign-in page): where to start instead, and the event.
    let before = rejected_count(&app).await;
    let page = post_form(&browser, &app, "/saml/sso", &[("RelayState", "x")]).await;
    assert_eq!(page.status, 400);
    assert!(
        page.body.contains("Start from Microsoft 365"),
        "{}",
        page.body
    );
    assert_eq!(rejected_count(&app).await, before + 1);
    let response = browser.get(app.url("/saml/sso")).send().await.unwrap();
    let page = Page::read(response).await;
    assert_eq!(page.status, 400);
    assert!(
        page.body.contains("https://www.office.com") && page.body.contains(&app.url("/")),
        "{}",
        page.body
    );
    assert!(
        !page.body.contains("SAMLRequest"),
        "no jargon: {}",
        page.body
    );
    assert!(!page.has_login_form());
    assert_eq!(rejected_count(&app).await, before + 2);

    // HTTP-Redirect DEFLATE bomb: 10 MB of zeros in a few KB.
    let bomb = deflate_base64(&vec![0u8; 10 * 1024 * 1024]);
    assert!(bomb.len() < 40_000, "bomb is {} bytes", bomb.len());
    let before = rejected_count(&app).await;
    let started = Instant::now();
    let response = browser
        .get(app.url("/saml/sso"))
        .query(&[("SAMLRequest", bomb.as_str())])
        .timeout(StdDuration::from_secs(10))
        .send()
        .await
        .unwrap();
    let page = Page::read(response).await;
    let took = started.elapsed();
    assert_rejected(&app, &page, before, "larger than").await;
    assert!(took < StdDuration::from_secs(3), "the bomb took {took:?}");
}

#[tokio::test]
async fn dtds_and_entities_are_rejected() {
    let app = TestApp::spawn_with(&issuer_config()).await;
    let browser = app.browser();
    let sample = authn_request(&request_id(), "");
    let laughs = format!(
        r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;"><!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>{}"#,
        sample.replace(M365, "&lol3;")
    );
    let xxe = format!(
        r#"<!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>{}"#,
        sample.replace(M365, "&xxe;")
    );
    let lower_case = format!(
        r#"<!doctype r [<!entity x "urn:federation:MicrosoftOnline">]>{}"#,
        sample.replace(M365, "&x;")
    );
    for xml in [laughs, xxe, lower_case] {
        let before = rejected_count(&app).await;
        let page = sso_post(&browser, &app, &xml, None).await;
        assert_rejected(&app, &page, before, "DTD").await;
        assert!(!page.body.contains("root:"), "file contents leaked");
        // The same over the Redirect binding.
        let before = rejected_count(&app).await;
        let page = sso_redirect(&browser, &app, &xml, None).await;
        assert_rejected(&app, &page, before, "DTD").await;
    }
}

#[tokio::test]
async fn requests_from_strangers_or_to_foreign_acs_are_rejected() {
    let app = TestApp::spawn_with(&issuer_config()).await;
    let browser = app.browser();

    let before = rejected_count(&app).await;
    let xml = authn_request_full(&request_id(), "https://evil.example/sp", "", Utc::now());
    let page = sso_post(&browser, &app, &xml, None).await;
    assert_rejected(&app, &page, before, "not registered").await;

    // What the request says is echoed in the page only HTML-escaped.
    let before = rejected_count(&app).await;
    let xml = authn_request_full(
        &request_id(),
        "&lt;script&gt;alert(1)&lt;/script&gt;",
        "",
        Utc::now(),
    );
    let page = sso_post(&browser, &app, &xml, None).await;
    assert_rejected(&app, &page, before, "<script>alert(1)</script>").await;
    assert!(
        !page.body.contains("<script>alert(1)"),
        "reflected XSS: {}",
        page.body
    );

    let before = rejected_count(&app).await;
    let xml = authn_request(
        &request_id(),
        r#"AssertionConsumerServiceURL="https://attacker.example/acs""#,
    );
    let page = sso_post(&browser, &app, &xml, None).await;
    assert_rejected(&app, &page, before, "https://attacker.example/acs").await;
    assert!(!page.forms().iter().any(|f| f.action.contains("attacker")));

    // The registered ACS, requested explicitly, is fine.
    let xml = authn_request(
        &request_id(),
        &format!(r#"AssertionConsumerServiceURL="{ACS}""#),
    );
    let page = sso_post(&browser, &app, &xml, None).await;
    assert!(
        page.has_login_form(),
        "the registered ACS URL is accepted: {}",
        page.body
    );

    let before = rejected_count(&app).await;
    let xml = authn_request(&request_id(), r#"AssertionConsumerServiceIndex="7""#);
    let page = sso_post(&browser, &app, &xml, None).await;
    assert_rejected(&app, &page, before, "index 7").await;

    let before = rejected_count(&app).await;
    let long_relay = "r".repeat(1025);
    let page = sso_post(
        &browser,
        &app,
        &authn_request(&request_id(), ""),
        Some(&long_relay),
    )
    .await;
    assert_rejected(&app, &page, before, "RelayState").await;
    // Exactly at the limit is accepted.
    let page = sso_post(
        &browser,
        &app,
        &authn_request(&request_id(), ""),
        Some(&"r".repeat(1024)),
    )
    .await;
    assert!(page.has_login_form(), "a 1024-byte RelayState is accepted");
}

#[tokio::test]
async fn replayed_stale_and_future_requests_are_rejected() {
    let app = TestApp::spawn_with(&issuer_config()).await;
    let browser = app.browser();

    let xml = authn_request(&request_id(), "");
    let first = sso_post(&browser, &app, &xml, None).await;
    assert!(first.has_login_form(), "{}", first.body);
    let before = rejected_count(&app).await;
    let replay = sso_post(&browser, &app, &xml, None).await;
    assert_rejected(&app, &replay, before, "already used").await;
    // A replay through the other binding is caught too.
    let before = rejected_count(&app).await;
    let replay = sso_redirect(&app.browser(), &app, &xml, None).await;
    assert_rejected(&app, &replay, before, "already used").await;

    let before = rejected_count(&app).await;
    let old = authn_request_full(&request_id(), M365, "", Utc::now() - Duration::hours(1));
    let page = sso_post(&browser, &app, &old, None).await;
    assert_rejected(&app, &page, before, "too long ago").await;

    let before = rejected_count(&app).await;
    let future = authn_request_full(&request_id(), M365, "", Utc::now() + Duration::hours(1));
    let page = sso_post(&browser, &app, &future, None).await;
    assert_rejected(&app, &page, before, "in the future").await;
}

#[tokio::test]
async fn a_request_answered_before_a_restart_is_still_refused_after_it() {
    let app = TestApp::spawn_with(&issuer_config()).await;
    let xml = authn_request(&request_id(), "");
    let first = sso_post(&app.browser(), &app, &xml, None).await;
    assert!(first.has_login_form(), "{}", first.body);
    // The replay cache is written behind on the embedded backend: a graceful stop drains it.
    let dir = app.stop().await;
    let again = TestApp::spawn_in(dir, &issuer_config()).await;
    let before = rejected_count(&again).await;
    let replay = sso_post(&again.browser(), &again, &xml, None).await;
    assert_rejected(&again, &replay, before, "already used").await;
}

#[tokio::test]
async fn over_https_the_cookies_travel_on_microsofts_cross_site_post() {
    let app = TestApp::spawn_with(&format!(
        "base_url = \"https://idp.example.com\"\n{}",
        issuer_config()
    ))
    .await;
    let encoded = BASE64.encode(authn_request(&request_id(), ""));
    let response = reqwest::Client::new()
        .post(app.url("/saml/sso"))
        .form(&[("SAMLRequest", encoded)])
        .send()
        .await
        .unwrap();
    let cookies: Vec<String> = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let browser = cookies
        .iter()
        .find(|c| c.starts_with("idbridge_browser="))
        .expect("browser cookie set");
    for attribute in ["HttpOnly", "Secure", "SameSite=None", "Path=/"] {
        assert!(browser.contains(attribute), "{attribute} in {browser}");
    }
}

#[tokio::test]
async fn two_sign_ins_in_two_tabs_both_complete() {
    let (app, _) = app_with_bound_user().await;
    let browser = app.browser();
    let tab_a = sso_post(&browser, &app, &authn_request(&request_id(), ""), Some("a")).await;
    let tab_b = sso_post(&browser, &app, &authn_request(&request_id(), ""), Some("b")).await;
    assert!(tab_a.has_login_form() && tab_b.has_login_form());
    // Tab A's form is submitted after tab B loaded: it must still be accepted.
    let answered = submit_login(&browser, &app, &tab_a, USERNAME, PASSWORD).await;
    assert!(answered.body.contains("SAMLResponse"), "{}", answered.body);
}

#[tokio::test]
async fn login_form_only_works_in_the_browser_that_got_it() {
    let (app, _) = app_with_bound_user().await;
    let victim = app.browser();
    let page = sso_post(&victim, &app, &authn_request(&request_id(), ""), None).await;
    let pending = page.login_form().input("pending").unwrap().to_string();

    // Another browser (no idbridge_browser cookie) posts the same form: login CSRF.
    let attacker = app.browser();
    let before = rejected_count(&app).await;
    let fields = [
        ("pending", pending.as_str()),
        ("username", USERNAME),
        ("password", PASSWORD),
    ];
    let page = post_form(&attacker, &app, "/saml/login", &fields).await;
    assert_rejected(&app, &page, before, "another browser").await;
    assert!(
        page.cookie("idbridge_session").is_none(),
        "no session for the other browser"
    );
    assert!(
        app.events("sso_login_success").await.is_empty(),
        "the password was not even checked"
    );

    // A made-up pending token is rejected too.
    let before = rejected_count(&app).await;
    let fields = [
        ("pending", "deadbeef"),
        ("username", USERNAME),
        ("password", PASSWORD),
    ];
    let page = post_form(&victim, &app, "/saml/login", &fields).await;
    assert_rejected(&app, &page, before, "expired").await;

    // The real browser still can, once.
    let fields = [
        ("pending", pending.as_str()),
        ("username", USERNAME),
        ("password", PASSWORD),
    ];
    let ok = post_form(&victim, &app, "/saml/login", &fields).await;
    auto_post(&ok);
    let before = rejected_count(&app).await;
    let again = post_form(&victim, &app, "/saml/login", &fields).await;
    assert_eq!(
        again.status, 400,
        "a login form is answered once: {}",
        again.body
    );
    assert!(!again.has_saml_response());
    assert_eq!(rejected_count(&app).await, before + 1);
}

// =============================================================================================
// 8. Single logout
// =============================================================================================

#[tokio::test]
async fn single_logout_ends_the_session_with_a_signed_response() {
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
    let index = session_index_of(&auto_post(&page).xml);
    let token = page.cookie("idbridge_session").expect("session cookie");

    let logout_id = request_id();
    let encoded = deflate_base64(logout_request_for(&logout_id, IMMUTABLE_ID, &index).as_bytes());
    let response = browser
        .get(app.url("/saml/slo"))
        .query(&[("SAMLRequest", encoded.as_str()), ("RelayState", "bye&<x>")])
        .send()
        .await
        .unwrap();
    let page = Page::read(response).await;
    let post = auto_post(&page);
    assert_eq!(post.action, ACS);
    assert_eq!(post.relay_state.as_deref(), Some("bye&<x>"));
    if let Err(e) = xmlsec_verify(&post.xml, &app.cert_path(), LOGOUT_RESPONSE_ID_ATTR) {
        panic!("xmlsec1 rejected the LogoutResponse: {e}\n{}", post.xml);
    }
    let tampered = post.xml.replace(&logout_id, &request_id());
    assert!(xmlsec_verify(&tampered, &app.cert_path(), LOGOUT_RESPONSE_ID_ATTR).is_err());
    let doc = Document::parse(&post.xml).unwrap();
    let root = doc.root_element();
    assert!(root.has_tag_name((NS_PROTOCOL, "LogoutResponse")));
    assert_eq!(attr_of(root, "InResponseTo"), logout_id);
    assert_eq!(attr_of(root, "Destination"), ACS);
    assert_eq!(child(root, NS_ASSERTION, "Issuer").text(), Some(ISSUER));
    let status = child(
        child(root, NS_PROTOCOL, "Status"),
        NS_PROTOCOL,
        "StatusCode",
    );
    assert_eq!(attr_of(status, "Value"), STATUS_SUCCESS);
    let reference = find(root, NS_DSIG, "Reference");
    assert_eq!(
        attr_of(reference, "URI"),
        format!("#{}", attr_of(root, "ID"))
    );
    assert_eq!(app.events("sso_logout").await.len(), 1);

    // The session is over: in this browser, and on the server for the old cookie value.
    let again = sso_post(&browser, &app, &authn_request(&request_id(), ""), None).await;
    assert!(
        again.has_login_form(),
        "after logout the login form appears: {}",
        again.body
    );
    let replayed = with_session_cookie(&app, &token, &authn_request(&request_id(), "")).await;
    assert!(
        replayed.has_login_form(),
        "the old session cookie must be dead on the server"
    );
}

#[tokio::test]
async fn slo_without_request_ends_nothing() {
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

    let response = browser.get(app.url("/saml/slo")).send().await.unwrap();
    let page = Page::read(response).await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("Nothing was signed out"),
        "{}",
        page.body
    );
    assert!(!page.has_saml_response());
    let again = sso_post(&browser, &app, &authn_request(&request_id(), ""), None).await;
    assert!(
        again.has_saml_response(),
        "a bare GET must not end the session: {}",
        again.body
    );

    // A LogoutRequest from an unknown issuer is a bad request.
    let before = rejected_count(&app).await;
    let xml = logout_request(&request_id(), IMMUTABLE_ID).replace(M365, "https://evil.example/sp");
    let encoded = deflate_base64(xml.as_bytes());
    let response = browser
        .get(app.url("/saml/slo"))
        .query(&[("SAMLRequest", encoded.as_str())])
        .send()
        .await
        .unwrap();
    let page = Page::read(response).await;
    assert_rejected(&app, &page, before, "not registered").await;
}

// =============================================================================================
// 9. Metadata
// =============================================================================================

#[tokio::test]
async fn metadata_describes_the_idp() {
    let app = TestApp::spawn_with(&issuer_config()).await;
    let page = metadata(&app).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.content_type, "application/samlmetadata+xml");
    let doc = Document::parse(&page.body).expect("metadata is XML");
    let root = doc.root_element();
    assert!(root.has_tag_name((NS_METADATA, "EntityDescriptor")));
    assert_eq!(attr_of(root, "entityID"), ISSUER);
    let idp = child(root, NS_METADATA, "IDPSSODescriptor");
    let formats: Vec<_> = idp
        .children()
        .filter(|c| c.has_tag_name((NS_METADATA, "NameIDFormat")))
        .map(|c| c.text().unwrap_or_default().trim())
        .collect();
    assert!(formats.contains(&NAMEID_PERSISTENT), "{formats:?}");
    let sso_url = app.url("/saml/sso");
    let mut sso: Vec<_> = idp
        .children()
        .filter(|c| c.has_tag_name((NS_METADATA, "SingleSignOnService")))
        .map(|c| (attr_of(c, "Binding"), attr_of(c, "Location")))
        .collect();
    sso.sort();
    assert_eq!(
        sso,
        [
            (BINDING_POST, sso_url.as_str()),
            (BINDING_REDIRECT, sso_url.as_str())
        ]
    );
    let slo = idp
        .children()
        .find(|c| c.has_tag_name((NS_METADATA, "SingleLogoutService")))
        .expect("SingleLogoutService");
    assert_eq!(attr_of(slo, "Location"), app.url("/saml/slo"));
    let key = child(idp, NS_METADATA, "KeyDescriptor");
    assert_eq!(attr_of(key, "use"), "signing");
    assert_eq!(
        metadata_certificate(&page.body),
        pem_certificate_base64(&app.cert_path())
    );
}

// =============================================================================================
// 10. Another service provider from config
// =============================================================================================

const WIKI: &str = "https://wiki.example.com/saml";
const WIKI_ACS: &str = "https://wiki.example.com/saml/acs";
const WIKI_ACS2: &str = "https://wiki.example.com/saml/acs2";

fn wiki_config() -> String {
    format!(
        "{}\n[[saml.service_providers]]\nentity_id = \"{WIKI}\"\nname = \"Team wiki\"\n\
         acs_urls = [\"{WIKI_ACS}\", \"{WIKI_ACS2}\"]\nname_id = \"email\"\n\
         attributes = {{ mail = \"email\", givenName = \"firstname\" }}\n",
        issuer_config()
    )
}

#[tokio::test]
async fn configured_sp_gets_email_name_id_and_attributes_without_binding() {
    let app = TestApp::spawn_with(&wiki_config()).await;
    app.create_user(USERNAME, EMAIL, PASSWORD).await; // not bound to Microsoft 365
    let browser = app.browser();
    let id = request_id();
    let xml = authn_request_full(&id, WIKI, "", Utc::now());
    let page = sso_post(&browser, &app, &xml, Some("wiki-rs")).await;
    assert!(page.body.contains("Team wiki"), "{}", page.body);
    let answer = submit_login(&browser, &app, &page, USERNAME, PASSWORD).await;
    let post = auto_post(&answer);
    assert_eq!(
        post.action, WIKI_ACS,
        "the first registered ACS is the default"
    );
    assert_eq!(post.relay_state.as_deref(), Some("wiki-rs"));
    if let Err(e) = xmlsec_verify(&post.xml, &app.cert_path(), ASSERTION_ID_ATTR) {
        panic!("xmlsec1 rejected the wiki assertion: {e}");
    }
    let doc = Document::parse(&post.xml).unwrap();
    let response = doc.root_element();
    assert_eq!(attr_of(response, "Destination"), WIKI_ACS);
    assert_eq!(attr_of(response, "InResponseTo"), id);
    let name_id = find(response, NS_ASSERTION, "NameID");
    assert_eq!(name_id.text(), Some(EMAIL));
    assert_eq!(attr_of(name_id, "Format"), NAMEID_EMAIL);
    assert_eq!(find(response, NS_ASSERTION, "Audience").text(), Some(WIKI));
    assert_eq!(
        attr_of(
            find(response, NS_ASSERTION, "SubjectConfirmationData"),
            "Recipient"
        ),
        WIKI_ACS
    );
    let mut attributes: Vec<(String, Vec<String>)> = response
        .descendants()
        .filter(|n| n.has_tag_name((NS_ASSERTION, "Attribute")))
        .map(|a| {
            let values = a
                .children()
                .filter(|c| c.has_tag_name((NS_ASSERTION, "AttributeValue")))
                .map(|c| c.text().unwrap_or_default().to_string())
                .collect();
            (attr_of(a, "Name").to_string(), values)
        })
        .collect();
    attributes.sort();
    assert_eq!(
        attributes,
        [
            ("givenName".to_string(), vec!["Test".to_string()]),
            ("mail".to_string(), vec![EMAIL.to_string()]),
        ]
    );
    assert!(!post.xml.contains("IDPEmail"));
    assert!(refusal_reasons(&app).await.is_empty());

    // The same unbound user is still refused by Microsoft 365 (session reused, then refused).
    let page = sso_post(&browser, &app, &authn_request(&request_id(), ""), None).await;
    assert_refusal_page(&page, "not connected to Microsoft 365");
}

#[tokio::test]
async fn configured_sp_acs_from_the_request_is_used_only_when_registered() {
    let app = TestApp::spawn_with(&wiki_config()).await;
    app.create_user(USERNAME, EMAIL, PASSWORD).await;
    let browser = app.browser();

    let id = request_id();
    let extra =
        format!(r#"AssertionConsumerServiceURL="{WIKI_ACS2}" ProtocolBinding="{BINDING_POST}""#);
    let xml = authn_request_full(&id, WIKI, &extra, Utc::now());
    let page = sso_post(&browser, &app, &xml, None).await;
    let answer = submit_login(&browser, &app, &page, USERNAME, PASSWORD).await;
    let post = auto_post(&answer);
    assert_eq!(
        post.action, WIKI_ACS2,
        "a registered ACS from the request is honoured"
    );
    let doc = Document::parse(&post.xml).unwrap();
    assert_eq!(attr_of(doc.root_element(), "Destination"), WIKI_ACS2);
    assert_eq!(
        attr_of(
            find(doc.root_element(), NS_ASSERTION, "SubjectConfirmationData"),
            "Recipient"
        ),
        WIKI_ACS2
    );

    // By index too (session reused).
    let xml = authn_request_full(
        &request_id(),
        WIKI,
        r#"AssertionConsumerServiceIndex="1""#,
        Utc::now(),
    );
    let post = auto_post(&sso_post(&browser, &app, &xml, None).await);
    assert_eq!(post.action, WIKI_ACS2);

    // An unregistered one is refused even with a session.
    let before = rejected_count(&app).await;
    let extra = r#"AssertionConsumerServiceURL="https://attacker.example/acs""#;
    let xml = authn_request_full(&request_id(), WIKI, extra, Utc::now());
    let page = sso_post(&browser, &app, &xml, None).await;
    assert_rejected(&app, &page, before, "https://attacker.example/acs").await;
    // Microsoft 365's ACS is not the wiki's either.
    let before = rejected_count(&app).await;
    let xml = authn_request_full(
        &request_id(),
        WIKI,
        &format!(r#"AssertionConsumerServiceURL="{ACS}""#),
        Utc::now(),
    );
    let page = sso_post(&browser, &app, &xml, None).await;
    assert_rejected(&app, &page, before, "login.srf").await;
    // Only HTTP-POST responses are supported.
    let before = rejected_count(&app).await;
    let extra = format!(r#"ProtocolBinding="{BINDING_REDIRECT}""#);
    let xml = authn_request_full(&request_id(), WIKI, &extra, Utc::now());
    let page = sso_post(&browser, &app, &xml, None).await;
    assert_rejected(&app, &page, before, "HTTP-POST").await;
}

// =============================================================================================
// Per-domain issuers (tenants with several federated domains)
// =============================================================================================

#[tokio::test]
async fn users_of_a_domain_with_its_own_issuer_get_that_issuer() {
    let fabrikam_issuer = "https://idp.example.com/saml/fabrikam.com";
    let extra = format!(
        "{}[saml.domain_issuers]\n\"Fabrikam.com\" = \"{fabrikam_issuer}\"\n",
        issuer_config()
    );
    let app = TestApp::spawn_with(&extra).await;
    let bob = app.create_user("bob", "bob@fabrikam.com", PASSWORD).await;
    app.bind(&bob, "Ym9iMDAwMDAwMDAwMDAwMA==", "bob@FABRIKAM.com")
        .await;
    let alice = app.create_user(USERNAME, EMAIL, PASSWORD).await;
    app.bind(&alice, IMMUTABLE_ID, UPN).await;

    for (username, issuer) in [("bob", fabrikam_issuer), (USERNAME, ISSUER)] {
        let browser = app.browser();
        let page = sign_in(
            &browser,
            &app,
            &authn_request(&request_id(), ""),
            None,
            username,
        )
        .await;
        let post = auto_post(&page);
        if let Err(e) = xmlsec_verify(&post.xml, &app.cert_path(), ASSERTION_ID_ATTR) {
            panic!("xmlsec1 rejected {username}'s assertion: {e}");
        }
        let doc = Document::parse(&post.xml).unwrap();
        let response = doc.root_element();
        assert_eq!(
            child(response, NS_ASSERTION, "Issuer").text(),
            Some(issuer),
            "{username}"
        );
        let assertion = child(response, NS_ASSERTION, "Assertion");
        assert_eq!(
            child(assertion, NS_ASSERTION, "Issuer").text(),
            Some(issuer),
            "{username}"
        );
    }
}

/// `'sha256-…'` of the text inside the first `<tag>…</tag>` of `html`.
fn inline_hash(html: &str, tag: &str) -> String {
    let inner = html
        .split_once(&format!("<{tag}>"))
        .and_then(|(_, rest)| rest.split_once(&format!("</{tag}>")))
        .map(|(inner, _)| inner)
        .unwrap_or_else(|| panic!("no <{tag}> in {html}"));
    format!(
        "'sha256-{}'",
        BASE64.encode(openssl::sha::sha256(inner.as_bytes()))
    )
}

#[tokio::test]
async fn sign_in_and_auto_post_pages_carry_a_csp_allowing_only_their_own_inline_code() {
    let (app, _) = app_with_bound_user().await;
    let browser = app.browser();
    let login = sso_post(&browser, &app, &authn_request(&request_id(), ""), None).await;
    assert_eq!(login.status, 200, "{}", login.body);
    assert!(
        login.csp.contains("default-src 'none'"),
        "sign-in page CSP: {:?}",
        login.csp
    );
    assert!(
        login.csp.contains("frame-ancestors 'none'"),
        "{}",
        login.csp
    );
    assert!(
        login.csp.contains(&inline_hash(&login.body, "style")),
        "{}",
        login.csp
    );
    assert!(!login.csp.contains("unsafe-inline"), "{}", login.csp);
    let post = submit_login(&browser, &app, &login, USERNAME, PASSWORD).await;
    assert!(
        post.body.contains("<script>"),
        "the auto-post page: {}",
        post.body
    );
    assert!(
        post.csp.contains(&inline_hash(&post.body, "script")),
        "auto-post CSP: {:?}",
        post.csp
    );
    assert!(
        !post.csp.contains("form-action"),
        "the form posts to the SP's ACS: {}",
        post.csp
    );
    auto_post(&post);
}

// =============================================================================================
// Issue 11 item 3: one Response per AuthnRequest
// =============================================================================================

/// Posts the login form of `page` with a given password and a given pending token.
async fn submit_with_pending(
    client: &reqwest::Client,
    app: &TestApp,
    pending: &str,
    password: &str,
) -> Page {
    post_form(
        client,
        app,
        "/saml/login",
        &[
            ("pending", pending),
            ("username", USERNAME),
            ("password", password),
        ],
    )
    .await
}

#[tokio::test]
async fn wrong_password_then_right_password_answers_the_request_once() {
    let (app, _) = app_with_bound_user().await;
    let browser = app.browser();
    let id = request_id();
    let page = sso_post(&browser, &app, &authn_request(&id, ""), None).await;
    let first = page.login_form().input("pending").unwrap().to_string();
    let wrong = submit_with_pending(&browser, &app, &first, "Wrong horse 1!").await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    let retry = wrong.login_form().input("pending").unwrap().to_string();

    // The retry form signs in and gets the one Response.
    let ok = submit_with_pending(&browser, &app, &retry, PASSWORD).await;
    let post = auto_post(&ok);
    assert!(post.xml.contains(&id));

    // Neither the first form (back button) nor the retry form answers again.
    for token in [first.as_str(), retry.as_str()] {
        let again = submit_with_pending(&browser, &app, token, PASSWORD).await;
        assert!(
            !again.has_saml_response(),
            "a second Response for the same AuthnRequest: {}",
            again.body
        );
    }
    assert_eq!(app.events("sso_assertion_issued").await.len(), 1);
}

#[tokio::test]
async fn two_tabs_completing_the_same_request_get_one_response() {
    let (app, _) = app_with_bound_user().await;
    let browser = app.browser();
    let page = sso_post(&browser, &app, &authn_request(&request_id(), ""), None).await;
    let pending = page.login_form().input("pending").unwrap().to_string();
    let (a, b) = tokio::join!(
        submit_with_pending(&browser, &app, &pending, PASSWORD),
        submit_with_pending(&browser, &app, &pending, PASSWORD),
    );
    let responses = [&a, &b].iter().filter(|p| p.has_saml_response()).count();
    assert_eq!(responses, 1, "{}\n---\n{}", a.body, b.body);
}

// =============================================================================================
// Issue 11 item 4: a LogoutRequest ends only the session it names
// =============================================================================================

#[tokio::test]
async fn unsigned_logout_for_another_name_id_or_session_index_ends_nothing() {
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
    let index = session_index_of(&auto_post(&page).xml);
    for xml in [
        logout_request_for(&request_id(), "someone-else", &index),
        logout_request_for(&request_id(), IMMUTABLE_ID, "_not-this-session"),
        logout_request(&request_id(), IMMUTABLE_ID),
    ] {
        let encoded = deflate_base64(xml.as_bytes());
        let response = browser
            .get(app.url("/saml/slo"))
            .query(&[("SAMLRequest", encoded.as_str())])
            .send()
            .await
            .unwrap();
        let refused = Page::read(response).await;
        assert!(!refused.has_saml_response(), "{}", refused.body);
        let again = sso_post(&browser, &app, &authn_request(&request_id(), ""), None).await;
        assert!(
            again.has_saml_response(),
            "the session must survive {xml}: {}",
            again.body
        );
    }
    assert_eq!(app.events("saml_logout_refused").await.len(), 3);
    assert!(app.events("sso_logout").await.is_empty());
}

// =============================================================================================
// Issue 11: where the SP's certificate is known, its LogoutRequests must be signed
// =============================================================================================

const WIKI_SLO: &str = "https://wiki.example.com/saml/slo";
const RSA_SHA256: &str = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256";
const RSA_SHA1: &str = "http://www.w3.org/2000/09/xmldsig#rsa-sha1";
const LOGOUT_REQUEST_ID_ATTR: &str = "urn:oasis:names:tc:SAML:2.0:protocol:LogoutRequest";

/// A service provider's signing key and certificate, generated with OpenSSL, in files.
struct SpKey {
    dir: tempfile::TempDir,
    credential: idbridge::saml::SigningCredential,
    key: openssl::pkey::PKey<openssl::pkey::Private>,
}

impl SpKey {
    fn new(name: &str) -> Self {
        let (credential, key_pem, cert_pem) =
            idbridge::saml::SigningCredential::generate(2048, name, 30).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("sp.key"), &key_pem).unwrap();
        std::fs::write(dir.path().join("sp.crt"), &cert_pem).unwrap();
        let key = openssl::pkey::PKey::private_key_from_pem(&key_pem).unwrap();
        Self {
            dir,
            credential,
            key,
        }
    }
    fn key_path(&self) -> std::path::PathBuf {
        self.dir.path().join("sp.key")
    }
    fn cert_path(&self) -> std::path::PathBuf {
        self.dir.path().join("sp.crt")
    }
}

/// The wiki SP with a logout URL and its certificate configured.
fn signed_wiki_config(sp: &SpKey) -> String {
    format!(
        "{}slo_url = \"{WIKI_SLO}\"\ncertificate_file = \"{}\"\n",
        wiki_config(),
        sp.cert_path().display()
    )
}

/// An unsigned LogoutRequest from `issuer` (several lines, a default namespace: not canonical).
fn sp_logout(issuer: &str, id: &str, name_id: &str, index: &str) -> String {
    format!(
        "<samlp:LogoutRequest xmlns:samlp=\"{NS_PROTOCOL}\" ID=\"{id}\" Version=\"2.0\" IssueInstant=\"{now}\">\n  <Issuer xmlns=\"{NS_ASSERTION}\">{issuer}</Issuer>\n  <NameID xmlns=\"{NS_ASSERTION}\" Format=\"{NAMEID_EMAIL}\">{name_id}</NameID>\n  <samlp:SessionIndex>{index}</samlp:SessionIndex>\n</samlp:LogoutRequest>",
        now = xs_datetime(Utc::now()),
    )
}

fn form_encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// An HTTP-Redirect query signed per SAML bindings §3.4.4.1 with OpenSSL directly: RSA over
/// `SAMLRequest=…&RelayState=…&SigAlg=…` as sent.
fn signed_query(xml: &str, relay: Option<&str>, sig_alg: &str, key: &SpKey) -> String {
    let mut query = format!(
        "SAMLRequest={}",
        form_encode(&deflate_base64(xml.as_bytes()))
    );
    if let Some(relay) = relay {
        query.push_str(&format!("&RelayState={}", form_encode(relay)));
    }
    query.push_str(&format!("&SigAlg={}", form_encode(sig_alg)));
    let digest = if sig_alg == RSA_SHA1 {
        openssl::hash::MessageDigest::sha1()
    } else {
        openssl::hash::MessageDigest::sha256()
    };
    let mut signer = openssl::sign::Signer::new(digest, &key.key).unwrap();
    signer.update(query.as_bytes()).unwrap();
    let signature = BASE64.encode(signer.sign_to_vec().unwrap());
    format!("{query}&Signature={}", form_encode(&signature))
}

/// `sp_logout` with an enveloped signature made by `xmlsec1 --sign` from a template: an
/// independent signer, so our verifier is not only checked against our own signer.
fn xmlsec_signed_logout(id: &str, name_id: &str, index: &str, key: &SpKey) -> String {
    let unsigned = sp_logout(WIKI, id, name_id, index);
    let template = unsigned.replacen(
        "</Issuer>\n",
        &format!(
            "</Issuer>\n  <ds:Signature xmlns:ds=\"{NS_DSIG}\">\n    <ds:SignedInfo>\n      <ds:CanonicalizationMethod Algorithm=\"http://www.w3.org/2001/10/xml-exc-c14n#\"/>\n      <ds:SignatureMethod Algorithm=\"{RSA_SHA256}\"/>\n      <ds:Reference URI=\"#{id}\">\n        <ds:Transforms>\n          <ds:Transform Algorithm=\"http://www.w3.org/2000/09/xmldsig#enveloped-signature\"/>\n          <ds:Transform Algorithm=\"http://www.w3.org/2001/10/xml-exc-c14n#\"/>\n        </ds:Transforms>\n        <ds:DigestMethod Algorithm=\"http://www.w3.org/2001/04/xmlenc#sha256\"/>\n        <ds:DigestValue/>\n      </ds:Reference>\n    </ds:SignedInfo>\n    <ds:SignatureValue/>\n  </ds:Signature>\n"
        ),
        1,
    );
    xmlsec_sign(&template, LOGOUT_REQUEST_ID_ATTR, key)
}

/// A LogoutRequest from the wiki signed by idbridge's own enveloped signer with the SP's key.
fn our_signed_logout(id: &str, name_id: &str, index: &str, key: &SpKey) -> String {
    use idbridge::saml::xml::XmlWriter;
    let now = xs_datetime(Utc::now());
    let mut w = XmlWriter::new();
    let mut at = 0;
    w.element(
        "samlp:LogoutRequest",
        &[
            ("xmlns:samlp", NS_PROTOCOL),
            ("ID", id),
            ("IssueInstant", &now),
            ("Version", "2.0"),
        ],
        |w| {
            w.leaf("saml:Issuer", &[("xmlns:saml", NS_ASSERTION)], WIKI)?;
            at = w.offset();
            w.leaf(
                "saml:NameID",
                &[("xmlns:saml", NS_ASSERTION), ("Format", NAMEID_EMAIL)],
                name_id,
            )?;
            w.leaf("samlp:SessionIndex", &[], index)
        },
    )
    .unwrap();
    idbridge::saml::signing::sign_enveloped(
        &w.into_string(),
        id,
        at,
        &key.credential,
        idbridge::saml::SignatureAlgorithm::RsaSha256,
    )
    .unwrap()
}

async fn slo_get(browser: &reqwest::Client, app: &TestApp, query: &str) -> Page {
    let url = format!("{}?{query}", app.url("/saml/slo"));
    Page::read(browser.get(url).send().await.unwrap()).await
}

async fn slo_post(browser: &reqwest::Client, app: &TestApp, xml: &str) -> Page {
    let encoded = BASE64.encode(xml);
    post_form(browser, app, "/saml/slo", &[("SAMLRequest", &encoded)]).await
}

/// Signs in to the wiki in `browser`; returns the session's SessionIndex.
async fn wiki_sign_in(browser: &reqwest::Client, app: &TestApp) -> String {
    let xml = authn_request_full(&request_id(), WIKI, "", Utc::now());
    let page = sign_in(browser, app, &xml, None, USERNAME).await;
    session_index_of(&auto_post(&page).xml)
}

async fn still_signed_in(browser: &reqwest::Client, app: &TestApp) -> bool {
    let xml = authn_request_full(&request_id(), WIKI, "", Utc::now());
    sso_post(browser, app, &xml, None).await.has_saml_response()
}

/// Asserts the sign-out was refused: a 400 page, an event naming `reason`, nothing ended.
async fn assert_logout_refused(
    app: &TestApp,
    browser: &reqwest::Client,
    page: &Page,
    before: usize,
    reason: &str,
) {
    assert_eq!(page.status, 400, "{reason}: {}", page.body);
    assert!(
        page.body.contains("This sign-out request cannot be used"),
        "{}",
        page.body
    );
    assert!(!page.has_saml_response(), "{}", page.body);
    let events = app.events("saml_request_rejected").await;
    assert_eq!(events.len(), before + 1, "one event for {reason:?}");
    let got = details(&events[0])["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        got.contains(reason),
        "event reason {got:?} should mention {reason:?}"
    );
    assert!(
        still_signed_in(browser, app).await,
        "the session must survive a refused sign-out ({reason})"
    );
}

/// The LogoutResponse posted to the wiki's registered SLO URL after a successful sign-out.
fn assert_logged_out_to_wiki(page: &Page, request_id: &str) {
    let post = auto_post(page);
    assert_eq!(post.action, WIKI_SLO);
    let doc = Document::parse(&post.xml).unwrap();
    assert!(doc
        .root_element()
        .has_tag_name((NS_PROTOCOL, "LogoutResponse")));
    assert_eq!(attr_of(doc.root_element(), "InResponseTo"), request_id);
}

#[tokio::test]
async fn signed_logout_requests_end_the_named_session_in_both_bindings() {
    let sp = SpKey::new("wiki.example.com");
    let app = TestApp::spawn_with(&signed_wiki_config(&sp)).await;
    app.create_user(USERNAME, EMAIL, PASSWORD).await;
    let browser = app.browser();

    // HTTP-Redirect, signed over the raw query with OpenSSL.
    let index = wiki_sign_in(&browser, &app).await;
    let id = request_id();
    let xml = sp_logout(WIKI, &id, EMAIL, &index);
    let page = slo_get(
        &browser,
        &app,
        &signed_query(&xml, Some("r s&t"), RSA_SHA256, &sp),
    )
    .await;
    assert_logged_out_to_wiki(&page, &id);
    assert_eq!(auto_post(&page).relay_state.as_deref(), Some("r s&t"));
    assert!(!still_signed_in(&browser, &app).await);

    // HTTP-POST, signed by xmlsec1 (which also verifies what it made).
    let index = wiki_sign_in(&browser, &app).await;
    let id = request_id();
    let xml = xmlsec_signed_logout(&id, EMAIL, &index, &sp);
    xmlsec_verify(&xml, &sp.cert_path(), LOGOUT_REQUEST_ID_ATTR).unwrap();
    let page = slo_post(&browser, &app, &xml).await;
    assert_logged_out_to_wiki(&page, &id);
    assert!(!still_signed_in(&browser, &app).await);

    // HTTP-POST, signed by our own signer, and checked by xmlsec1 as well.
    let index = wiki_sign_in(&browser, &app).await;
    let id = request_id();
    let xml = our_signed_logout(&id, EMAIL, &index, &sp);
    xmlsec_verify(&xml, &sp.cert_path(), LOGOUT_REQUEST_ID_ATTR).unwrap();
    let page = slo_post(&browser, &app, &xml).await;
    assert_logged_out_to_wiki(&page, &id);
    assert!(!still_signed_in(&browser, &app).await);
    assert_eq!(app.events("sso_logout").await.len(), 3);
}

#[tokio::test]
async fn unsigned_tampered_or_wrapped_logout_requests_are_refused_when_the_certificate_is_known() {
    let sp = SpKey::new("wiki.example.com");
    let other = SpKey::new("attacker.example");
    let app = TestApp::spawn_with(&signed_wiki_config(&sp)).await;
    app.create_user(USERNAME, EMAIL, PASSWORD).await;
    let browser = app.browser();
    let index = wiki_sign_in(&browser, &app).await;
    let mine = |id: &str| sp_logout(WIKI, id, EMAIL, &index);

    // --- HTTP-Redirect ---
    let cases: Vec<(String, &str)> = vec![
        (
            format!(
                "SAMLRequest={}",
                form_encode(&deflate_base64(mine(&request_id()).as_bytes()))
            ),
            "not signed",
        ),
        // Signed for another user, then the SAMLRequest swapped for one naming this session.
        {
            let signed = signed_query(
                &sp_logout(WIKI, &request_id(), "bob@contoso.com", &index),
                None,
                RSA_SHA256,
                &sp,
            );
            let (_, rest) = signed.split_once('&').unwrap();
            let forged = format!(
                "SAMLRequest={}&{rest}",
                form_encode(&deflate_base64(mine(&request_id()).as_bytes()))
            );
            (forged, "does not match the query")
        },
        (
            signed_query(&mine(&request_id()), None, RSA_SHA256, &other),
            "does not match the query",
        ),
        (
            signed_query(&mine(&request_id()), None, RSA_SHA1, &sp),
            "rsa-sha1",
        ),
        // SigAlg swapped after signing.
        (
            signed_query(&mine(&request_id()), None, RSA_SHA256, &sp)
                .replace(&form_encode(RSA_SHA256), &form_encode(RSA_SHA1)),
            "rsa-sha1",
        ),
    ];
    for (query, reason) in cases {
        let before = rejected_count(&app).await;
        let page = slo_get(&browser, &app, &query).await;
        assert_logout_refused(&app, &browser, &page, before, reason).await;
    }

    // --- HTTP-POST ---
    let signed_other_user = xmlsec_signed_logout("_signed", "bob@contoso.com", &index, &sp);
    let body = |xml: &str| {
        let start = xml.find("<samlp:LogoutRequest").unwrap();
        xml[start..].to_string()
    };
    let inner = body(&signed_other_user);
    let sig_start = inner.find("<ds:Signature").unwrap();
    let sig_end = inner.find("</ds:Signature>").unwrap() + "</ds:Signature>".len();
    let signature = &inner[sig_start..sig_end];
    let root_open = |id: &str| {
        format!(
            "<samlp:LogoutRequest xmlns:samlp=\"{NS_PROTOCOL}\" ID=\"{id}\" Version=\"2.0\" IssueInstant=\"{}\"><Issuer xmlns=\"{NS_ASSERTION}\">{WIKI}</Issuer>",
            xs_datetime(Utc::now())
        )
    };
    let tail = format!(
        "<NameID xmlns=\"{NS_ASSERTION}\" Format=\"{NAMEID_EMAIL}\">{EMAIL}</NameID><samlp:SessionIndex>{index}</samlp:SessionIndex>"
    );
    let cases: Vec<(String, &str)> = vec![
        (mine(&request_id()), "not signed"),
        (
            xmlsec_signed_logout(&request_id(), "bob@contoso.com", &index, &sp)
                .replace("bob@contoso.com", EMAIL),
            "digest does not match",
        ),
        (
            xmlsec_signed_logout(&request_id(), EMAIL, &index, &other),
            "does not verify with any configured certificate",
        ),
        (
            xmlsec_signed_logout(&request_id(), EMAIL, &index, &sp).replace(RSA_SHA256, RSA_SHA1),
            "rsa-sha1",
        ),
        // XSW: a second LogoutRequest, the genuine signed one, inside a forged root.
        (
            format!(
                "{}<samlp:Extensions>{inner}</samlp:Extensions>{tail}</samlp:LogoutRequest>",
                root_open("_forged")
            ),
            "not a child",
        ),
        // XSW: the genuine signature moved to a forged root; its Reference names the inner
        // (signed) element, not the root.
        (
            format!(
                "{}{signature}<samlp:Extensions>{}</samlp:Extensions>{tail}</samlp:LogoutRequest>",
                root_open("_forged"),
                inner.replace(signature, "")
            ),
            "does not name the message root",
        ),
        // XSW: the same, with the forged root taking the signed element's ID.
        (
            format!(
                "{}{signature}<samlp:Extensions>{}</samlp:Extensions>{tail}</samlp:LogoutRequest>",
                root_open("_signed"),
                inner.replace(signature, "")
            ),
            "appears more than once",
        ),
        // The signature over an inner element only.
        (
            format!(
                "{}<samlp:Extensions>{}</samlp:Extensions>{tail}</samlp:LogoutRequest>",
                root_open("_forged"),
                inner
                    .replace("ID=\"_signed\"", "ID=\"_inner\"")
                    .replace("URI=\"#_signed\"", "URI=\"#_inner\"")
            ),
            "not a child",
        ),
    ];
    for (xml, reason) in cases {
        let before = rejected_count(&app).await;
        let page = slo_post(&browser, &app, &xml).await;
        assert_logout_refused(&app, &browser, &page, before, reason).await;
    }
    assert!(app.events("sso_logout").await.is_empty());
}

#[tokio::test]
async fn microsoft_365_with_a_configured_certificate_must_sign_and_without_one_logs_out_unsigned() {
    let microsoft = SpKey::new("microsoft.example");
    let wiki = SpKey::new("wiki.example.com");
    // The wiki's certificate is known, Microsoft's first not: Microsoft's unsigned logout works.
    let app = TestApp::spawn_with(&signed_wiki_config(&wiki)).await;
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
    let index = session_index_of(&auto_post(&page).xml);
    let id = request_id();
    let query = format!(
        "SAMLRequest={}",
        form_encode(&deflate_base64(
            logout_request_for(&id, IMMUTABLE_ID, &index).as_bytes()
        ))
    );
    let page = slo_get(&browser, &app, &query).await;
    assert_eq!(auto_post(&page).action, ACS);
    drop(app);

    // With `saml.m365_certificate_file`, Microsoft's LogoutRequest must be signed.
    let config = format!(
        "[saml]\nissuer = \"{ISSUER}\"\nm365_certificate_file = \"{}\"\n",
        microsoft.cert_path().display()
    );
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
    let index = session_index_of(&auto_post(&page).xml);
    let xml = logout_request_for(&request_id(), IMMUTABLE_ID, &index);
    let before = rejected_count(&app).await;
    let query = format!(
        "SAMLRequest={}",
        form_encode(&deflate_base64(xml.as_bytes()))
    );
    let page = slo_get(&browser, &app, &query).await;
    assert_eq!(page.status, 400, "{}", page.body);
    assert_eq!(rejected_count(&app).await, before + 1);
    let again = sso_post(&browser, &app, &authn_request(&request_id(), ""), None).await;
    assert!(again.has_saml_response(), "the session survives");

    let id = request_id();
    let xml = logout_request_for(&id, IMMUTABLE_ID, &index);
    let page = slo_get(
        &browser,
        &app,
        &signed_query(&xml, None, RSA_SHA256, &microsoft),
    )
    .await;
    let post = auto_post(&page);
    assert_eq!(post.action, ACS);
    assert!(post.xml.contains(&id));
    assert_eq!(app.events("sso_logout").await.len(), 1);
}

#[test]
fn a_bad_certificate_file_stops_start_up_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_cert = dir.path().join("key.pem");
    std::fs::write(
        &not_a_cert,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    for (path, problem) in [
        (dir.path().join("missing.pem"), "cannot read"),
        (not_a_cert, "not a PEM certificate"),
        (dir.path().to_path_buf(), "not a regular file"),
    ] {
        let toml = format!(
            "[[saml.service_providers]]\nentity_id = \"{WIKI}\"\nacs_urls = [\"{WIKI_ACS}\"]\ncertificate_file = \"{}\"\n",
            path.display()
        );
        let err = idbridge::config::Config::from_toml(&toml)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("saml.service_providers[0].certificate_file")
                && err.contains(problem)
                && err.contains("Fix:"),
            "{err}"
        );
        let toml = format!("[saml]\nm365_certificate_file = \"{}\"\n", path.display());
        let err = idbridge::config::Config::from_toml(&toml)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("saml.m365_certificate_file") && err.contains(problem),
            "{err}"
        );
    }
}

const AUTHN_REQUEST_ID_ATTR: &str = "urn:oasis:names:tc:SAML:2.0:protocol:AuthnRequest";

/// `xml` (an AuthnRequest) with an enveloped signature by `xmlsec1 --sign`.
fn xmlsec_signed_authn_request(xml: &str, id: &str, key: &SpKey) -> String {
    let template = xml.replacen(
        "</Issuer>",
        &format!(
            "</Issuer><ds:Signature xmlns:ds=\"{NS_DSIG}\"><ds:SignedInfo><ds:CanonicalizationMethod Algorithm=\"http://www.w3.org/2001/10/xml-exc-c14n#\"/><ds:SignatureMethod Algorithm=\"{RSA_SHA256}\"/><ds:Reference URI=\"#{id}\"><ds:Transforms><ds:Transform Algorithm=\"http://www.w3.org/2000/09/xmldsig#enveloped-signature\"/><ds:Transform Algorithm=\"http://www.w3.org/2001/10/xml-exc-c14n#\"/></ds:Transforms><ds:DigestMethod Algorithm=\"http://www.w3.org/2001/04/xmlenc#sha256\"/><ds:DigestValue/></ds:Reference></ds:SignedInfo><ds:SignatureValue/></ds:Signature>"
        ),
        1,
    );
    xmlsec_sign(&template, AUTHN_REQUEST_ID_ATTR, key)
}

#[tokio::test]
async fn signed_authn_requests_are_required_when_configured_and_checked_in_both_bindings() {
    let microsoft = SpKey::new("login.microsoftonline.com");
    let other = SpKey::new("attacker.example");
    let app = TestApp::spawn_with(&format!(
        "[saml]\nm365_certificate_file = \"{}\"\nm365_signed_requests = true\n",
        microsoft.cert_path().display()
    ))
    .await;
    let browser = app.browser();

    // Signed by Microsoft's key: the sign-in page, in both bindings.
    let id = request_id();
    let signed = xmlsec_signed_authn_request(&authn_request(&id, ""), &id, &microsoft);
    xmlsec_verify(&signed, &microsoft.cert_path(), AUTHN_REQUEST_ID_ATTR).unwrap();
    let page = sso_post(&browser, &app, &signed, None).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.has_login_form(), "{}", page.body);
    let query = signed_query(
        &authn_request(&request_id(), ""),
        Some("rs"),
        RSA_SHA256,
        &microsoft,
    );
    let response = browser
        .get(format!("{}?{query}", app.url("/saml/sso")))
        .send()
        .await
        .unwrap();
    let page = Page::read(response).await;
    assert!(page.has_login_form(), "{}", page.body);

    // Refused, each with a saml_request_rejected event saying why.
    let inner_id = request_id();
    let genuine = xmlsec_signed_authn_request(&authn_request(&inner_id, ""), &inner_id, &microsoft);
    let genuine = genuine[genuine.find("<samlp:AuthnRequest").unwrap()..].to_string();
    let forged_open = |id: &str| {
        format!(
            "<samlp:AuthnRequest xmlns:samlp=\"{NS_PROTOCOL}\" ID=\"{id}\" Version=\"2.0\" IssueInstant=\"{}\" ForceAuthn=\"false\"><Issuer xmlns=\"{NS_ASSERTION}\">{M365}</Issuer>",
            xs_datetime(Utc::now())
        )
    };
    let post_cases: Vec<(String, &str)> = vec![
        (authn_request(&request_id(), ""), "not signed"),
        {
            let id = request_id();
            let xml = xmlsec_signed_authn_request(&authn_request(&id, ""), &id, &microsoft);
            (
                xml.replace("nameid-format:persistent", "nameid-format:emailAddress"),
                "digest does not match",
            )
        },
        {
            let id = request_id();
            (
                xmlsec_signed_authn_request(&authn_request(&id, ""), &id, &other),
                "does not verify with any configured certificate",
            )
        },
        // XSW: the genuine signed request inside a forged root.
        (
            format!(
                "{}<samlp:Extensions>{genuine}</samlp:Extensions></samlp:AuthnRequest>",
                forged_open(&request_id())
            ),
            "not a child",
        ),
    ];
    for (xml, reason) in post_cases {
        let before = rejected_count(&app).await;
        let page = sso_post(&browser, &app, &xml, None).await;
        assert_rejected(&app, &page, before, reason).await;
    }
    let redirect_cases: Vec<(String, &str)> = vec![
        (
            format!(
                "SAMLRequest={}",
                form_encode(&deflate_base64(authn_request(&request_id(), "").as_bytes()))
            ),
            "not signed",
        ),
        (
            signed_query(&authn_request(&request_id(), ""), None, RSA_SHA256, &other),
            "does not match the query",
        ),
        // Signed, then the request swapped for another.
        {
            let signed = signed_query(
                &authn_request(&request_id(), ""),
                None,
                RSA_SHA256,
                &microsoft,
            );
            let (_, rest) = signed.split_once('&').unwrap();
            (
                format!(
                    "SAMLRequest={}&{rest}",
                    form_encode(&deflate_base64(
                        authn_request(&request_id(), "ForceAuthn=\"true\"").as_bytes()
                    ))
                ),
                "does not match the query",
            )
        },
    ];
    for (query, reason) in redirect_cases {
        let before = rejected_count(&app).await;
        let response = browser
            .get(format!("{}?{query}", app.url("/saml/sso")))
            .send()
            .await
            .unwrap();
        let page = Page::read(response).await;
        assert_rejected(&app, &page, before, reason).await;
    }

    // Without the certificate the setting is refused at start, with the fix.
    let err = idbridge::config::Config::from_toml("[saml]\nm365_signed_requests = true\n")
        .expect_err("refused");
    assert!(err.to_string().contains("m365_metadata_url"), "{err}");
}

/// Microsoft's federation metadata as login.microsoftonline.com publishes it (abridged): the
/// metadata's own signature (its KeyInfo is not a signing key of the tenant), a WS-Federation
/// RoleDescriptor and the IDPSSODescriptor, both naming the signing certificate.
fn microsoft_federation_metadata(signing: &[&SpKey], metadata_signer: &SpKey) -> String {
    let key_descriptors: String = signing
        .iter()
        .map(|k| {
            format!(
                "<KeyDescriptor use=\"signing\"><KeyInfo xmlns=\"http://www.w3.org/2000/09/xmldsig#\"><X509Data><X509Certificate>{}</X509Certificate></X509Data></KeyInfo></KeyDescriptor>",
                k.credential.certificate_der_base64()
            )
        })
        .collect();
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><EntityDescriptor ID=\"_m\" entityID=\"https://sts.windows.net/tenant/\" xmlns=\"urn:oasis:names:tc:SAML:2.0:metadata\">\
         <Signature xmlns=\"http://www.w3.org/2000/09/xmldsig#\"><SignedInfo/><SignatureValue>AA==</SignatureValue><KeyInfo><X509Data><X509Certificate>{}</X509Certificate></X509Data></KeyInfo></Signature>\
         <RoleDescriptor xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xmlns:fed=\"http://docs.oasis-open.org/wsfed/federation/200706\" xsi:type=\"fed:SecurityTokenServiceType\" protocolSupportEnumeration=\"http://docs.oasis-open.org/wsfed/federation/200706\">{key_descriptors}</RoleDescriptor>\
         <IDPSSODescriptor protocolSupportEnumeration=\"urn:oasis:names:tc:SAML:2.0:protocol\">{key_descriptors}<SingleSignOnService Binding=\"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect\" Location=\"https://login.microsoftonline.com/tenant/saml2\"/></IDPSSODescriptor></EntityDescriptor>",
        metadata_signer.credential.certificate_der_base64()
    )
}

/// Serves `body` at any path over plain HTTP on 127.0.0.1 (a stand-in for Microsoft's
/// metadata endpoint); the body can be changed while it runs. Returns the base URL.
async fn serve_document(body: std::sync::Arc<std::sync::Mutex<(u16, String)>>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let (status, text) = body.lock().unwrap().clone();
                let answer = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    url
}

#[tokio::test]
async fn microsoft_s_certificates_are_read_from_its_federation_metadata_url_or_file() {
    let microsoft = SpKey::new("login.microsoftonline.com");
    let signer = SpKey::new("metadata signer");
    let body = std::sync::Arc::new(std::sync::Mutex::new((
        200,
        microsoft_federation_metadata(&[&microsoft], &signer),
    )));
    let base = serve_document(body.clone()).await;
    let url = format!("{base}/tenant/federationmetadata/2007-06/federationmetadata.xml");
    let app = TestApp::spawn_with(&format!(
        "[saml]\nm365_metadata_url = \"{url}\"\nm365_signed_requests = true\n"
    ))
    .await;
    let ready = crate::support::m365::eventually("the metadata is read", || async {
        let body: serde_json::Value = reqwest::get(app.url("/readyz"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (body["checks"]["microsoftCertificates"]["ok"] == true).then_some(body)
    })
    .await;
    assert_eq!(
        ready["checks"]["microsoftCertificates"]["sha256"],
        serde_json::json!([microsoft.credential.fingerprint_sha256()]),
        "the tenant's signing certificate, not the metadata signer's"
    );
    let browser = app.browser();
    let id = request_id();
    let signed = xmlsec_signed_authn_request(&authn_request(&id, ""), &id, &microsoft);
    let page = sso_post(&browser, &app, &signed, None).await;
    assert!(page.has_login_form(), "{}", page.body);
    let id = request_id();
    let by_signer = xmlsec_signed_authn_request(&authn_request(&id, ""), &id, &signer);
    let before = rejected_count(&app).await;
    let page = sso_post(&browser, &app, &by_signer, None).await;
    assert_rejected(&app, &page, before, "signature").await;

    // The same metadata as a file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("federationmetadata.xml");
    std::fs::write(&file, &body.lock().unwrap().1).unwrap();
    let config = idbridge::config::Config::from_toml(&format!(
        "[saml]\nm365_certificate_file = {:?}\nm365_signed_requests = true\n",
        file.display().to_string()
    ))
    .unwrap();
    assert_eq!(
        config.saml.m365_certificates.unwrap().fingerprints(),
        [microsoft.credential.fingerprint_sha256()]
    );
    // Refused: a URL that is not https (off this machine), both sources, metadata with a DTD.
    for (toml, says) in [
        (
            "[saml]\nm365_metadata_url = \"http://login.example/x.xml\"\n".to_string(),
            "not https",
        ),
        (
            format!(
                "[saml]\nm365_metadata_url = \"{url}\"\nm365_certificate_file = {:?}\n",
                file.display().to_string()
            ),
            "keep one",
        ),
    ] {
        let err = idbridge::config::Config::from_toml(&toml).expect_err("refused");
        assert!(err.to_string().contains(says), "{err}");
    }
    std::fs::write(
        &file,
        "<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY a \"b\">]><EntityDescriptor/>",
    )
    .unwrap();
    let err = idbridge::config::Config::from_toml(&format!(
        "[saml]\nm365_certificate_file = {:?}\n",
        file.display().to_string()
    ))
    .expect_err("a DTD is refused");
    assert!(err.to_string().contains("metadata"), "{err}");
}

/// Signs a template (an empty `ds:Signature` in place) with `xmlsec1 --sign`, the element's
/// `ID` declared by `id_attr`: an independent signer, so our verifier is not only checked
/// against our own signer.
fn xmlsec_sign(template: &str, id_attr: &str, key: &SpKey) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("t.xml"), dir.path().join("s.xml"));
    std::fs::write(&input, template).unwrap();
    let out = Command::new("xmlsec1")
        .arg("--sign")
        .arg("--privkey-pem")
        .arg(key.key_path())
        .arg("--id-attr:ID")
        .arg(id_attr)
        .arg("--output")
        .arg(&output)
        .arg(&input)
        .output()
        .unwrap_or_else(|e| panic!("cannot run xmlsec1 ({e}); {INSTALL_HINT}"));
    assert!(
        out.status.success(),
        "xmlsec1 --sign failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(output).unwrap()
}
