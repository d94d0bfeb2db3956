//! Test support for the admin console and the JSON API: a signed-in admin's browser, API keys.

use chrono::Utc;
use idbridge::directory::AdminRole;
use idbridge::events::Actor;
use secrecy::ExposeSecret;

use super::{hidden_input, TestApp};

/// The password test admins choose at first sign-in.
pub const ADMIN_PASSWORD: &str = "Console-Passw0rd-2026";

/// A signed-in admin: a cookie-keeping client (redirects not followed) and the session's CSRF
/// token for forms.
pub struct AdminBrowser {
    pub client: reqwest::Client,
    pub csrf: String,
    pub username: String,
}

impl AdminBrowser {
    /// GET a console page; returns (status, body).
    pub async fn get(&self, app: &TestApp, path: &str) -> (u16, String) {
        let r = self.client.get(app.url(path)).send().await.expect("GET");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }

    /// POST a form with this session's CSRF token added; returns the response.
    pub async fn post(
        &self,
        app: &TestApp,
        path: &str,
        fields: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut form: Vec<(&str, &str)> = fields.to_vec();
        form.push(("csrf", &self.csrf));
        self.client
            .post(app.url(path))
            .form(&form)
            .send()
            .await
            .expect("POST")
    }
}

/// Creates an admin with `role`, signs in through the login form, replaces the one-time
/// password, and returns the signed-in browser.
pub async fn admin_browser(app: &TestApp, username: &str, role: AdminRole) -> AdminBrowser {
    let one_time = app
        .state()
        .directory
        .create_admin(&Actor::System, username, role, Utc::now())
        .await
        .expect("admin created");
    let client = app.browser();
    let login = client.get(app.url("/admin/login")).send().await.unwrap();
    assert_eq!(login.status(), 200);
    let page = login.text().await.unwrap();
    let token = hidden_input(&page, "csrf").expect("login form token");
    let signed_in = client
        .post(app.url("/admin/login"))
        .form(&[
            ("csrf", token.as_str()),
            ("username", username),
            ("password", one_time.expose_secret()),
            ("next", "/admin"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303, "signed in");
    assert_eq!(
        signed_in.headers()["location"],
        "/admin/password",
        "must change the one-time password"
    );
    let page = client
        .get(app.url("/admin/password"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = hidden_input(&page, "csrf").expect("session CSRF token");
    let changed = client
        .post(app.url("/admin/password"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("current", one_time.expose_secret()),
            ("new_password", ADMIN_PASSWORD),
            ("confirm", ADMIN_PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 303, "password changed");
    AdminBrowser {
        client,
        csrf,
        username: username.to_string(),
    }
}

/// A new API key with `role` (created directly through the directory).
pub async fn api_key(app: &TestApp, name: &str, role: AdminRole) -> String {
    app.state()
        .directory
        .create_api_key(&Actor::System, name, role, Utc::now())
        .await
        .expect("key created")
        .key
        .expose_secret()
        .to_string()
}

/// A client for the API with `key` as bearer token.
pub fn api_client(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {key}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}
