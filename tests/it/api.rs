//! The JSON API under /api/v1: every endpoint's success and errors, and the OpenAPI document
//! checked against what the server really does.

use std::collections::{BTreeSet, HashSet};

use chrono::Utc;
use idbridge::directory::AdminRole;
use idbridge::events::Actor;
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

use crate::support::console::{api_client, api_key};
use crate::support::graph_fake::{FakeUserSpec, GraphFake};
use crate::support::m365::eventually;
use crate::support::TestApp;

const PASSWORD: &str = "Corr3ct-Horse-Battery";

/// Every operation the API serves. The document must list exactly these.
const OPERATIONS: &[(&str, &str)] = &[
    ("GET", "/api/v1/me"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/api/v1/users"),
    ("POST", "/api/v1/users"),
    ("GET", "/api/v1/users/{id}"),
    ("PATCH", "/api/v1/users/{id}"),
    ("DELETE", "/api/v1/users/{id}"),
    ("POST", "/api/v1/users/{id}/suspend"),
    ("POST", "/api/v1/users/{id}/activate"),
    ("PUT", "/api/v1/users/{id}/password"),
    ("POST", "/api/v1/users/{id}/require-password-change"),
    ("GET", "/api/v1/users/{id}/mfa"),
    ("DELETE", "/api/v1/users/{id}/mfa"),
    ("PUT", "/api/v1/users/{id}/mfa/required"),
    ("GET", "/api/v1/bindings"),
    ("POST", "/api/v1/bindings"),
    ("POST", "/api/v1/bindings/unbind"),
    ("POST", "/api/v1/bindings/retry"),
    ("GET", "/api/v1/sync"),
    ("GET", "/api/v1/m365"),
    ("GET", "/api/v1/m365/app-registration"),
    ("PUT", "/api/v1/m365/app-registration"),
    ("GET", "/api/v1/m365/app-registration/certificate"),
    ("GET", "/api/v1/m365/connection"),
    ("POST", "/api/v1/m365/connection"),
    ("DELETE", "/api/v1/m365/connection"),
    ("GET", "/api/v1/m365/users"),
    ("GET", "/api/v1/m365/imports"),
    ("POST", "/api/v1/m365/imports"),
    ("GET", "/api/v1/m365/imports/{id}"),
    ("GET", "/api/v1/m365/attributes"),
    ("PUT", "/api/v1/m365/attributes/{attribute}"),
    ("GET", "/api/v1/m365/domains"),
    ("GET", "/api/v1/m365/domains/{domain}/federation"),
    ("PUT", "/api/v1/m365/domains/{domain}/federation"),
    ("DELETE", "/api/v1/m365/domains/{domain}/federation"),
    ("GET", "/api/v1/events"),
    ("GET", "/api/v1/events.jsonl"),
    ("GET", "/api/v1/signing-certificates"),
    // In rollover order: prepared, promoted, retire refused as too soon (422), and then
    // nothing left to discard (the documented 409).
    ("POST", "/api/v1/signing-certificates/next"),
    ("POST", "/api/v1/signing-certificates/promote"),
    ("POST", "/api/v1/signing-certificates/retire"),
    ("DELETE", "/api/v1/signing-certificates/next"),
    // Registered first, then read, changed; removing an unknown one is the documented 404.
    ("GET", "/api/v1/saml/service-providers"),
    ("POST", "/api/v1/saml/service-providers"),
    ("GET", "/api/v1/saml/service-providers/{entityId}"),
    ("PUT", "/api/v1/saml/service-providers/{entityId}"),
    ("DELETE", "/api/v1/saml/service-providers/{entityId}"),
    ("GET", "/api/v1/admins"),
    ("DELETE", "/api/v1/admins/{name}"),
    ("POST", "/api/v1/admins/{name}/disable"),
    ("POST", "/api/v1/admins/{name}/enable"),
    ("PUT", "/api/v1/admins/{name}/role"),
    ("POST", "/api/v1/admins/{name}/reset-password"),
    ("GET", "/api/v1/branding"),
    ("PUT", "/api/v1/branding"),
];

const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];

/// A server connected (client credentials) to a fake tenant whose default domain is
/// contoso.com.
async fn connected() -> (TestApp, GraphFake) {
    crate::support::m365::connected("", "").await
}

async fn settled(app: &TestApp, key: &str, state: &str) {
    crate::support::m365::settled(app, key, state).await;
}

/// An API caller: a client with a key, and the server.
struct Api<'a> {
    app: &'a TestApp,
    client: Client,
}

/// A response: status, headers and the body as JSON (Null when not JSON).
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    text: String,
    json: Value,
}

