//! Self-test of the identity-platform / Graph fake, driven with plain reqwest.

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use serde_json::{json, Value};

use crate::support::graph_fake::{FakeUserSpec, GraphFake};

const REDIRECT: &str = "http://localhost:9/m365/callback";
const SCOPES: &str = "openid profile offline_access https://graph.microsoft.com/User.ReadWrite.All https://graph.microsoft.com/Domain.Read.All";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn pkce() -> (String, String) {
    let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk-extra".to_string();
    let challenge = B64URL.encode(openssl::sha::sha256(verifier.as_bytes()));
    (verifier, challenge)
}

/// Runs /authorize and returns the code from the redirect.
async fn authorize(fake: &GraphFake, challenge: &str) -> String {
    let url = url::Url::parse_with_params(
        &format!(
            "{}/organizations/oauth2/v2.0/authorize",
            fake.login_base_url()
        ),
        &[
            ("client_id", GraphFake::CLIENT_ID),
            ("response_type", "code"),
            ("redirect_uri", REDIRECT),
            ("scope", SCOPES),
            ("state", "st4te"),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ],
    )
    .unwrap();
    let resp = client().get(url).send().await.unwrap();
    assert_eq!(resp.status(), 302);
    let loc = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    assert!(loc.as_str().starts_with(REDIRECT));
    let q: HashMap<_, _> = loc.query_pairs().into_owned().collect();
    assert_eq!(q["state"], "st4te");
    q["code"].clone()
}

