//! The attribute catalogue round-trips every attribute through the CLI, the API and the
//! console under the same product name.

use idbridge::attributes::{AttributeSpec, Kind, CATALOGUE};
use idbridge::directory::AdminRole;
use serde_json::{Map, Value};

use crate::console_pages::{edit_form, unescape};
use crate::support::console::{admin_browser, api_client, api_key};
use crate::support::TestApp;

/// A distinct, valid value of `spec` for the surface `via` (`cli`, `api`, `console`).
fn value(spec: &AttributeSpec, via: &str) -> String {
    match spec.kind {
        Kind::Username => format!("{via}-user"),
        Kind::Email if spec.name == "email" => format!("{via}.user@contoso.com"),
        Kind::Email => format!("{via}.private@home.example"),
        Kind::Phone => format!("+31 {} 555 {}", via.len(), spec.max),
        // The manager is another user.
        Kind::UserRef => "boss".to_string(),
        Kind::Text => format!("{} via {via}", spec.label),
    }
}

/// The value at a product name in a JSON user (nested at the dots).
fn at<'v>(json: &'v Value, name: &str) -> &'v Value {
    name.split('.').fold(json, |v, part| &v[part])
}

/// Every attribute has its value under its product name in an API or CLI JSON user.
fn assert_json(json: &Value, via: &str, read: &str) {
    for spec in CATALOGUE {
        assert_eq!(
            at(json, spec.name),
            &Value::String(value(spec, via)),
            "{} set via {via}, read via {read}: {json:#}",
            spec.name
        );
    }
}

/// The schema of a product name in a component of the OpenAPI document (nested at the dots).
fn schema_at<'d>(doc: &'d Value, component: &str, name: &str) -> &'d Value {
    let resolve = |v: &'d Value| match v["$ref"].as_str() {
        Some(r) => &doc["components"]["schemas"][r.rsplit('/').next().unwrap()],
        None => v,
    };
    name.split('.').fold(
        resolve(&doc["components"]["schemas"][component]),
        |schema, part| resolve(&schema["properties"][part]),
    )
}

#[tokio::test]
async fn the_attribute_catalogue_round_trips_every_attribute_through_cli_api_and_console() {
    let app = TestApp::spawn().await;
    app.create_user("boss", "boss@contoso.com", "Chief pw 1!x")
        .await;
    let dir = tempfile::tempdir().unwrap();
    let api = api_client(&api_key(&app, "ci", AdminRole::Admin).await);
    let admin = admin_browser(&app, "root", AdminRole::Admin).await;
    let get = |path: String| {
        let api = api.clone();
        let url = app.url(&path);
        async move {
            let r = api.get(url).send().await.unwrap();
            assert_eq!(r.status(), 200, "GET {path}");
            r.json::<Value>().await.unwrap()
        }
    };

    // The OpenAPI document describes every attribute under its name, for answers and bodies.
    let doc = get("/api/v1/openapi.json".into()).await;
    for spec in CATALOGUE {
        for component in ["UserAttributes", "NewUser", "UserUpdate"] {
            let schema = schema_at(&doc, component, spec.name);
            assert!(
                schema["type"].to_string().contains("string"),
                "{component} documents {}: {schema}",
                spec.name
            );
        }
    }

    // CLI → API and console: `--<product name> value` for every attribute.
    let username = value(&CATALOGUE[0], "cli");
    let mut args = vec!["user".to_string(), "add".into(), username.clone()];
    for spec in CATALOGUE.iter().filter(|s| s.kind != Kind::Username) {
        args.push(format!("--{}", spec.name));
        args.push(value(spec, "cli"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    app.cli(dir.path(), &args).await;
    let json = get(format!("/api/v1/users/{username}")).await;
    assert_json(&json, "cli", "api");
    let id = json["id"].as_str().unwrap().to_string();
    let (status, page) = admin.get(&app, &format!("/admin/users/{id}")).await;
    assert_eq!(status, 200);
    let page = unescape(&page);
    let form: Map<String, Value> = edit_form(&page)
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    for spec in CATALOGUE {
        let expected = value(spec, "cli");
        // An admin who can write sees each value once, in the edit form.
        assert_eq!(
            form.get(spec.name),
            Some(&Value::String(expected)),
            "{} in the console's edit form",
            spec.name
        );
    }

    // API → CLI: a body nested at the dots of the product names.
    let mut body = Map::new();
    for spec in CATALOGUE {
        let mut level = &mut body;
        let mut parts: Vec<&str> = spec.name.split('.').collect();
        let leaf = parts.pop().unwrap();
        for part in parts {
            level = level
                .entry(part)
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .unwrap();
        }
        level.insert(leaf.into(), Value::String(value(spec, "api")));
    }
    let r = api
        .post(app.url("/api/v1/users"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let shown = app
        .cli(dir.path(), &["user", "show", "api-user", "--json"])
        .await;
    assert_json(&serde_json::from_str(&shown).unwrap(), "api", "cli");
    let table = app.cli(dir.path(), &["user", "show", "api-user"]).await;
    for spec in CATALOGUE {
        let line = format!("{:<30}{}", spec.name, value(spec, "api"));
        assert!(table.contains(&line), "{line:?} in {table}");
    }

    // Console → API: the create form's fields are the product names.
    let mut fields: Vec<(String, String)> = CATALOGUE
        .iter()
        .map(|s| (s.name.to_string(), value(s, "console")))
        .collect();
    fields.push(("password".into(), String::new()));
    fields.push(("confirm".into(), String::new()));
    let refs: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let r = admin.post(&app, "/admin/users", &refs).await;
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
    assert_json(
        &get("/api/v1/users/console-user".into()).await,
        "console",
        "api",
    );

    // Console edit → API: every field of the edit form changes the attribute of its name.
    let (_, page) = admin.get(&app, &format!("/admin/users/{id}")).await;
    let edited: Vec<(String, String)> = edit_form(&page)
        .into_iter()
        .map(|(name, old)| {
            let new = CATALOGUE
                .iter()
                .find(|s| s.name == name)
                .map_or(old, |s| value(s, "edit"));
            (name, new)
        })
        .collect();
    let refs: Vec<(&str, &str)> = edited
        .iter()
        .filter(|(k, _)| !k.starts_with("password") && k != "confirm")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let r = admin.post(&app, &format!("/admin/users/{id}"), &refs).await;
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
    assert_json(&get(format!("/api/v1/users/{id}")).await, "edit", "api");
}