impl Answer {
    /// Asserts an error answer: status, code and (if given) field.
    fn error(&self, status: u16, code: &str, field: Option<&str>) {
        assert_eq!(self.status.as_u16(), status, "{}", self.text);
        assert_eq!(self.json["error"]["code"], code, "{}", self.text);
        assert!(
            self.json["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{}",
            self.text
        );
        if let Some(field) = field {
            assert_eq!(self.json["error"]["field"], field, "{}", self.text);
        }
    }
}

impl<'a> Api<'a> {
    async fn new(app: &'a TestApp, name: &str, role: AdminRole) -> Api<'a> {
        let key = api_key(app, name, role).await;
        Api {
            app,
            client: api_client(&key),
        }
    }

    fn anonymous(app: &'a TestApp) -> Api<'a> {
        Api {
            app,
            client: Client::new(),
        }
    }

    async fn send(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.client.request(method, self.app.url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let r = request.send().await.expect("request");
        answer(r).await
    }

    async fn raw(&self, method: &str, path: &str, content_type: &str, body: &str) -> Answer {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let r = self
            .client
            .request(method, self.app.url(path))
            .header("content-type", content_type)
            .body(body.to_string())
            .send()
            .await
            .expect("request");
        answer(r).await
    }

    async fn get(&self, path: &str) -> Answer {
        self.send("GET", path, None).await
    }

    /// GET expecting 200; the JSON body.
    async fn ok(&self, path: &str) -> Value {
        let a = self.get(path).await;
        assert_eq!(a.status, 200, "GET {path}: {}", a.text);
        a.json
    }
}

async fn answer(r: reqwest::Response) -> Answer {
    let status = r.status();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap_or_default();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        text,
        json,
    }
}

async fn create_user(api: &Api<'_>, username: &str) -> Value {
    let a = api
        .send(
            "POST",
            "/api/v1/users",
            Some(json!({
                "username": username,
                "email": format!("{username}@contoso.com"),
                "firstname": "Test",
                "lastname": username,
                "password": PASSWORD,
            })),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    a.json
}

// ---- the OpenAPI document ----

/// The schema a `$ref` names.
fn resolve<'d>(doc: &'d Value, schema: &'d Value) -> &'d Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.rsplit('/').next().unwrap();
            let target = &doc["components"]["schemas"][name];
            assert!(!target.is_null(), "{r} is not in components.schemas");
            resolve(doc, target)
        }
        None => schema,
    }
}

/// The properties and required names of an object schema (through `allOf`), and whether it
/// declares its properties at all.
fn object_parts(
    doc: &Value,
    schema: &Value,
    props: &mut serde_json::Map<String, Value>,
) -> (BTreeSet<String>, bool) {
    let schema = resolve(doc, schema);
    let mut required: BTreeSet<String> = schema["required"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let mut declared = false;
    if let Some(p) = schema["properties"].as_object() {
        declared = true;
        props.extend(p.clone());
    }
    if let Some(parts) = schema["allOf"].as_array() {
        for part in parts {
            let (r, d) = object_parts(doc, part, props);
            required.extend(r);
            declared |= d;
        }
    }
    (required, declared)
}

fn type_matches(name: &str, value: &Value) -> bool {
    match name {
        "null" => value.is_null(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => false,
    }
}

/// Checks `value` against `schema`: types, enums, required properties, and no property the
/// schema does not declare. Returns what is wrong.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(doc, schema);
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema[key].as_array() {
            if !options.iter().any(|o| check(doc, o, value, at).is_ok()) {
                return Err(format!("{at}: {value} matches none of {key} {options:?}"));
            }
        }
    }
    match &schema["type"] {
        Value::String(t) if !type_matches(t, value) => {
            return Err(format!("{at}: {value} is not {t}"))
        }
        Value::Array(ts)
            if !ts
                .iter()
                .any(|t| type_matches(t.as_str().unwrap_or(""), value)) =>
        {
            return Err(format!("{at}: {value} is none of {ts:?}"))
        }
        _ => {}
    }
    if let Some(options) = schema["enum"].as_array() {
        if !options.contains(value) {
            return Err(format!("{at}: {value} is not one of {options:?}"));
        }
    }
    if let (Some(items), Some(values)) = (schema.get("items"), value.as_array()) {
        for (i, v) in values.iter().enumerate() {
            check(doc, items, v, &format!("{at}[{i}]"))?;
        }
    }
    if let Some(object) = value.as_object() {
        let mut props = serde_json::Map::new();
        let (required, declared) = object_parts(doc, schema, &mut props);
        for name in &required {
            if !object.contains_key(name) {
                return Err(format!("{at}: required property {name} is missing"));
            }
        }
        if declared {
            for (name, v) in object {
                let Some(prop) = props.get(name) else {
                    return Err(format!("{at}: property {name} is not in the schema"));
                };
                check(doc, prop, v, &format!("{at}.{name}"))?;
            }
        }
    }
    Ok(())
}

/// The documented operation for a method and path, if any.
fn operation<'d>(doc: &'d Value, method: &str, path: &str) -> Option<&'d Value> {
    doc["paths"][path]
        .get(method.to_ascii_lowercase())
        .filter(|o| o.is_object())
}

/// Checks an answer against its operation: the status is documented and a JSON body matches
/// the documented schema.
fn conforms(doc: &Value, method: &str, path: &str, a: &Answer) {
    let op = operation(doc, method, path).unwrap_or_else(|| panic!("{method} {path} documented"));
    let status = a.status.as_u16().to_string();
    let response = op["responses"].get(&status).unwrap_or_else(|| {
        panic!(
            "{method} {path} answered {status}, which is not documented ({}): {}",
            op["responses"]
                .as_object()
                .map(|r| r.keys().cloned().collect::<Vec<_>>().join(", "))
                .unwrap_or_default(),
            a.text
        )
    });
    let response = match response.get("$ref").and_then(Value::as_str) {
        Some(r) => &doc["components"]["responses"][r.rsplit('/').next().unwrap()],
        None => response,
    };
    let schema = &response["content"]["application/json"]["schema"];
    if !schema.is_null() {
        assert!(
            !a.json.is_null(),
            "{method} {path} {status} must be JSON: {}",
            a.text
        );
        if let Err(problem) = check(doc, schema, &a.json, "body") {
            panic!(
                "{method} {path} {status} breaks its schema: {problem}\n{}",
                a.text
            );
        }
    } else if status != "204" && response["content"].get("application/x-ndjson").is_none() {
        assert!(
            response["content"]
                .as_object()
                .is_some_and(|c| !c.is_empty())
                || a.text.is_empty(),
            "{method} {path} {status}: undocumented body {}",
            a.text
        );
    }
}

/// A plausible request for each documented operation, with the path filled in.
fn request_for(method: &str, path: &str) -> (String, Option<Value>) {
    let id = if method == "DELETE" { "zed" } else { "alice" };
    let concrete = path
        .replace("/imports/{id}", "/imports/no-such-run")
        .replace("{id}", id)
        .replace("{name}", id)
        .replace("{attribute}", "department")
        .replace(
            "{entityId}",
            if method == "DELETE" {
                "https%3A%2F%2Fnone.example.com"
            } else {
                "https%3A%2F%2Fapp.example.com%2Fsaml"
            },
        )
        // Unfederating an unknown domain: the documented 404.
        .replace(
            "{domain}",
            if method == "DELETE" {
                "tailspin.com"
            } else {
                "contoso.com"
            },
        );
    let body = match (method, path) {
        ("POST", "/api/v1/users") => {
            Some(json!({"username": "newbie", "email": "newbie@contoso.com"}))
        }
        ("PATCH", _) => Some(json!({"department": "Sales"})),
        ("PUT", "/api/v1/users/{id}/password") => Some(json!({"password": "An0ther-Passw0rd!"})),
        ("PUT", "/api/v1/users/{id}/mfa/required") => Some(json!({"required": true})),
        ("PUT", "/api/v1/admins/{name}/role") => Some(json!({"role": "read_only"})),
        ("POST", "/api/v1/bindings") => Some(json!({"users": ["bob"]})),
        ("POST", "/api/v1/bindings/unbind") => Some(json!({"users": ["bob"]})),
        ("POST", "/api/v1/bindings/retry") => Some(json!({})),
        ("POST", "/api/v1/m365/connection") => Some(json!({"mode": "delegated"})),
        ("POST", "/api/v1/m365/imports") => Some(json!({"users": ["dana@contoso.com"]})),
        // Unconfirmed federation of the default domain: the documented 422.
        ("PUT", "/api/v1/m365/domains/{domain}/federation") => Some(json!({})),
        // Set in the file: the documented 409.
        ("PUT", "/api/v1/m365/app-registration") => Some(json!({"tenant": "organizations"})),
        ("POST", "/api/v1/saml/service-providers") => Some(json!({
            "entityId": "https://app.example.com/saml",
            "acsUrls": ["https://app.example.com/saml/acs"],
        })),
        ("PUT", "/api/v1/saml/service-providers/{entityId}") => {
            Some(json!({"acsUrls": ["https://app.example.com/saml/acs2"], "nameId": "email"}))
        }
        ("PUT", "/api/v1/branding") => Some(json!({"name": "Contoso", "accentColour": "#aa3300"})),
        ("PUT", _) => Some(json!({"direction": "export"})),
        // Left unconfirmed: the answer must be the documented 422.
        ("DELETE", "/api/v1/m365/connection") => None,
        _ => None,
    };
    (concrete, body)
}