async fn token(fake: &GraphFake, form: &[(&str, &str)]) -> (u16, Value) {
    let resp = client()
        .post(format!(
            "{}/organizations/oauth2/v2.0/token",
            fake.login_base_url()
        ))
        .form(form)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn delegated_tokens(fake: &GraphFake) -> Value {
    fake.register_redirect_uri(REDIRECT);
    let (verifier, challenge) = pkce();
    let code = authorize(fake, &challenge).await;
    let (status, body) = token(
        fake,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", GraphFake::CLIENT_ID),
            ("client_secret", GraphFake::CLIENT_SECRET),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn app_token(fake: &GraphFake) -> String {
    let resp = client()
        .post(format!(
            "{}/{}/oauth2/v2.0/token",
            fake.login_base_url(),
            GraphFake::TENANT_ID
        ))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", GraphFake::CLIENT_ID),
            ("client_secret", GraphFake::CLIENT_SECRET),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body.get("refresh_token").is_none(),
        "no refresh token app-only"
    );
    body["access_token"].as_str().unwrap().to_string()
}

async fn graph(
    fake: &GraphFake,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let url = if path.starts_with("http") {
        path.to_string()
    } else {
        format!("{}{path}", fake.graph_base_url())
    };
    let mut req = client().request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    };
    (status, headers, v)
}

#[tokio::test]
async fn graph_fake_auth_code_with_pkce_and_refresh_rotation() {
    let fake = GraphFake::start().await;
    let body = delegated_tokens(&fake).await;
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    let rt1 = body["refresh_token"].as_str().unwrap().to_string();
    let id_token = body["id_token"].as_str().unwrap();
    let claims: Value =
        serde_json::from_slice(&B64URL.decode(id_token.split('.').nth(1).unwrap()).unwrap())
            .unwrap();
    assert_eq!(claims["tid"], GraphFake::TENANT_ID);
    assert_eq!(claims["preferred_username"], GraphFake::ADMIN_UPN);

    // The access token works on Graph; request ids are echoed.
    let at = body["access_token"].as_str().unwrap();
    let resp = client()
        .get(format!("{}/domains", fake.graph_base_url()))
        .bearer_auth(at)
        .header("client-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["client-request-id"], "abc-123");
    assert!(resp.headers().contains_key("request-id"));

    // Refresh rotates; the old refresh token is still valid until revoked.
    let refresh = |rt: String| {
        let fake = &fake;
        async move {
            token(
                fake,
                &[
                    ("grant_type", "refresh_token"),
                    ("client_id", GraphFake::CLIENT_ID),
                    ("client_secret", GraphFake::CLIENT_SECRET),
                    ("refresh_token", &rt),
                ],
            )
            .await
        }
    };
    let (s, b) = refresh(rt1.clone()).await;
    assert_eq!(s, 200, "{b}");
    let rt2 = b["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rt1, rt2);
    assert_eq!(refresh(rt1.clone()).await.0, 200);
    fake.revoke_refresh_tokens();
    let (s, b) = refresh(rt2).await;
    assert_eq!(s, 400);
    assert_eq!(b["error"], "invalid_grant");
    assert_eq!(b["error_codes"][0], 50173);
    let grants: Vec<_> = fake
        .token_requests()
        .iter()
        .map(|r| r["grant_type"].clone())
        .collect();
    assert_eq!(
        grants,
        [
            "authorization_code",
            "refresh_token",
            "refresh_token",
            "refresh_token"
        ]
    );
}

#[tokio::test]
async fn graph_fake_pkce_mismatch_reuse_and_bad_secret_are_refused() {
    let fake = GraphFake::start().await;
    fake.register_redirect_uri(REDIRECT);
    let (_, challenge) = pkce();
    let code = authorize(&fake, &challenge).await;
    let form = |verifier: &'static str, secret: &'static str| {
        vec![
            ("grant_type", "authorization_code"),
            ("client_id", GraphFake::CLIENT_ID),
            ("client_secret", secret),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
        ]
    };
    let mut f = form(
        "wrong-verifier-wrong-verifier-wrong-verifier",
        GraphFake::CLIENT_SECRET,
    );
    f.push(("code", &code));
    let (s, b) = token(&fake, &f).await;
    assert_eq!(s, 400);
    assert_eq!(b["error"], "invalid_grant");
    assert!(
        b["error_description"]
            .as_str()
            .unwrap()
            .starts_with("AADSTS501481"),
        "{b}"
    );

    let (verifier, _) = pkce();
    let verifier: &'static str = Box::leak(verifier.into_boxed_str());
    let mut f = form(verifier, "not-the-secret");
    f.push(("code", &code));
    let (s, b) = token(&fake, &f).await;
    assert_eq!(s, 401);
    assert_eq!(b["error"], "invalid_client");
    assert_eq!(b["error_codes"][0], 7000215);

    let mut f = form(verifier, GraphFake::CLIENT_SECRET);
    f.push(("code", &code));
    assert_eq!(token(&fake, &f).await.0, 200);
    let (s, b) = token(&fake, &f).await;
    assert_eq!(s, 400, "a code is single-use");
    assert_eq!(b["error_codes"][0], 54005);

    // An unregistered redirect URI is never redirected to.
    let resp = client()
        .get(format!(
            "{}/organizations/oauth2/v2.0/authorize?client_id={}&response_type=code&scope=openid&redirect_uri=https%3A%2F%2Fevil.example%2F",
            fake.login_base_url(),
            GraphFake::CLIENT_ID
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("AADSTS50011"));

    // Consent denied goes back to the app with state.
    fake.deny_next_consent();
    let resp = client()
        .get(format!(
            "{}/organizations/oauth2/v2.0/authorize?client_id={}&response_type=code&scope=openid&state=s1&redirect_uri={}",
            fake.login_base_url(),
            GraphFake::CLIENT_ID,
            url::form_urlencoded::byte_serialize(REDIRECT.as_bytes()).collect::<String>()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    let loc = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    let q: HashMap<_, _> = loc.query_pairs().into_owned().collect();
    assert_eq!(q["error"], "access_denied");
    assert!(q["error_description"].starts_with("AADSTS65004"));
    assert_eq!(q["state"], "s1");
}

#[tokio::test]
async fn graph_fake_client_credentials_and_token_errors() {
    let fake = GraphFake::start().await;
    let at = app_token(&fake).await;
    let (s, _, _) = graph(&fake, &at, reqwest::Method::GET, "/users", None).await;
    assert_eq!(s, 200);
    // Scope without /.default.
    let resp = client()
        .post(format!(
            "{}/{}/oauth2/v2.0/token",
            fake.login_base_url(),
            GraphFake::TENANT_ID
        ))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", GraphFake::CLIENT_ID),
            ("client_secret", GraphFake::CLIENT_SECRET),
            ("scope", "https://graph.microsoft.com/User.Read.All"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["error"], "invalid_scope");
    assert_eq!(b["error_codes"][0], 1002012);
    // Expired and missing tokens on Graph.
    fake.expire_access_tokens();
    let (s, _, b) = graph(&fake, &at, reqwest::Method::GET, "/users", None).await;
    assert_eq!(s, 401);
    assert_eq!(b["error"]["code"], "InvalidAuthenticationToken");
    assert_eq!(
        b["error"]["message"],
        "Access token has expired or is not yet valid."
    );
    assert!(b["error"]["innerError"]["request-id"].is_string());
    let (s, _, b) = graph(&fake, "", reqwest::Method::GET, "/users", None).await;
    assert_eq!(s, 401);
    assert_eq!(b["error"]["message"], "Access token is empty.");
}

#[tokio::test]
async fn graph_fake_pages_selects_and_filters_users() {
    let fake = GraphFake::start().await;
    fake.add_domain("contoso.com", false, true);
    fake.add_users(250, "contoso.com");
    let at = app_token(&fake).await;
    let mut next = Some(format!(
        "{}/users?$top=100&$select=id,userPrincipalName,accountEnabled",
        fake.graph_base_url()
    ));
    let mut pages = Vec::new();
    while let Some(url) = next {
        let (s, _, b) = graph(&fake, &at, reqwest::Method::GET, &url, None).await;
        assert_eq!(s, 200, "{b}");
        pages.push(b["value"].as_array().unwrap().len());
        let first = &b["value"][0];
        assert_eq!(
            first.as_object().unwrap().len(),
            3,
            "only the selected properties: {first}"
        );
        assert_eq!(first["accountEnabled"], true);
        next = b["@odata.nextLink"].as_str().map(str::to_string);
        if let Some(n) = &next {
            assert!(
                n.contains("$skiptoken=") && n.contains("$top=100") && n.contains("$select="),
                "{n}"
            );
        }
    }
    assert_eq!(pages, [100, 100, 50]);

    // Default property set without $select; $top bounds.
    let (_, _, b) = graph(&fake, &at, reqwest::Method::GET, "/users?$top=1", None).await;
    let u = b["value"][0].as_object().unwrap();
    assert!(u.contains_key("businessPhones") && !u.contains_key("accountEnabled"));
    let (s, _, b) = graph(&fake, &at, reqwest::Method::GET, "/users?$top=1000", None).await;
    assert_eq!(s, 400);
    assert_eq!(b["error"]["code"], "Request_UnsupportedQuery");

    // $filter by UPN (case-insensitive) and single GET / 404.
    let (_, _, b) = graph(
        &fake,
        &at,
        reqwest::Method::GET,
        "/users?$filter=userPrincipalName%20eq%20'USER0042@contoso.com'&$select=id,userPrincipalName",
        None,
    )
    .await;
    assert_eq!(b["value"].as_array().unwrap().len(), 1);
    assert_eq!(b["value"][0]["userPrincipalName"], "user0042@contoso.com");
    let (s, _, b) = graph(
        &fake,
        &at,
        reqwest::Method::GET,
        "/users/nobody@contoso.com",
        None,
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(b["error"]["code"], "Request_ResourceNotFound");
}

#[tokio::test]
async fn graph_fake_validates_user_creation_and_update() {
    let fake = GraphFake::start().await;
    fake.add_domain("contoso.com", false, true);
    fake.add_domain("fed.contoso.com", true, false);
    let at = app_token(&fake).await;
    let user = |upn: &str, pw: &str| {
        json!({"accountEnabled": true, "displayName": "Adele Vance", "mailNickname": "AdeleV",
               "userPrincipalName": upn,
               "passwordProfile": {"forceChangePasswordNextSignIn": false, "password": pw}})
    };
    let post = |body: Value| graph(&fake, &at, reqwest::Method::POST, "/users", Some(body));
    let msg = |b: &Value| b["error"]["message"].as_str().unwrap().to_string();

    let mut missing = user("adele@contoso.com", "xWwvJ]6NMw+bWH-d");
    missing.as_object_mut().unwrap().remove("mailNickname");
    let (s, _, b) = post(missing).await;
    assert_eq!(s, 400);
    assert_eq!(
        msg(&b),
        "Property mailNickname value is required but is empty or missing."
    );
    let (_, _, b) = post(user("adele@fabrikam.com", "xWwvJ]6NMw+bWH-d")).await;
    assert!(msg(&b).starts_with("The domain portion of the userPrincipalName property is invalid."));
    let (_, _, b) = post(user("adele@fed.contoso.com", "xWwvJ]6NMw+bWH-d")).await;
    assert_eq!(
        msg(&b),
        "SourceAnchor is a required property for creation of a federated user."
    );
    let (_, _, b) = post(user("adele@contoso.com", "password")).await;
    assert!(msg(&b).starts_with("The specified password does not comply"));

    let (s, _, b) = post(user("adele@contoso.com", "xWwvJ]6NMw+bWH-d")).await;
    assert_eq!(s, 201, "{b}");
    let id = b["id"].as_str().unwrap().to_string();
    assert_eq!(b["userPrincipalName"], "adele@contoso.com");
    let (s, _, b) = post(user("ADELE@contoso.com", "xWwvJ]6NMw+bWH-d")).await;
    assert_eq!(s, 400);
    assert_eq!(b["error"]["code"], "Request_BadRequest");
    assert_eq!(b["error"]["details"][0]["code"], "ObjectConflict");
    assert_eq!(b["error"]["details"][0]["target"], "userPrincipalName");

    // PATCH: partial, 204; password and accountEnabled stored.
    let (s, _, _) = graph(
        &fake,
        &at,
        reqwest::Method::PATCH,
        &format!("/users/{id}"),
        Some(json!({"accountEnabled": false, "passwordProfile": {"password": "N3w-Passw0rd!"}})),
    )
    .await;
    assert_eq!(s, 204);
    let stored = fake.user("adele@contoso.com").unwrap();
    assert_eq!(stored["accountEnabled"], false);
    assert_eq!(stored["passwordProfile"]["password"], "N3w-Passw0rd!");
    assert_eq!(stored["displayName"], "Adele Vance");
    let (s, _, _) = graph(
        &fake,
        &at,
        reqwest::Method::PATCH,
        &format!("/users/{id}"),
        Some(json!({"businessPhones": ["1", "2"]})),
    )
    .await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn graph_fake_batch_limits_correlation_and_throttling() {
    let fake = GraphFake::start().await;
    let a = fake.add_user(FakeUserSpec {
        upn: "a@contoso.onmicrosoft.com".into(),
        account_enabled: true,
        ..FakeUserSpec::default()
    });
    let at = app_token(&fake).await;
    let item =
        |id: usize| json!({"id": id.to_string(), "method": "GET", "url": format!("/users/{a}")});

    let too_many: Vec<Value> = (1..=21).map(item).collect();
    let (s, _, b) = graph(
        &fake,
        &at,
        reqwest::Method::POST,
        "/$batch",
        Some(json!({"requests": too_many})),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    let dup = json!({"requests": [item(1), item(1)]});
    assert_eq!(
        graph(&fake, &at, reqwest::Method::POST, "/$batch", Some(dup))
            .await
            .0,
        400
    );
    let no_ct = json!({"requests": [{"id": "1", "method": "PATCH", "url": format!("users/{a}"), "body": {"jobTitle": "x"}}]});
    assert_eq!(
        graph(&fake, &at, reqwest::Method::POST, "/$batch", Some(no_ct))
            .await
            .0,
        400
    );

    // Items run in order (3 after its dependency 2); responses come back out of order.
    fake.throttle_next(1, "0.05");
    let reqs = json!({"requests": [
        {"id": "1", "method": "GET", "url": "users/nobody@contoso.onmicrosoft.com"},
        {"id": "2", "method": "PATCH", "url": format!("/users/{a}"),
         "headers": {"Content-Type": "application/json"}, "body": {"jobTitle": "Boss"}},
        {"id": "3", "dependsOn": ["2"], "method": "GET", "url": format!("/users/{a}?$select=jobTitle")},
        item(4),
    ]});
    // Every item counts: the throttle hits the first item run (id 1).
    let (s, _, b) = graph(&fake, &at, reqwest::Method::POST, "/$batch", Some(reqs)).await;
    assert_eq!(s, 200);
    let responses = b["responses"].as_array().unwrap();
    let ids: Vec<&str> = responses
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_ne!(ids, ["1", "2", "3", "4"], "not in request order");
    let by_id: HashMap<&str, &Value> = responses
        .iter()
        .map(|r| (r["id"].as_str().unwrap(), r))
        .collect();
    assert_eq!(by_id["1"]["status"], 429);
    assert_eq!(by_id["1"]["headers"]["Retry-After"], "0.05");
    assert_eq!(by_id["2"]["status"], 204);
    assert_eq!(by_id["3"]["status"], 200);
    assert_eq!(by_id["3"]["body"]["jobTitle"], "Boss");
    assert_eq!(by_id["4"]["status"], 200);

    // A failed dependency gives 424.
    let reqs = json!({"requests": [
        {"id": "a", "method": "GET", "url": "/users/missing@contoso.onmicrosoft.com"},
        {"id": "b", "dependsOn": ["a"], "method": "GET", "url": format!("/users/{a}")},
    ]});
    let (_, _, b) = graph(&fake, &at, reqwest::Method::POST, "/$batch", Some(reqs)).await;
    let by_id: HashMap<&str, &Value> = b["responses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_str().unwrap(), r))
        .collect();
    assert_eq!(by_id["a"]["status"], 404);
    assert_eq!(by_id["b"]["status"], 424);
}

#[tokio::test]
async fn graph_fake_throttles_and_fails_on_request() {
    let fake = GraphFake::start().await;
    let at = app_token(&fake).await;
    fake.throttle_next(1, "1");
    fake.fail_next(1, 503);
    let (s, h, b) = graph(&fake, &at, reqwest::Method::GET, "/users", None).await;
    assert_eq!(s, 429);
    assert_eq!(h["retry-after"], "1");
    assert_eq!(b["error"]["code"], "TooManyRequests");
    assert_eq!(b["error"]["message"], "Please retry again later.");
    let (s, h, b) = graph(&fake, &at, reqwest::Method::GET, "/users", None).await;
    assert_eq!(s, 503);
    assert_eq!(h["retry-after"], "0.05");
    assert_eq!(b["error"]["code"], "serviceNotAvailable");
    let (s, _, _) = graph(&fake, &at, reqwest::Method::GET, "/users", None).await;
    assert_eq!(s, 200);
    let graph_calls = fake
        .requests()
        .iter()
        .filter(|(m, p)| m == "GET" && p.starts_with("/v1.0/users"))
        .count();
    assert_eq!(graph_calls, 3);
}

/// A self-signed certificate and a client assertion signed with its key.
fn assertion(
    aud: &str,
    sign_with: Option<&openssl::pkey::PKey<openssl::pkey::Private>>,
) -> (String, String) {
    use openssl::{asn1::Asn1Time, hash::MessageDigest, pkey::PKey, rsa::Rsa, x509};
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = x509::X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "idbridge-app").unwrap();
    let name = name.build();
    let mut b = x509::X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
        .unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    let cert = b.build();
    let der = cert.to_der().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = json!({"alg": "RS256", "typ": "JWT",
                        "x5t#S256": B64URL.encode(openssl::sha::sha256(&der))});
    let claims = json!({"aud": aud, "iss": GraphFake::CLIENT_ID, "sub": GraphFake::CLIENT_ID,
                        "jti": "j1", "nbf": now, "iat": now, "exp": now + 300});
    let input = format!(
        "{}.{}",
        B64URL.encode(header.to_string()),
        B64URL.encode(claims.to_string())
    );
    let mut signer =
        openssl::sign::Signer::new(MessageDigest::sha256(), sign_with.unwrap_or(&key)).unwrap();
    let sig = signer.sign_oneshot_to_vec(input.as_bytes()).unwrap();
    let pem = String::from_utf8(cert.to_pem().unwrap()).unwrap();
    (format!("{input}.{}", B64URL.encode(sig)), pem)
}

#[tokio::test]
async fn graph_fake_client_assertion_is_checked() {
    let fake = GraphFake::start().await;
    let endpoint = format!(
        "{}/{}/oauth2/v2.0/token",
        fake.login_base_url(),
        GraphFake::TENANT_ID
    );
    let post = |jwt: String| {
        let endpoint = endpoint.clone();
        async move {
            let resp = client()
                .post(endpoint)
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", GraphFake::CLIENT_ID),
                    ("scope", "https://graph.microsoft.com/.default"),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", jwt.as_str()),
                ])
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    let (jwt, pem) = assertion(&endpoint, None);
    fake.register_certificate(&pem);
    let (s, b) = post(jwt).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(fake.client_auth_methods(), ["private_key_jwt"]);
    // Wrong audience; then a signature by another key for a registered thumbprint.
    let (s, b) = post(
        assertion(
            "https://login.microsoftonline.com/x/oauth2/v2.0/token",
            None,
        )
        .0,
    )
    .await;
    assert_eq!((s, b["error"].as_str()), (401, Some("invalid_client")));
    let other = openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
    let (forged, forged_pem) = assertion(&endpoint, Some(&other));
    fake.register_certificate(&forged_pem);
    let (s, b) = post(forged).await;
    assert_eq!((s, b["error_codes"][0].as_u64()), (401, Some(50012)), "{b}");
}

/// Sends `$batch` items; returns the sub-responses by id.
async fn batch(fake: &GraphFake, at: &str, requests: Value) -> HashMap<String, Value> {
    let (s, _, b) = graph(
        fake,
        at,
        reqwest::Method::POST,
        "/$batch",
        Some(json!({ "requests": requests })),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    b["responses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_str().unwrap().to_string(), r.clone()))
        .collect()
}

/// GET with extra headers.
async fn get_with(
    at: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = client().get(url).bearer_auth(at);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    };
    (status, headers, v)
}

/// Follows a delta round from `url` to its deltaLink; returns (page sizes, items, deltaLink).
async fn delta_round(
    fake: &GraphFake,
    at: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> (Vec<usize>, Vec<Value>, String) {
    let mut next = url.to_string();
    let mut sizes = Vec::new();
    let mut items = Vec::new();
    loop {
        let (s, _, b) = get_with(at, &next, headers).await;
        assert_eq!(s, 200, "{b}");
        let value = b["value"].as_array().unwrap();
        sizes.push(value.len());
        items.extend(value.iter().cloned());
        if let Some(n) = b["@odata.nextLink"].as_str() {
            assert!(
                n.starts_with(&format!(
                    "{}/users/delta?$skiptoken=",
                    fake.graph_base_url()
                )),
                "{n}"
            );
            assert!(b.get("@odata.deltaLink").is_none());
            next = n.to_string();
        } else {
            let d = b["@odata.deltaLink"].as_str().expect("a deltaLink");
            assert!(
                d.starts_with(&format!(
                    "{}/users/delta?$deltatoken=",
                    fake.graph_base_url()
                )),
                "{d}"
            );
            return (sizes, items, d.to_string());
        }
    }
}

fn by_id(items: &[Value]) -> HashMap<String, Value> {
    items
        .iter()
        .map(|i| (i["id"].as_str().unwrap().to_string(), i.clone()))
        .collect()
}

#[tokio::test]
async fn graph_fake_delta_rounds_track_selected_changes() {
    let fake = GraphFake::start().await;
    fake.add_domain("contoso.com", false, true);
    let ids = fake.add_users(5, "contoso.com");
    fake.set_manager_in_m365(&ids[0], Some(&ids[1]));
    fake.set_delta_page_size(2);
    let at = app_token(&fake).await;
    let start = format!(
        "{}/users/delta?$select=displayName,jobTitle,department,manager",
        fake.graph_base_url()
    );

    // Initial round: every user, in pages, then a deltaLink; never-set properties left out.
    let (sizes, items, link) = delta_round(&fake, &at, &start, &[]).await;
    assert_eq!(sizes, [2, 2, 1]);
    let got = by_id(&items);
    assert_eq!(got.len(), 5);
    let first = &got[&ids[0]];
    assert_eq!(first["displayName"], "User 0001");
    assert!(first.get("jobTitle").is_none(), "{first}");
    assert!(first.get("userPrincipalName").is_none(), "not selected");
    assert_eq!(
        first["manager@delta"],
        json!([{"@odata.type": "#microsoft.graph.user", "id": ids[1]}])
    );
    assert!(got[&ids[1]].get("manager@delta").is_none());

    // No changes: an empty page and a deltaLink.
    let (sizes, _, link) = delta_round(&fake, &at, &link, &[]).await;
    assert_eq!(sizes, [0]);

    // A selected property changed through Graph, an unselected one in the portal.
    let (s, _, _) = graph(
        &fake,
        &at,
        reqwest::Method::PATCH,
        &format!("/users/{}", ids[1]),
        Some(json!({"jobTitle": "Engineer"})),
    )
    .await;
    assert_eq!(s, 204);
    fake.set_user_property("user0003@contoso.com", "city", json!("Oslo"));
    // Writing the value a property already has is no change.
    let (s, _, _) = graph(
        &fake,
        &at,
        reqwest::Method::PATCH,
        &format!("/users/{}", ids[3]),
        Some(json!({"displayName": "User 0004"})),
    )
    .await;
    assert_eq!(s, 204);
    let (_, items, link) = delta_round(&fake, &at, &link, &[]).await;
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(
        items[0],
        json!({"id": ids[1], "displayName": "User 0002", "jobTitle": "Engineer"})
    );

    // Prefer: return=minimal gives only what changed.
    fake.set_user_property(&ids[1], "department", json!("R&D"));
    let minimal = [("Prefer", "return=minimal")];
    let (_, items, link) = delta_round(&fake, &at, &link, &minimal).await;
    assert_eq!(items, [json!({"id": ids[1], "department": "R&D"})]);

    // Manager removed and set; a user deleted (restorable), another purged; a new user.
    fake.set_manager_in_m365(&ids[0], None);
    fake.set_manager_in_m365(&ids[2], Some(&ids[1]));
    let (s, _, _) = graph(
        &fake,
        &at,
        reqwest::Method::DELETE,
        &format!("/users/{}", ids[3]),
        None,
    )
    .await;
    assert_eq!(s, 204);
    fake.delete_user_in_m365(&ids[4]);
    fake.purge_deleted(&ids[4]);
    let new_id = fake.add_user(FakeUserSpec {
        upn: "new@contoso.com".into(),
        display_name: Some("New Person".into()),
        account_enabled: true,
        ..FakeUserSpec::default()
    });
    let (_, items, link) = delta_round(&fake, &at, &link, &[]).await;
    let got = by_id(&items);
    assert_eq!(got.len(), 5, "{items:?}");
    assert_eq!(
        got[&ids[0]]["manager@delta"],
        json!([{"@odata.type": "#microsoft.graph.user", "id": ids[1], "@removed": {"reason": "deleted"}}])
    );
    assert_eq!(got[&ids[0]]["displayName"], "User 0001");
    assert_eq!(got[&ids[2]]["manager@delta"][0]["id"], ids[1].as_str());
    assert_eq!(
        got[&ids[3]],
        json!({"id": ids[3], "@removed": {"reason": "changed"}})
    );
    assert_eq!(
        got[&ids[4]],
        json!({"id": ids[4], "@removed": {"reason": "deleted"}})
    );
    assert_eq!(got[&new_id]["displayName"], "New Person");

    // Restored users come back whole.
    let (s, _, _) = graph(
        &fake,
        &at,
        reqwest::Method::POST,
        &format!("/directory/deletedItems/{}/restore", ids[3]),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (_, items, _) = delta_round(&fake, &at, &link, &minimal).await;
    assert_eq!(items, [json!({"id": ids[3], "displayName": "User 0004"})]);

    // A $filter by ids; unsupported options.
    let (_, items, _) = delta_round(
        &fake,
        &at,
        &format!(
            "{}/users/delta?$select=displayName&$filter=id eq '{}' or id eq '{}'",
            fake.graph_base_url(),
            ids[0],
            ids[2]
        ),
        &[],
    )
    .await;
    let mut got: Vec<&str> = items.iter().map(|i| i["id"].as_str().unwrap()).collect();
    got.sort();
    let mut want = vec![ids[0].as_str(), ids[2].as_str()];
    want.sort();
    assert_eq!(got, want);
    for bad in ["$top=5", "$orderby=displayName", "$expand=manager"] {
        let (s, _, b) = graph(
            &fake,
            &at,
            reqwest::Method::GET,
            &format!("/users/delta?{bad}"),
            None,
        )
        .await;
        assert_eq!(s, 400, "{bad}");
        assert_eq!(b["error"]["code"], "Request_UnsupportedQuery");
    }
}

#[tokio::test]
async fn graph_fake_delta_latest_resync_and_faults() {
    let fake = GraphFake::start().await;
    fake.add_domain("contoso.com", false, true);
    let ids = fake.add_users(3, "contoso.com");
    let at = app_token(&fake).await;

    // "Sync from now": only a deltaLink.
    let (s, _, b) = graph(
        &fake,
        &at,
        reqwest::Method::GET,
        "/users/delta?$select=displayName,accountEnabled&$deltatoken=latest",
        None,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["value"], json!([]));
    assert!(b.get("@odata.nextLink").is_none());
    let link = b["@odata.deltaLink"].as_str().unwrap().to_string();
    fake.set_user_property(&ids[2], "accountEnabled", json!(false));
    let (_, items, link) = delta_round(&fake, &at, &link, &[]).await;
    assert_eq!(
        items,
        [json!({"id": ids[2], "displayName": "User 0003", "accountEnabled": false})]
    );

    // Injected faults apply to delta calls too.
    fake.throttle_next(1, "0.05");
    let (s, h, _) = graph(&fake, &at, reqwest::Method::GET, &link, None).await;
    assert_eq!(s, 429);
    assert_eq!(h["retry-after"], "0.05");

    // A garbled token is refused; an invalidated one answers 410 with the initial query.
    let (s, _, _) = graph(
        &fake,
        &at,
        reqwest::Method::GET,
        "/users/delta?$deltatoken=not-a-token",
        None,
    )
    .await;
    assert_eq!(s, 400);
    fake.invalidate_delta_tokens();
    let (s, h, b) = graph(&fake, &at, reqwest::Method::GET, &link, None).await;
    assert_eq!(s, 410, "{b}");
    let location = h["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with(&format!("{}/users/delta?", fake.graph_base_url()))
            && location.ends_with("$deltatoken=")
            && location.contains("$select="),
        "{location}"
    );
    let (sizes, items, _) = delta_round(&fake, &at, &location, &[]).await;
    assert_eq!(sizes, [3]);
    assert_eq!(items[0]["accountEnabled"], true);
}

#[tokio::test]
async fn graph_fake_soft_delete_restore_and_held_upns() {
    let fake = GraphFake::start().await;
    fake.add_domain("contoso.com", false, true);
    let at = app_token(&fake).await;
    let user = json!({"accountEnabled": true, "displayName": "Adele Vance", "mailNickname": "AdeleV",
                      "userPrincipalName": "adele@contoso.com",
                      "passwordProfile": {"password": "xWwvJ]6NMw+bWH-d"}});
    let (s, _, b) = graph(
        &fake,
        &at,
        reqwest::Method::POST,
        "/users",
        Some(user.clone()),
    )
    .await;
    assert_eq!(s, 201);
    let old = b["id"].as_str().unwrap().to_string();
    let (s, _, _) = graph(
        &fake,
        &at,
        reqwest::Method::DELETE,
        "/users/adele@contoso.com",
        None,
    )
    .await;
    assert_eq!(s, 204);

    // Gone from /users, present in deleted items.
    let (s, _, _) = graph(
        &fake,
        &at,
        reqwest::Method::GET,
        &format!("/users/{old}"),
        None,
    )
    .await;
    assert_eq!(s, 404);
    let (_, _, b) = graph(&fake, &at, reqwest::Method::GET, "/users", None).await;
    assert_eq!(b["value"], json!([]));
    let (s, _, b) = graph(
        &fake,
        &at,
        reqwest::Method::GET,
        "/directory/deletedItems/microsoft.graph.user",
        None,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["value"][0]["id"], old.as_str());
    assert!(b["value"][0]["deletedDateTime"].is_string());
    assert_eq!(
        b["value"][0]["userPrincipalName"],
        format!("{}adele@contoso.com", old.replace('-', ""))
    );
    let (s, _, b) = graph(
        &fake,
        &at,
        reqwest::Method::GET,
        &format!("/directory/deletedItems/{old}"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(b["@odata.type"], "#microsoft.graph.user");
    let (s, _, _) = graph(
        &fake,
        &at,
        reqwest::Method::GET,
        "/directory/deletedItems",
        None,
    )
    .await;
    assert_eq!(s, 400, "the cast is required");
    assert_eq!(fake.deleted_users().len(), 1);
    assert_eq!(
        fake.deleted_users()[0]["userPrincipalName"],
        "adele@contoso.com"
    );

    // While held, the UPN can't be reused.
    let (s, _, b) = graph(
        &fake,
        &at,
        reqwest::Method::POST,
        "/users",
        Some(user.clone()),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(b["error"]["code"], "Request_BadRequest");
    assert_eq!(
        b["error"]["message"],
        "Another object with the same value for property userPrincipalName already exists."
    );
    assert_eq!(b["error"]["details"][0]["code"], "ObjectConflict");
    assert_eq!(b["error"]["details"][0]["target"], "userPrincipalName");

    // Released: a new user takes the UPN, and restoring the old one conflicts.
    fake.release_deleted_upns();
    let (s, _, b) = graph(
        &fake,
        &at,
        reqwest::Method::POST,
        "/users",
        Some(user.clone()),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let new = b["id"].as_str().unwrap().to_string();
    let restore = format!("/directory/deletedItems/{old}/restore");
    let (s, _, b) = graph(&fake, &at, reqwest::Method::POST, &restore, None).await;
    assert_eq!(s, 400);
    assert_eq!(b["error"]["details"][0]["target"], "userPrincipalName");

    // The new one deleted in the portal and purged; the old one restored.
    fake.delete_user_in_m365(&new);
    fake.purge_deleted(&new);
    let (s, _, b) = graph(&fake, &at, reqwest::Method::POST, &restore, None).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["@odata.type"], "#microsoft.graph.user");
    assert_eq!(b["id"], old.as_str());
    assert_eq!(b["userPrincipalName"], "adele@contoso.com");
    let (s, _, _) = graph(
        &fake,
        &at,
        reqwest::Method::GET,
        "/users/adele@contoso.com",
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert!(fake.deleted_users().is_empty());

    // Purge over Graph.
    fake.delete_user_in_m365("adele@contoso.com");
    let (s, _, _) = graph(
        &fake,
        &at,
        reqwest::Method::DELETE,
        &format!("/directory/deletedItems/{old}"),
        None,
    )
    .await;
    assert_eq!(s, 204);
    assert!(fake.deleted_users().is_empty());
    let (s, _, b) = graph(&fake, &at, reqwest::Method::POST, &restore, None).await;
    assert_eq!(s, 404);
    assert_eq!(b["error"]["code"], "Request_ResourceNotFound");
}

#[tokio::test]
async fn graph_fake_lost_answers_apply_once_and_batch_items_work() {
    let fake = GraphFake::start().await;
    fake.add_domain("contoso.com", false, true);
    let boss = fake.add_user(FakeUserSpec {
        upn: "boss@contoso.com".into(),
        account_enabled: true,
        ..FakeUserSpec::default()
    });
    let at = app_token(&fake).await;
    let base_requests = fake.request_count();
    let user = |upn: &str| {
        json!({"accountEnabled": true, "displayName": "Adele Vance", "mailNickname": "AdeleV",
               "userPrincipalName": upn, "passwordProfile": {"password": "xWwvJ]6NMw+bWH-d"}})
    };

    // A lost answer: the POST is applied but answered 504; the retry conflicts.
    fake.apply_then_fail_next(1, 504);
    let (s, _, b) = graph(
        &fake,
        &at,
        reqwest::Method::GET,
        "/users/boss@contoso.com",
        None,
    )
    .await;
    assert_eq!(s, 200, "reads don't consume a lost answer: {b}");
    let (s, _, b) = graph(
        &fake,
        &at,
        reqwest::Method::POST,
        "/users",
        Some(user("adele@contoso.com")),
    )
    .await;
    assert_eq!(s, 504);
    assert_eq!(b["error"]["code"], "gatewayTimeout");
    assert!(fake.user("adele@contoso.com").is_some());
    let (s, _, b) = graph(
        &fake,
        &at,
        reqwest::Method::POST,
        "/users",
        Some(user("adele@contoso.com")),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(b["error"]["details"][0]["code"], "ObjectConflict");
    let adeles = fake
        .users()
        .iter()
        .filter(|u| u["userPrincipalName"] == "adele@contoso.com")
        .count();
    assert_eq!(adeles, 1);
    assert_eq!(fake.request_count() - base_requests, 3);

    // Inside a batch: the item gets the status; the write happened.
    let adele = fake.user("adele@contoso.com").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ct = json!({"Content-Type": "application/json"});
    fake.apply_then_fail_next(1, 500);
    let before = fake.batch_subrequest_count();
    let got = batch(
        &fake,
        &at,
        json!([
            {"id": "get", "method": "GET", "url": "/users/boss@contoso.com?$select=id,accountEnabled"},
            {"id": "missing", "method": "GET", "url": "users/nobody@contoso.com"},
            {"id": "new", "method": "POST", "url": "users", "headers": ct, "body": user("bert@contoso.com")},
            {"id": "patch", "method": "PATCH", "url": format!("/users/{adele}"), "headers": ct,
             "body": {"jobTitle": "Lead"}},
            {"id": "mgr", "method": "PUT", "url": format!("users/{adele}/manager/$ref"), "headers": ct,
             "body": {"@odata.id": format!("https://graph.microsoft.com/v1.0/users/{boss}")}},
        ]),
    )
    .await;
    assert_eq!(fake.batch_subrequest_count() - before, 5);
    assert_eq!(got["get"]["status"], 200);
    assert_eq!(
        got["get"]["body"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| !k.starts_with('@'))
            .count(),
        2
    );
    assert_eq!(got["missing"]["status"], 404);
    assert_eq!(
        got["missing"]["body"]["error"]["code"],
        "Request_ResourceNotFound"
    );
    assert_eq!(got["new"]["status"], 500, "{:?}", got["new"]);
    assert_eq!(got["new"]["body"]["error"]["code"], "generalException");
    assert!(fake.user("bert@contoso.com").is_some(), "applied anyway");
    assert_eq!(got["patch"]["status"], 204);
    assert_eq!(got["mgr"]["status"], 204);
    assert_eq!(fake.user(&adele).unwrap()["jobTitle"], "Lead");
    assert_eq!(fake.manager_of(&adele).as_deref(), Some(boss.as_str()));
    let got = batch(
        &fake,
        &at,
        json!([{"id": "1", "method": "DELETE", "url": format!("/users/{adele}/manager/$ref")}]),
    )
    .await;
    assert_eq!(got["1"]["status"], 204);
    assert_eq!(fake.manager_of(&adele), None);
}

#[tokio::test]
async fn graph_fake_ten_thousand_users_stay_addressable() {
    let fake = GraphFake::start().await;
    fake.add_domain("contoso.com", false, true);
    let ids = fake.add_users(10_000, "contoso.com");
    assert_eq!(ids.len(), 10_000);
    let at = app_token(&fake).await;
    // Remove one in the middle: positions after it shift, lookups must not.
    fake.delete_user_in_m365(&ids[4_999]);
    assert!(fake.user(&ids[4_999]).is_none());
    for i in [0, 4_998, 5_000, 9_999] {
        let upn = format!("user{:04}@contoso.com", i + 1);
        assert_eq!(fake.user(&upn).unwrap()["id"], ids[i].as_str());
        assert_eq!(
            fake.user(&ids[i].to_uppercase()).unwrap()["userPrincipalName"],
            upn
        );
    }
    let (s, _, b) = graph(
        &fake,
        &at,
        reqwest::Method::GET,
        "/users/USER9999@contoso.com?$select=id",
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(b["id"], ids[9_998].as_str());
    let (_, _, b) = graph(
        &fake,
        &at,
        reqwest::Method::GET,
        "/users?$filter=userPrincipalName%20eq%20'user7000@contoso.com'%20or%20id%20eq%20'missing'&$select=id",
        None,
    )
    .await;
    assert_eq!(b["value"], json!([{"id": ids[6_999]}]));

    // A batch of GETs by UPN and PATCHes, and an immutable ID lookup after a PATCH.
    let reqs: Vec<Value> = (0..10)
        .map(|i| {
            json!({"id": format!("g{i}"), "method": "GET",
                        "url": format!("/users/user{:04}@contoso.com?$select=id", 9_000 + i)})
        })
        .chain((0..10).map(|i| {
            json!({"id": format!("p{i}"), "method": "PATCH",
                        "url": format!("/users/{}", ids[8_000 + i]),
                        "headers": {"Content-Type": "application/json"},
                        "body": {"onPremisesImmutableId": format!("imm{i}")}})
        }))
        .collect();
    let got = batch(&fake, &at, json!(reqs)).await;
    for i in 0..10 {
        assert_eq!(got[&format!("g{i}")]["body"]["id"], ids[8_999 + i].as_str());
        assert_eq!(got[&format!("p{i}")]["status"], 204);
    }
    let (_, _, b) = graph(
        &fake,
        &at,
        reqwest::Method::GET,
        "/users?$filter=onPremisesImmutableId%20eq%20'imm7'&$select=id&$count=true",
        None,
    )
    .await;
    assert_eq!(b["value"], json!([{"id": ids[8_007]}]));
    // The immutable ID is unique.
    let (s, _, b) = graph(
        &fake,
        &at,
        reqwest::Method::PATCH,
        &format!("/users/{}", ids[1]),
        Some(json!({"onPremisesImmutableId": "imm7"})),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(b["error"]["details"][0]["target"], "onPremisesImmutableId");
    assert_eq!(fake.users().len(), 9_999);
}
