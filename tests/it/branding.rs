//! The organisation's branding on the employee pages: set in the console (a form with a file
//! upload) or the API, shown on the sign-in pages without a restart and on another node, and
//! bad input refused with a clear message while nothing is lost.

use idbridge::directory::AdminRole;
use serde_json::{json, Value};

use crate::support::console::{admin_browser, api_client, api_key};
use crate::support::TestApp;

/// The smallest valid PNG: one transparent pixel.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x00, 0x01, 0x00, 0x00,
    0x05, 0x00, 0x01, 0x0d, 0x0a, 0x2d, 0xb4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae,
    0x42, 0x60, 0x82,
];

const SVG: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" width="40" height="40"><circle cx="20" cy="20" r="18" fill="#aa3300"/></svg>"##;

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn text(client: &reqwest::Client, url: String) -> (u16, String) {
    let r = client.get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The console form: name, colour, an optional logo file.
async fn submit(
    browser: &crate::support::console::AdminBrowser,
    app: &TestApp,
    name: &str,
    colour: &str,
    logo: Option<(&str, Vec<u8>)>,
) -> (u16, String) {
    let mut form = reqwest::multipart::Form::new()
        .text("csrf", browser.csrf.clone())
        .text("name", name.to_string())
        .text("accent_colour", colour.to_string());
    if let Some((file_name, bytes)) = logo {
        form = form.part(
            "logo",
            reqwest::multipart::Part::bytes(bytes).file_name(file_name.to_string()),
        );
    }
    let r = browser
        .client
        .post(app.url("/admin/branding"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn branding_set_in_the_console_shows_on_the_sign_in_pages_and_bad_input_loses_nothing() {
    let app = TestApp::spawn().await;
    let admin = admin_browser(&app, "brand-admin", AdminRole::Admin).await;
    let (status, page) = admin.get(&app, "/admin/branding").await;
    assert_eq!(status, 200);
    assert!(page.contains("enctype=\"multipart/form-data\""), "{page}");

    let (status, body) = submit(
        &admin,
        &app,
        "Contoso Ltd",
        "#AA3300",
        Some(("logo.png", PNG.to_vec())),
    )
    .await;
    assert_eq!(status, 303, "{body}");

    // The employee pages: the name, the logo, the colour through the stylesheet.
    let employee = app.browser();
    let (_, login) = text(&employee, app.url("/login")).await;
    assert!(login.contains("Contoso Ltd"), "{login}");
    assert!(login.contains("/branding/logo?v="), "{login}");
    assert!(login.contains("/branding/style.css?v="), "{login}");
    let css = employee
        .get(app.url("/branding/style.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");
    let css = css.text().await.unwrap();
    assert!(css.contains("--accent: #aa3300"), "{css}");
    assert!(css.contains("--accent-text: #ffffff"), "{css}");
    let logo = employee
        .get(app.url("/branding/logo"))
        .send()
        .await
        .unwrap();
    assert_eq!(logo.headers()["content-type"], "image/png");
    assert_eq!(logo.bytes().await.unwrap().as_ref(), PNG);
    // The pages allow their own stylesheets and images, and still no inline script or style.
    let r = employee.get(app.url("/login")).send().await.unwrap();
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("style-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    let event = app.events("branding_changed").await;
    assert_eq!(event.len(), 1);
    assert!(
        event[0].details.contains("image/png"),
        "{}",
        event[0].details
    );

    // Bad input: a clear message, the typed values kept in the form, nothing saved.
    for (name, colour, logo, expected) in [
        ("Fabrikam", "red", None, "#rrggbb"),
        ("", "#112233", None, "organisation name is empty"),
        (
            "Fabrikam",
            "#112233",
            Some(("logo.gif", b"GIF89a\x01\x00".to_vec())),
            "neither a PNG nor an SVG",
        ),
        (
            "Fabrikam",
            "#112233",
            Some(("big.png", [PNG, &vec![0u8; 130 * 1024]].concat())),
            "the limit is",
        ),
        (
            "Fabrikam",
            "#112233",
            Some((
                "evil.svg",
                br#"<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>"#
                    .to_vec(),
            )),
            "must not have",
        ),
    ] {
        let (status, page) = submit(&admin, &app, name, colour, logo).await;
        assert_eq!(status, 422, "{expected}: {page}");
        assert!(page.contains(expected), "{expected}: {page}");
        assert!(page.contains("Nothing was saved"), "{page}");
        if !name.is_empty() {
            assert!(
                page.contains(&format!("value=\"{name}\"")),
                "typed name kept: {page}"
            );
        }
    }
    let (_, login) = text(&employee, app.url("/login")).await;
    assert!(
        login.contains("Contoso Ltd") && !login.contains("Fabrikam"),
        "{login}"
    );
    assert_eq!(
        employee
            .get(app.url("/branding/logo"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        PNG,
        "the logo is kept"
    );
    assert_eq!(app.events("branding_changed").await.len(), 1);

    // A read-only admin sees no save button and cannot post.
    let reader = admin_browser(&app, "brand-reader", AdminRole::ReadOnly).await;
    let (_, page) = reader.get(&app, "/admin/branding").await;
    assert!(!page.contains("Save branding"), "{page}");
    let (status, _) = submit(&reader, &app, "Reader Inc", "#000000", None).await;
    assert_eq!(status, 403);
    let (_, login) = text(&employee, app.url("/login")).await;
    assert!(!login.contains("Reader Inc"));
}

#[tokio::test]
async fn branding_through_the_api_reaches_another_node_and_svg_logos_cannot_script() {
    let app = TestApp::spawn().await;
    let key = api_key(&app, "branding", AdminRole::Admin).await;
    let api = api_client(&key);

    let r = api.get(app.url("/api/v1/branding")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["name"], "idbridge");
    assert_eq!(body["accentColour"], "#0b5cad");
    assert_eq!(body["logoUrl"], Value::Null);

    let other = app.spawn_node("node-b", "").await;

    let r = api
        .put(app.url("/api/v1/branding"))
        .json(&json!({"name": "Fabrikam", "accentColour": "#ffe600", "logoBase64": b64(SVG.as_bytes())}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["logoUrl"], "/branding/logo");
    assert_eq!(body["logoContentType"], "image/svg+xml");
    assert_eq!(body["updatedBy"], "apikey:branding");

    // An SVG is served as an image under a policy that runs nothing.
    let logo = reqwest::get(app.url("/branding/logo")).await.unwrap();
    assert_eq!(logo.headers()["content-type"], "image/svg+xml");
    let csp = logo.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.starts_with("default-src 'none'") && csp.contains("sandbox"),
        "{csp}"
    );
    assert_eq!(logo.headers()["x-content-type-options"], "nosniff");
    // A light colour gets dark button text.
    let (_, css) = text(&reqwest::Client::new(), app.url("/branding/style.css")).await;
    assert!(css.contains("--accent-text: #000000"), "{css}");

    // The other node reads it from the database within its reload interval.
    let mut seen = false;
    for _ in 0..60 {
        let (_, login) = text(&reqwest::Client::new(), other.url("/login")).await;
        if login.contains("Fabrikam") {
            seen = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(seen, "the other node shows the new branding");

    // Refusals name the field; nothing changes.
    for (request, field) in [
        (
            json!({"name": "X", "accentColour": "#12345"}),
            "accentColour",
        ),
        (json!({"name": "  ", "accentColour": "#123456"}), "name"),
        (
            json!({"name": "X", "accentColour": "#123456", "logoBase64": "***"}),
            "logo",
        ),
        (
            json!({"name": "X", "accentColour": "#123456", "logoBase64": b64(b"<html>hi</html>")}),
            "logo",
        ),
        (
            json!({"name": "X", "accentColour": "#123456", "logoBase64": b64(br#"<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>"#)}),
            "logo",
        ),
    ] {
        let r = api
            .put(app.url("/api/v1/branding"))
            .json(&request)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{request}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["field"], field, "{body}");
        assert!(
            body["error"]["message"].as_str().unwrap().len() > 20,
            "{body}"
        );
    }
    let body: Value = api
        .get(app.url("/api/v1/branding"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["name"], "Fabrikam");
    assert_eq!(body["logoContentType"], "image/svg+xml");

    // An empty logo removes it.
    let r = api
        .put(app.url("/api/v1/branding"))
        .json(&json!({"name": "Fabrikam", "accentColour": "#ffe600", "logoBase64": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let logo = reqwest::get(app.url("/branding/logo")).await.unwrap();
    assert_eq!(logo.status(), 404);
    assert_eq!(app.events("branding_changed").await.len(), 2);
}