/// The document lists exactly the operations the server serves; every operation answers with
/// a documented status and a body that matches the documented schema, for an admin key, a
/// read-only key and no key; methods not documented on a path are refused with 405.
#[tokio::test]
async fn the_openapi_document_describes_exactly_what_the_api_does() {
    let (app, fake) = connected().await;
    fake.add_user(FakeUserSpec {
        upn: "dana@contoso.com".into(),
        given_name: Some("Dana".into()),
        surname: Some("Imported".into()),
        account_enabled: true,
        ..FakeUserSpec::default()
    });
    let admin = Api::new(&app, "ci", AdminRole::Admin).await;
    let reader = Api::new(&app, "auditor", AdminRole::ReadOnly).await;
    let nobody = Api::anonymous(&app);
    for name in ["alice", "bob", "zed"] {
        create_user(&admin, name).await;
    }

    let r = nobody.get("/api/v1/openapi.json").await;
    assert_eq!(r.status, 200, "the document is public");
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let doc = r.json;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let scheme = &doc["components"]["securitySchemes"]["apiKey"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    assert_eq!(doc["security"], json!([{"apiKey": []}]));
    // The checker below is not vacuous: it refuses missing, extra and mistyped properties.
    let user = json!({"$ref": "#/components/schemas/UserDetail"});
    let alice = admin.ok("/api/v1/users/alice").await;
    assert!(check(&doc, &user, &alice, "body").is_ok());
    let mut extra = alice.clone();
    extra["bogus"] = json!(1);
    assert!(check(&doc, &user, &extra, "body").is_err());
    let mut missing = alice.clone();
    missing["sync"]
        .as_object_mut()
        .unwrap()
        .remove("queuedJobs");
    assert!(check(&doc, &user, &missing, "body").is_err());
    let mut mistyped = alice.clone();
    mistyped["state"] = json!("asleep");
    assert!(check(&doc, &user, &mistyped, "body").is_err());
    for name in ["ErrorResponse", "ErrorDetail"] {
        assert!(doc["components"]["schemas"][name].is_object(), "{name}");
    }

    // (b) Documented operations == served operations.
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|m| item.get(m.to_ascii_lowercase()).is_some())
                .map(move |m| (m.to_string(), path.clone()))
        })
        .collect();
    let expected: BTreeSet<(String, String)> = OPERATIONS
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        documented, expected,
        "the document lists every operation, and only those"
    );

    for (method, path) in OPERATIONS {
        let op = operation(&doc, method, path).unwrap();
        let public = *path == "/api/v1/openapi.json";
        assert!(
            op["operationId"].is_string() && op["tags"].is_array(),
            "{method} {path}"
        );
        assert!(
            op["responses"].get("500").is_some(),
            "{method} {path} documents 500"
        );
        if public {
            assert_eq!(op["security"], json!([{}]), "{path} is public");
        } else {
            assert!(
                op["responses"].get("401").is_some(),
                "{method} {path} documents 401"
            );
        }
        if *method != "GET" {
            assert!(
                op["responses"].get("403").is_some(),
                "{method} {path} documents 403"
            );
        }
        // Path parameters are documented.
        for name in ["id", "attribute", "name"] {
            if path.contains(&format!("{{{name}}}")) {
                let params = op["parameters"].as_array().expect("parameters");
                assert!(
                    params
                        .iter()
                        .any(|p| p["name"] == name && p["in"] == "path"),
                    "{method} {path} documents {name}"
                );
            }
        }

        let (concrete, body) = request_for(method, path);
        // No key (or a read-only key on a write) first: nothing must change.
        let a = nobody.send(method, &concrete, body.clone()).await;
        if public {
            conforms(&doc, method, path, &a);
            assert_eq!(a.status, 200);
        } else {
            a.error(401, "unauthorized", None);
            conforms(&doc, method, path, &a);
        }
        let a = reader.send(method, &concrete, body.clone()).await;
        conforms(&doc, method, path, &a);
        if *method != "GET" {
            a.error(403, "forbidden", None);
        }
        // (a)+(c) The admin key: a documented status and schema.
        let a = admin.send(method, &concrete, body.clone()).await;
        conforms(&doc, method, path, &a);
        let nothing_to_discard =
            a.status == 409 && (*method, *path) == ("DELETE", "/api/v1/signing-certificates/next");
        let set_in_file =
            a.status == 409 && (*method, *path) == ("PUT", "/api/v1/m365/app-registration");
        assert!(
            a.status.is_success()
                || a.status == 404
                || a.status == 422
                || nothing_to_discard
                || set_in_file,
            "{method} {concrete}: {} {}",
            a.status,
            a.text
        );
    }

    // Methods a documented path does not list are not served (no hidden operations).
    let paths: HashSet<&str> = OPERATIONS.iter().map(|(_, p)| *p).collect();
    for path in paths {
        let (concrete, _) = request_for("GET", path);
        for method in METHODS {
            if operation(&doc, method, path).is_none() {
                let a = admin.send(method, &concrete, Some(json!({}))).await;
                a.error(405, "method_not_allowed", None);
            }
        }
    }
    // Paths the API does not have answer JSON too.
    let a = admin.get("/api/v1/nothing/here").await;
    a.error(404, "not_found", None);

    // (c) More bodies against their schemas, with richer data.
    let bind = admin
        .send(
            "POST",
            "/api/v1/bindings",
            Some(json!({"users": ["alice"]})),
        )
        .await;
    conforms(&doc, "POST", "/api/v1/bindings", &bind);
    settled(&app, "alice", "bound").await;
    for path in [
        "/api/v1/users/{id}",
        "/api/v1/bindings",
        "/api/v1/sync",
        "/api/v1/m365/users",
        "/api/v1/m365/attributes",
        "/api/v1/events",
    ] {
        let (concrete, _) = request_for("GET", path);
        let a = admin.get(&concrete).await;
        assert_eq!(a.status, 200, "{path}: {}", a.text);
        conforms(&doc, "GET", path, &a);
    }
    let import = admin
        .send("POST", "/api/v1/m365/imports", Some(json!({"all": true})))
        .await;
    conforms(&doc, "POST", "/api/v1/m365/imports", &import);
    let run = finished_run(&admin, import.json["id"].as_str().unwrap()).await;
    let a = admin
        .get(&format!(
            "/api/v1/m365/imports/{}",
            run["id"].as_str().unwrap()
        ))
        .await;
    conforms(&doc, "GET", "/api/v1/m365/imports/{id}", &a);
}

/// Polls an import run until it is no longer running.
async fn finished_run(api: &Api<'_>, id: &str) -> Value {
    eventually("the import run finishes", || async {
        let run = api.ok(&format!("/api/v1/m365/imports/{id}")).await;
        (run["state"] != "running").then_some(run)
    })
    .await
}

// ---- users ----

#[tokio::test]
async fn users_are_created_listed_read_changed_suspended_and_deleted() {
    let app = TestApp::spawn().await;
    let api = Api::new(&app, "hr", AdminRole::Admin).await;

    let created = create_user(&api, "alice").await;
    assert_eq!(created["username"], "alice");
    assert_eq!(created["hasPassword"], true);
    assert_eq!(created["state"], "active");
    let event = &app.events("user_create").await[0];
    assert_eq!(
        (event.actor.as_str(), event.target.as_deref()),
        ("apikey:hr", Some("alice"))
    );

    // Refusals name the field.
    let dup = api
        .send(
            "POST",
            "/api/v1/users",
            Some(json!({"username": "alice", "email": "other@contoso.com"})),
        )
        .await;
    dup.error(409, "conflict", Some("username"));
    let bad = api
        .send(
            "POST",
            "/api/v1/users",
            Some(json!({"username": "bob", "email": "not-an-email"})),
        )
        .await;
    bad.error(422, "validation_failed", Some("email"));
    let missing = api
        .send("POST", "/api/v1/users", Some(json!({"username": "bob"})))
        .await;
    missing.error(422, "validation_failed", Some("email"));
    let weak = api
        .send(
            "POST",
            "/api/v1/users",
            Some(json!({"username": "bob", "email": "bob@contoso.com", "password": "short"})),
        )
        .await;
    weak.error(422, "validation_failed", Some("password"));
    let unknown = api
        .send(
            "POST",
            "/api/v1/users",
            Some(json!({"username": "bob", "email": "bob@contoso.com", "colour": "blue"})),
        )
        .await;
    unknown.error(422, "validation_failed", Some("colour"));
    let wrong_type = api
        .send(
            "POST",
            "/api/v1/users",
            Some(json!({"username": 7, "email": "bob@contoso.com"})),
        )
        .await;
    wrong_type.error(422, "validation_failed", Some("username"));
    let malformed = api
        .raw(
            "POST",
            "/api/v1/users",
            "application/json",
            "{\"username\": \"bob\",",
        )
        .await;
    malformed.error(400, "bad_request", None);
    let form = api
        .raw(
            "POST",
            "/api/v1/users",
            "application/x-www-form-urlencoded",
            "username=bob",
        )
        .await;
    form.error(400, "bad_request", None);
    let empty = api
        .raw("POST", "/api/v1/users", "application/json", "")
        .await;
    empty.error(400, "bad_request", None);
    assert!(
        app.state().directory.get_user("bob").await.is_err(),
        "nothing written by refusals"
    );

    // Detail = the user as `user show --json` has it, plus the sync state.
    let detail = api.ok("/api/v1/users/alice").await;
    let mut expected = app
        .state()
        .directory
        .get_user("alice")
        .await
        .unwrap()
        .to_json();
    expected["sync"] = detail["sync"].clone();
    assert_eq!(detail, expected);
    assert!(detail["sync"]["state"].is_null());
    assert_eq!(detail["sync"]["queuedJobs"], json!([]));
    assert_eq!(
        api.ok(&format!(
            "/api/v1/users/{}",
            created["id"].as_str().unwrap()
        ))
        .await["username"],
        "alice"
    );
    api.get("/api/v1/users/nobody")
        .await
        .error(404, "not_found", None);

    // Changes; an empty string clears.
    let changed = api
        .send(
            "PATCH",
            "/api/v1/users/alice",
            Some(json!({
                "department": "Sales",
                "addresses": {"work": {"country": "NL"}},
                "phoneNumbers": {"mobile": {"number": "+31 6 1234 5678"}},
            })),
        )
        .await;
    assert_eq!(changed.status, 200, "{}", changed.text);
    assert_eq!(changed.json["department"], "Sales");
    assert_eq!(changed.json["addresses"]["work"]["country"], "NL");
    assert_eq!(
        changed.json["phoneNumbers"]["mobile"]["number"],
        "+31 6 1234 5678"
    );
    // Older spellings still work on input: flat camelCase and dotted keys.
    let older = api
        .send(
            "PATCH",
            "/api/v1/users/alice",
            Some(json!({"workCountry": "BE", "phoneNumbers.work.number": "+32 2 123"})),
        )
        .await;
    assert_eq!(older.status, 200, "{}", older.text);
    assert_eq!(older.json["addresses"]["work"]["country"], "BE");
    assert_eq!(older.json["phoneNumbers"]["work"]["number"], "+32 2 123");
    api.send(
        "PATCH",
        "/api/v1/users/alice",
        Some(json!({"addresses": {"home": {"city": "x"}}})),
    )
    .await
    .error(422, "validation_failed", Some("addresses.home.city"));
    api.send("PATCH", "/api/v1/users/alice", Some(json!({"jobTitle": 5})))
        .await
        .error(422, "validation_failed", Some("jobTitle"));
    let cleared = api
        .send(
            "PATCH",
            "/api/v1/users/alice",
            Some(json!({"department": ""})),
        )
        .await;
    assert_eq!(cleared.status, 200);
    assert!(cleared.json["department"].is_null());
    api.send("PATCH", "/api/v1/users/alice", Some(json!({})))
        .await
        .error(422, "validation_failed", Some("body"));
    api.send(
        "PATCH",
        "/api/v1/users/alice",
        Some(json!({"department": "x".repeat(65)})),
    )
    .await
    .error(422, "validation_failed", Some("department"));
    api.send(
        "PATCH",
        "/api/v1/users/alice",
        Some(json!({"manager": "nobody"})),
    )
    .await
    .error(422, "validation_failed", Some("manager"));
    api.send(
        "PATCH",
        "/api/v1/users/nobody",
        Some(json!({"department": "x"})),
    )
    .await
    .error(404, "not_found", None);
    create_user(&api, "bob").await;
    api.send(
        "PATCH",
        "/api/v1/users/bob",
        Some(json!({"email": "alice@contoso.com"})),
    )
    .await
    .error(409, "conflict", Some("email"));

    // Suspend and activate.
    let suspended = api.send("POST", "/api/v1/users/alice/suspend", None).await;
    assert_eq!(
        (suspended.status.as_u16(), suspended.json["state"].as_str()),
        (200, Some("suspended"))
    );
    let active = api.send("POST", "/api/v1/users/alice/activate", None).await;
    assert_eq!(active.json["state"], "active");
    api.send("POST", "/api/v1/users/nobody/suspend", None)
        .await
        .error(404, "not_found", None);
    assert_eq!(app.events("user_suspend").await[0].actor, "apikey:hr");

    // Password.
    let set = api
        .send(
            "PUT",
            "/api/v1/users/alice/password",
            Some(json!({"password": "An0ther-Passw0rd!"})),
        )
        .await;
    assert_eq!(set.status, 204, "{}", set.text);
    assert!(set.text.is_empty());
    api.send(
        "PUT",
        "/api/v1/users/alice/password",
        Some(json!({"password": "An0ther-Passw0rd!"})),
    )
    .await
    .error(422, "validation_failed", Some("password"));
    api.send(
        "PUT",
        "/api/v1/users/alice/password",
        Some(json!({"pass": "x"})),
    )
    .await
    .error(422, "validation_failed", Some("pass"));
    api.send("PUT", "/api/v1/users/alice/password", Some(json!({})))
        .await
        .error(422, "validation_failed", Some("password"));
    api.send(
        "PUT",
        "/api/v1/users/nobody/password",
        Some(json!({"password": "An0ther-Passw0rd!"})),
    )
    .await
    .error(404, "not_found", None);
    assert_eq!(app.events("user_password_set").await[0].actor, "apikey:hr");

    // Delete.
    let deleted = api.send("DELETE", "/api/v1/users/bob", None).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    api.get("/api/v1/users/bob")
        .await
        .error(404, "not_found", None);
    api.send("DELETE", "/api/v1/users/bob", None)
        .await
        .error(404, "not_found", None);
}

#[tokio::test]
async fn the_user_list_pages_with_a_cursor_and_searches() {
    let app = TestApp::spawn().await;
    let api = Api::new(&app, "hr", AdminRole::ReadOnly).await;
    for name in ["erin", "alice", "dave", "carol", "bob"] {
        app.create_user(name, &format!("{name}@contoso.com"), PASSWORD)
            .await;
    }
    let mut seen = Vec::new();
    let mut path = "/api/v1/users?limit=2".to_string();
    loop {
        let page = api.ok(&path).await;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(
            items
                .iter()
                .map(|u| u["username"].as_str().unwrap().to_string()),
        );
        match page["next"].as_str() {
            Some(next) => path = format!("/api/v1/users?limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen, ["alice", "bob", "carol", "dave", "erin"]);
    let all = api.ok("/api/v1/users").await;
    assert_eq!(all["items"].as_array().unwrap().len(), 5);
    assert!(all["next"].is_null());

    let found = api.ok("/api/v1/users?search=CAR").await;
    assert_eq!(found["items"][0]["username"], "carol");
    assert_eq!(found["items"].as_array().unwrap().len(), 1);
    let after = api.ok("/api/v1/users?search=contoso&after=carol").await;
    let names: Vec<&str> = after["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dave", "erin"]);

    api.get("/api/v1/users?limit=0")
        .await
        .error(422, "validation_failed", Some("limit"));
    api.get("/api/v1/users?limit=many")
        .await
        .error(422, "validation_failed", Some("limit"));
    api.get("/api/v1/users?sort=name")
        .await
        .error(422, "validation_failed", Some("sort"));
}

/// 401 without or with a bad key on a write, 403 for a read-only key on every write method,
/// each refusal an event; nothing is written.
#[tokio::test]
async fn writes_need_a_valid_key_with_the_admin_role() {
    let app = TestApp::spawn().await;
    app.create_user("alice", "alice@contoso.com", PASSWORD)
        .await;
    let reader = Api::new(&app, "auditor", AdminRole::ReadOnly).await;
    let body = json!({"username": "mallory", "email": "mallory@contoso.com"});
    let none = Api::anonymous(&app)
        .send("POST", "/api/v1/users", Some(body.clone()))
        .await;
    none.error(401, "unauthorized", None);
    let revoked = Api {
        app: &app,
        client: api_client("idb_0000000000000000000000000000000000000000000000000000000000000000"),
    }
    .send("POST", "/api/v1/users", Some(body.clone()))
    .await;
    revoked.error(401, "unauthorized", None);
    assert_eq!(none.json, revoked.json, "no hint which part was wrong");

    let writes = OPERATIONS.iter().filter(|(m, _)| *m != "GET");
    let mut refused: u64 = 0;
    for (method, path) in writes {
        let (concrete, body) = request_for(method, path);
        let a = reader.send(method, &concrete, body).await;
        a.error(403, "forbidden", None);
        refused += 1;
    }
    assert!(app.state().directory.get_user("mallory").await.is_err());
    assert_eq!(
        app.state()
            .directory
            .get_user("alice")
            .await
            .unwrap()
            .state
            .as_str(),
        "active"
    );
    let (_, total) = app.refusal_count("admin_access_denied").await;
    assert_eq!(total, refused + 2);
    let denied = app.events("admin_access_denied").await;
    assert!(denied.iter().any(|e| e.actor == "apikey:auditor"));
    // Reads are fine with the read-only key.
    assert_eq!(reader.get("/api/v1/users/alice").await.status, 200);
}

// ---- bindings ----

#[tokio::test]
async fn users_are_bound_and_unbound_through_the_api() {
    let (app, fake) = connected().await;
    let api = Api::new(&app, "ops", AdminRole::Admin).await;
    create_user(&api, "alice").await;
    create_user(&api, "bob").await;

    let bound = api
        .send(
            "POST",
            "/api/v1/bindings",
            Some(json!({"users": ["alice", "nobody"]})),
        )
        .await;
    assert_eq!(bound.status, 202, "{}", bound.text);
    assert_eq!(bound.json["queued"], json!(["alice"]));
    assert_eq!(bound.json["skipped"][0]["user"], "nobody");
    assert!(bound.json["skipped"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("no such user"));
    settled(&app, "alice", "bound").await;
    assert!(fake.user("alice@contoso.com").is_some(), "created in M365");
    assert_eq!(app.events("m365_bind").await[0].actor, "apikey:ops");

    let again = api
        .send(
            "POST",
            "/api/v1/bindings",
            Some(json!({"users": ["alice"]})),
        )
        .await;
    assert_eq!(again.json["skipped"][0]["reason"], "already bound");

    let detail = api.ok("/api/v1/users/alice").await;
    let sync = &detail["sync"];
    assert_eq!(sync["state"], "bound");
    assert_eq!(sync["immutableId"].as_str().unwrap().len(), 24);
    assert_eq!(sync["immutableId"], detail["m365"]["immutableId"]);
    assert!(sync["lastSyncAt"].is_string());
    assert!(sync["lastError"].is_null());
    assert_eq!(
        sync["m365ObjectId"],
        fake.user("alice@contoso.com").unwrap()["id"]
    );

    let list = api.ok("/api/v1/bindings?state=bound").await;
    assert_eq!(list["total"], 1);
    assert_eq!(list["items"][0]["username"], "alice");
    assert_eq!(list["items"][0]["state"], "bound");
    let unbound = api.ok("/api/v1/bindings?state=unbound&search=bo").await;
    assert_eq!(unbound["items"][0]["username"], "bob");
    let page = api.ok("/api/v1/bindings?limit=1&offset=1").await;
    assert_eq!(
        (
            page["total"].as_i64(),
            page["items"][0]["username"].as_str()
        ),
        (Some(2), Some("bob"))
    );
    api.get("/api/v1/bindings?state=bogus")
        .await
        .error(422, "validation_failed", Some("state"));
    api.get("/api/v1/bindings?offset=-1")
        .await
        .error(422, "validation_failed", Some("offset"));

    let counts = api.ok("/api/v1/sync").await;
    assert_eq!(counts["counts"]["bound"], 1);
    // Bob was never bound (no binding row): he counts as unbound.
    assert_eq!(counts["counts"]["unbound"], 1, "{counts}");
    assert_eq!(counts["failedJobs"], json!([]));

    // A bound user cannot be deleted.
    api.send("DELETE", "/api/v1/users/alice", None)
        .await
        .error(409, "conflict", None);

    // Bad requests.
    api.send("POST", "/api/v1/bindings", Some(json!({})))
        .await
        .error(422, "validation_failed", Some("users"));
    api.send(
        "POST",
        "/api/v1/bindings",
        Some(json!({"users": ["bob"], "all": true})),
    )
    .await
    .error(422, "validation_failed", Some("all"));
    api.send("POST", "/api/v1/bindings", Some(json!({"users": "bob"})))
        .await
        .error(422, "validation_failed", Some("users"));
    api.raw("POST", "/api/v1/bindings", "application/json", "[")
        .await
        .error(400, "bad_request", None);
    api.send(
        "POST",
        "/api/v1/bindings/unbind",
        Some(json!({"users": []})),
    )
    .await
    .error(422, "validation_failed", Some("users"));

    // Retry: nothing failed; an unknown user is a 404; the body is optional.
    let retry = api.send("POST", "/api/v1/bindings/retry", None).await;
    assert_eq!(
        (retry.status.as_u16(), retry.json["retried"].as_u64()),
        (202, Some(0))
    );
    let retry = api
        .send(
            "POST",
            "/api/v1/bindings/retry",
            Some(json!({"user": "alice"})),
        )
        .await;
    assert_eq!(retry.status, 202);
    api.send(
        "POST",
        "/api/v1/bindings/retry",
        Some(json!({"user": "nobody"})),
    )
    .await
    .error(404, "not_found", None);
    assert_eq!(app.events("m365_sync_retry").await[0].actor, "apikey:ops");

    // Unbind: the M365 account is blocked, then the user can be deleted.
    let unbound = api
        .send(
            "POST",
            "/api/v1/bindings/unbind",
            Some(json!({"users": ["alice", "bob"]})),
        )
        .await;
    assert_eq!(unbound.status, 202, "{}", unbound.text);
    assert_eq!(unbound.json["queued"], json!(["alice"]));
    assert_eq!(
        unbound.json["skipped"][0],
        json!({"user": "bob", "reason": "not bound"})
    );
    settled(&app, "alice", "unbound").await;
    assert_eq!(
        fake.user("alice@contoso.com").unwrap()["accountEnabled"],
        false
    );
    assert_eq!(app.events("m365_unbind").await[0].actor, "apikey:ops");
    let deleted = api.send("DELETE", "/api/v1/users/alice", None).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);

    // Bind all binds the rest.
    let all = api
        .send("POST", "/api/v1/bindings", Some(json!({"all": true})))
        .await;
    assert_eq!(all.json["queued"], json!(["bob"]));
    settled(&app, "bob", "bound").await;
}

#[tokio::test]
async fn binding_without_a_connection_is_a_conflict() {
    let app = TestApp::spawn().await;
    let api = Api::new(&app, "ops", AdminRole::Admin).await;
    create_user(&api, "alice").await;
    api.send(
        "POST",
        "/api/v1/bindings",
        Some(json!({"users": ["alice"]})),
    )
    .await
    .error(409, "m365_not_connected", None);
    let connection = api.ok("/api/v1/m365/connection").await;
    assert_eq!(connection["state"], "not_connected");
    api.get("/api/v1/m365/users")
        .await
        .error(409, "m365_not_connected", None);
    api.send("POST", "/api/v1/m365/imports", Some(json!({"all": true})))
        .await
        .error(409, "m365_not_connected", None);
    api.send(
        "POST",
        "/api/v1/m365/connection",
        Some(json!({"mode": "application"})),
    )
    .await
    .error(409, "m365_not_connected", None);
}

// ---- Microsoft 365 ----

#[tokio::test]
async fn the_connection_is_read_made_and_deactivated_with_confirmation() {
    let (app, fake) = connected().await;
    let api = Api::new(&app, "ops", AdminRole::Admin).await;
    let status = api.ok("/api/v1/m365/connection").await;
    assert_eq!(status["state"], "connected");
    assert_eq!(status["tenantId"], GraphFake::TENANT_ID);
    assert_eq!(status["defaultDomain"], "contoso.com");
    assert_eq!(status["mode"], "application");

    // Delegated: a consent URL for an admin to open; following it connects.
    let delegated = api
        .send(
            "POST",
            "/api/v1/m365/connection",
            Some(json!({"mode": "delegated"})),
        )
        .await;
    assert_eq!(delegated.status, 200, "{}", delegated.text);
    let url = delegated.json["consentUrl"].as_str().unwrap().to_string();
    assert!(url.starts_with(&fake.login_base_url()), "{url}");
    assert!(url.contains("code_challenge_method=S256"));
    let browser = app.browser();
    let at_microsoft = browser.get(&url).send().await.unwrap();
    assert_eq!(at_microsoft.status(), 302);
    let back = at_microsoft.headers()["location"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(browser.get(&back).send().await.unwrap().status(), 200);
    let after = api.ok("/api/v1/m365/connection").await;
    assert_eq!(
        (after["state"].as_str(), after["mode"].as_str()),
        (Some("connected"), Some("delegated"))
    );
    let connect = &app.events("m365_connect").await[0];
    assert_eq!(
        connect.actor, "apikey:ops",
        "the consent was started by the key"
    );

    let application = api
        .send(
            "POST",
            "/api/v1/m365/connection",
            Some(json!({"mode": "application"})),
        )
        .await;
    assert_eq!(application.status, 200, "{}", application.text);
    assert!(application.json["consentUrl"].is_null());
    assert_eq!(application.json["connection"]["mode"], "application");

    api.send(
        "POST",
        "/api/v1/m365/connection",
        Some(json!({"mode": "telepathy"})),
    )
    .await
    .error(422, "validation_failed", Some("mode"));
    api.send("POST", "/api/v1/m365/connection", Some(json!({})))
        .await
        .error(422, "validation_failed", Some("mode"));

    // Deactivation needs confirm=true and says what happens first.
    create_user(&api, "alice").await;
    api.send(
        "POST",
        "/api/v1/bindings",
        Some(json!({"users": ["alice"]})),
    )
    .await;
    settled(&app, "alice", "bound").await;
    let refused = api.send("DELETE", "/api/v1/m365/connection", None).await;
    refused.error(422, "validation_failed", Some("confirm"));
    let message = refused.json["error"]["message"].as_str().unwrap();
    assert!(message.contains("stay active"), "{message}");
    assert!(message.contains("bound again"), "{message}");
    api.send("DELETE", "/api/v1/m365/connection?confirm=false", None)
        .await
        .error(422, "validation_failed", Some("confirm"));
    api.send("DELETE", "/api/v1/m365/connection?confirm=maybe", None)
        .await
        .error(422, "validation_failed", Some("confirm"));
    assert_eq!(
        api.ok("/api/v1/m365/connection").await["state"],
        "connected"
    );

    let done = api
        .send("DELETE", "/api/v1/m365/connection?confirm=true", None)
        .await;
    assert_eq!(done.status, 200, "{}", done.text);
    assert_eq!(done.json["bindingsCleared"], 1);
    assert_eq!(done.json["connection"]["state"], "deactivated");
    assert_eq!(app.events("m365_deactivate").await[0].actor, "apikey:ops");
    let alice = api.ok("/api/v1/users/alice").await;
    assert_eq!(alice["state"], "active", "users stay active");

    // The body form of the confirmation works too (after reconnecting).
    api.send(
        "POST",
        "/api/v1/m365/connection",
        Some(json!({"mode": "application"})),
    )
    .await;
    let done = api
        .send(
            "DELETE",
            "/api/v1/m365/connection",
            Some(json!({"confirm": true})),
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.text);
}

#[tokio::test]
async fn tenant_users_are_listed_and_imported_in_the_background() {
    let (app, fake) = connected().await;
    let api = Api::new(&app, "ops", AdminRole::Admin).await;
    let mut ids = Vec::new();
    for (upn, given) in [
        ("adele.vance@contoso.com", "Adele"),
        ("ben.walters@contoso.com", "Ben"),
        ("taken@contoso.com", "Taken"),
        ("cara@contoso.com", "Cara"),
    ] {
        ids.push(fake.add_user(FakeUserSpec {
            upn: upn.into(),
            given_name: Some(given.into()),
            surname: Some("Tenant".into()),
            account_enabled: true,
            ..FakeUserSpec::default()
        }));
    }
    app.create_user("taken", "taken@contoso.com", PASSWORD)
        .await;

    let users = api.ok("/api/v1/m365/users").await;
    let adele = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["userPrincipalName"] == "adele.vance@contoso.com")
        .expect("listed");
    assert_eq!(
        (adele["imported"].as_bool(), adele["bound"].as_bool()),
        (Some(false), Some(false))
    );

    let started = api
        .send(
            "POST",
            "/api/v1/m365/imports",
            // By UPN or object ID (Ben's).
            Some(json!({"users": ["adele.vance@contoso.com", ids[1], "taken@contoso.com", "ghost@contoso.com"]})),
        )
        .await;
    assert_eq!(started.status, 202, "{}", started.text);
    let id = started.json["id"].as_str().unwrap().to_string();
    assert_eq!(
        started.headers["location"].to_str().unwrap(),
        format!("/api/v1/m365/imports/{id}")
    );
    let run = finished_run(&api, &id).await;
    assert_eq!(run["state"], "finished", "{run}");
    assert_eq!(run["startedBy"], "apikey:ops");
    assert!(run["finishedAt"].is_string());
    let results = run["results"].as_array().unwrap();
    let outcome = |upn: &str| {
        results
            .iter()
            .find(|r| r["userPrincipalName"] == upn)
            .map(|r| {
                (
                    r["outcome"].as_str().unwrap().to_string(),
                    r["message"].as_str().unwrap().to_string(),
                )
            })
    };
    assert_eq!(outcome("adele.vance@contoso.com").unwrap().0, "imported");
    assert_eq!(outcome("ben.walters@contoso.com").unwrap().0, "imported");
    let (taken, why) = outcome("taken@contoso.com").unwrap();
    assert_eq!(taken, "failed");
    assert!(why.contains("already exists"), "{why}");
    assert!(
        results
            .iter()
            .any(|r| r["outcome"] == "failed" && r["m365ObjectId"] == "ghost@contoso.com"),
        "{run}"
    );
    assert_eq!(
        (
            run["imported"].as_i64(),
            run["failed"].as_i64(),
            run["total"].as_i64()
        ),
        (Some(2), Some(2), Some(4))
    );
    assert_eq!(
        api.ok("/api/v1/users/adele.vance").await["email"],
        "adele.vance@contoso.com"
    );
    assert_eq!(
        api.ok("/api/v1/users/ben.walters").await["firstname"],
        "Ben"
    );
    assert_eq!(app.events("m365_import").await[0].actor, "apikey:ops");

    // Marks follow; importing everything imports only the rest.
    let users = api.ok("/api/v1/m365/users").await;
    let adele = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["userPrincipalName"] == "adele.vance@contoso.com")
        .unwrap();
    assert_eq!(
        (adele["imported"].as_bool(), adele["localUsername"].as_str()),
        (Some(true), Some("adele.vance"))
    );
    let all = api
        .send("POST", "/api/v1/m365/imports", Some(json!({"all": true})))
        .await;
    assert_eq!(all.status, 202);
    let run = finished_run(&api, all.json["id"].as_str().unwrap()).await;
    assert_eq!(run["imported"], 1, "only Cara is new: {run}");
    assert_eq!(api.ok("/api/v1/users/cara").await["firstname"], "Cara");

    let runs = api.ok("/api/v1/m365/imports").await;
    assert_eq!(runs.as_array().unwrap().len(), 2);
    assert_eq!(runs[0]["id"], all.json["id"], "newest first");
    api.get("/api/v1/m365/imports?limit=0")
        .await
        .error(422, "validation_failed", Some("limit"));
    api.get("/api/v1/m365/imports/no-such-run")
        .await
        .error(404, "not_found", None);
    api.send("POST", "/api/v1/m365/imports", Some(json!({})))
        .await
        .error(422, "validation_failed", Some("users"));
    api.send(
        "POST",
        "/api/v1/m365/imports",
        Some(json!({"all": true, "users": ["x"]})),
    )
    .await
    .error(422, "validation_failed", Some("all"));
    api.send(
        "POST",
        "/api/v1/m365/imports",
        Some(json!({"everyone": true})),
    )
    .await
    .error(422, "validation_failed", Some("everyone"));
}

#[tokio::test]
async fn the_attribute_export_table_is_read_and_changed() {
    let (app, _fake) = connected().await;
    let api = Api::new(&app, "ops", AdminRole::Admin).await;
    let table = api.ok("/api/v1/m365/attributes").await;
    let rows = table.as_array().unwrap();
    assert_eq!(rows.len(), 17);
    assert_eq!(rows.iter().filter(|r| r["always"] == true).count(), 5);
    assert!(rows
        .iter()
        .filter(|r| r["always"] == true)
        .all(|r| r["direction"] == "export"));
    let department = rows
        .iter()
        .find(|r| r["attribute"] == "department")
        .unwrap();
    assert_eq!(department["direction"], "exclude");
    assert_eq!(department["m365Attribute"], "department");

    let changed = api
        .send(
            "PUT",
            "/api/v1/m365/attributes/department",
            Some(json!({"direction": "export"})),
        )
        .await;
    assert_eq!(changed.status, 200, "{}", changed.text);
    assert_eq!(changed.json["direction"], "export");
    assert_eq!(changed.json["previous"], "exclude");
    let event = &app.events("integrationattribute_include").await[0];
    assert_eq!(event.actor, "apikey:ops");
    assert_eq!(event.target.as_deref(), Some("department"));
    let details: Value = serde_json::from_str(&event.details).unwrap();
    assert_eq!(
        (details["from"].as_str(), details["to"].as_str()),
        (Some("exclude"), Some("export"))
    );
    let table = api.ok("/api/v1/m365/attributes").await;
    assert!(table
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["attribute"] == "department" && r["direction"] == "export"));

    // The Graph property name works too; back to exclude records the exclude event.
    let graph_name = api
        .send(
            "PUT",
            "/api/v1/m365/attributes/officeLocation",
            Some(json!({"direction": "import"})),
        )
        .await;
    assert_eq!(graph_name.json["attribute"], "location");
    api.send(
        "PUT",
        "/api/v1/m365/attributes/department",
        Some(json!({"direction": "exclude"})),
    )
    .await;
    assert_eq!(
        app.events("integrationattribute_exclude").await[0].actor,
        "apikey:ops"
    );

    api.send(
        "PUT",
        "/api/v1/m365/attributes/firstname",
        Some(json!({"direction": "exclude"})),
    )
    .await
    .error(422, "validation_failed", Some("attribute"));
    api.send(
        "PUT",
        "/api/v1/m365/attributes/shoeSize",
        Some(json!({"direction": "export"})),
    )
    .await
    .error(404, "not_found", None);
    api.send(
        "PUT",
        "/api/v1/m365/attributes/department",
        Some(json!({"direction": "sideways"})),
    )
    .await
    .error(422, "validation_failed", Some("direction"));
    api.send("PUT", "/api/v1/m365/attributes/department", Some(json!({})))
        .await
        .error(422, "validation_failed", Some("direction"));
    api.raw(
        "PUT",
        "/api/v1/m365/attributes/department",
        "application/json",
        "direction=export",
    )
    .await
    .error(400, "bad_request", None);
}

// ---- events ----

#[tokio::test]
async fn events_are_filtered_paged_and_exported_as_json_lines() {
    let app = TestApp::spawn().await;
    let api = Api::new(&app, "hr", AdminRole::Admin).await;
    let t0 = Utc::now();
    for name in ["u1", "u2", "u3", "u4", "u5"] {
        create_user(&api, name).await;
    }
    api.send("POST", "/api/v1/users/u3/suspend", None).await;

    // An unknown type would match nothing: refused, naming the field.
    api.get("/api/v1/events?type=user_created")
        .await
        .error(422, "validation_failed", Some("type"));
    let page = api.ok("/api/v1/events?type=user_create&limit=2").await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["target"], "u5", "newest first");
    assert_eq!(items[0]["type"], "user_create");
    assert_eq!(items[0]["actor"], "apikey:hr");
    assert!(items[0]["details"].is_object());
    assert!(items[0]["id"].as_i64().unwrap() > items[1]["id"].as_i64().unwrap());
    // Follow the cursor to the end.
    let mut targets: Vec<String> = items
        .iter()
        .map(|e| e["target"].as_str().unwrap().into())
        .collect();
    let mut next = page["next"].as_i64();
    while let Some(before) = next {
        let page = api
            .ok(&format!(
                "/api/v1/events?type=user_create&limit=2&before={before}"
            ))
            .await;
        targets.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["target"].as_str().unwrap().to_string()),
        );
        next = page["next"].as_i64();
    }
    assert_eq!(targets, ["u5", "u4", "u3", "u2", "u1"]);

    let by_target = api.ok("/api/v1/events?target=u3").await;
    let types: Vec<&str> = by_target["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["user_suspend", "user_create"]);
    let by_actor = api.ok("/api/v1/events?actor=apikey:hr").await;
    assert_eq!(by_actor["items"].as_array().unwrap().len(), 6);
    assert!(api.ok("/api/v1/events?actor=admin:root").await["items"]
        .as_array()
        .unwrap()
        .is_empty());

    let since = (t0 - chrono::Duration::seconds(1)).to_rfc3339();
    let until_past =
        (t0 - chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let encoded = url::form_urlencoded::byte_serialize(since.as_bytes()).collect::<String>();
    let recent = api
        .ok(&format!("/api/v1/events?actor=apikey:hr&since={encoded}"))
        .await;
    assert_eq!(recent["items"].as_array().unwrap().len(), 6);
    let old = api.ok(&format!("/api/v1/events?until={until_past}")).await;
    assert!(old["items"].as_array().unwrap().is_empty());

    api.get("/api/v1/events?since=yesterday")
        .await
        .error(422, "validation_failed", Some("since"));
    api.get("/api/v1/events?before=x")
        .await
        .error(422, "validation_failed", Some("before"));
    api.get("/api/v1/events?limit=5000")
        .await
        .error(422, "validation_failed", Some("limit"));
    api.get("/api/v1/events?kind=x")
        .await
        .error(422, "validation_failed", Some("kind"));

    // JSON lines: the same filters, every matching event, one per line.
    let r = api.get("/api/v1/events.jsonl?actor=apikey:hr").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/x-ndjson");
    let lines: Vec<Value> = r
        .text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    assert_eq!(lines[0], by_actor["items"][0]);
    assert_eq!(lines[0]["type"], "user_suspend");
    let limited = api
        .get("/api/v1/events.jsonl?type=user_create&limit=3")
        .await;
    assert_eq!(limited.text.lines().count(), 3);
    api.get("/api/v1/events.jsonl?until=never").await.error(
        422,
        "validation_failed",
        Some("until"),
    );
}

/// The export streams more events than one page of its database reads.
#[tokio::test]
async fn the_json_lines_export_streams_the_whole_log() {
    let app = TestApp::spawn().await;
    let api = Api::new(&app, "hr", AdminRole::ReadOnly).await;
    let events: Vec<_> = (0..1234)
        .map(|i| {
            idbridge::events::NewEvent::new(
                Utc::now(),
                &Actor::System,
                idbridge::events::kind::SSO_LOGIN_SUCCESS,
                Some(format!("t{i}").as_str()),
            )
        })
        .collect();
    app.store.record_batch(&events, &[]).await.unwrap();
    let r = api.get("/api/v1/events.jsonl?type=sso_login_success").await;
    let lines: Vec<Value> = r
        .text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1234);
    let ids: Vec<i64> = lines.iter().map(|l| l["id"].as_i64().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "newest first, no repeats"
    );
    assert_eq!(lines.last().unwrap()["target"], "t0");
}
