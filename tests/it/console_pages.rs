//! The console's Users, Events and SAML pages, over real HTTP with a signed-in admin.

use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use idbridge::directory::{AdminRole, Attribute, User, UserChanges};
use idbridge::events::{Actor, NewEvent};
use idbridge::store::{UserListQuery, UserWrite};
use secrecy::SecretString;
use serde_json::Value;

use crate::support::console::{admin_browser, AdminBrowser};
use crate::support::TestApp;

const PASSWORD: &str = "Corr3ct-Horse-Battery";

/// A user created through the directory, without a password (no argon2: quick in bulk).
async fn user(app: &TestApp, username: &str, firstname: &str, lastname: &str) -> User {
    let changes = UserChanges::new()
        .with(Attribute::Username, username)
        .with(Attribute::Email, format!("{username}@contoso.com"))
        .with(Attribute::Firstname, firstname)
        .with(Attribute::Lastname, lastname);
    app.state()
        .directory
        .create_user(&Actor::System, &changes, None, Utc::now())
        .await
        .expect("user created")
}

async fn reload(app: &TestApp, user: &User) -> User {
    app.state().directory.get_user(&user.id).await.unwrap()
}

/// Reverses HTML escaping, numeric (`&#60;`, as askama writes it) and named.
pub(crate) fn unescape(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let decoded = rest.find(';').filter(|&end| end <= 10).and_then(|end| {
            let entity = &rest[1..end];
            let c = match entity {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => match entity
                    .strip_prefix("#x")
                    .or_else(|| entity.strip_prefix("#X"))
                {
                    Some(hex) => u32::from_str_radix(hex, 16).ok().and_then(char::from_u32),
                    None => entity
                        .strip_prefix('#')
                        .and_then(|d| d.parse().ok())
                        .and_then(char::from_u32),
                },
            };
            c.map(|c| (c, end))
        });
        match decoded {
            Some((c, end)) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Whether the page shows `text` (compared unescaped).
fn shows(page: &str, text: &str) -> bool {
    unescape(page).contains(text)
}

/// The usernames a user list page links to, in order.
fn listed_usernames(html: &str) -> Vec<String> {
    let marker = "<td><a href=\"/admin/users/";
    html.match_indices(marker)
        .filter_map(|(i, _)| {
            let rest = &html[i + marker.len()..];
            let (_, rest) = rest.split_once("\">")?;
            Some(unescape(&rest[..rest.find('<')?]))
        })
        .collect()
}

/// The href of the link with `rel` (the pager's prev/next), unescaped.
fn rel_link(html: &str, rel: &str) -> Option<String> {
    let end = html.find(&format!("\" rel=\"{rel}\""))?;
    let start = html[..end].rfind("href=\"")? + "href=\"".len();
    Some(unescape(&html[start..end]))
}

/// The href of the link whose text starts with `text`, unescaped.
fn link_to(html: &str, text: &str) -> Option<String> {
    let text_at = html.find(&format!(">{text}"))?;
    let start = html[..text_at].rfind("href=\"")? + "href=\"".len();
    let end = start + html[start..].find('"')?;
    Some(unescape(&html[start..end]))
}

/// POSTs a form and follows the redirect; returns the page redirected to.
async fn post_and_follow(
    app: &TestApp,
    admin: &AdminBrowser,
    path: &str,
    fields: &[(&str, &str)],
) -> (String, String) {
    let r = admin.post(app, path, fields).await;
    let status = r.status().as_u16();
    let location = r
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_string());
    let body = r.text().await.unwrap_or_default();
    assert_eq!(status, 303, "POST {path} should redirect: {body}");
    let location = location.expect("a redirect has a location");
    let (status, page) = admin.get(app, &location).await;
    assert_eq!(status, 200, "{location}");
    (location, page)
}

/// The fields of a user's edit form with their current values (what a browser would send).
pub(crate) fn edit_form(page: &str) -> Vec<(String, String)> {
    let form = &page[page.find("id=\"edit\"").expect("edit form")..];
    let form = &form[..form.find("</form>").unwrap()];
    form.match_indices("<input type=\"")
        .filter_map(|(i, _)| {
            let tag = &form[i..i + form[i..].find('>')?];
            let attr = |name: &str| {
                let m = format!(" {name}=\"");
                let s = tag.find(&m)? + m.len();
                Some(unescape(&tag[s..s + tag[s..].find('"')?]))
            };
            let name = attr("name")?;
            (name != "csrf").then(|| (name, attr("value").unwrap_or_default()))
        })
        .collect()
}

fn with(fields: &[(String, String)], name: &str, value: &str) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|(k, v)| {
            if k == name {
                (k.clone(), value.to_string())
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect()
}

fn refs(fields: &[(String, String)]) -> Vec<(&str, &str)> {
    fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

#[tokio::test]
async fn the_user_list_searches_and_pages_through_250_users() {
    let app = TestApp::spawn().await;
    let admin = admin_browser(&app, "root", AdminRole::Admin).await;
    for i in 0..250 {
        let (first, last) = if i % 25 == 0 {
            ("Jane", "Smithson")
        } else {
            ("Test", "Person")
        };
        user(&app, &format!("user{i:03}"), first, last).await;
    }
    app.bind(
        &reload_key(&app, "user001").await,
        "ImmUser001",
        "user001@contoso.com",
    )
    .await;

    let (status, page) = admin.get(&app, "/admin/users").await;
    assert_eq!(status, 200);
    assert!(page.contains("250 users in the directory"), "{page}");
    let first_page = listed_usernames(&page);
    assert_eq!(first_page.len(), 50);
    assert_eq!(first_page[0], "user000");
    assert!(page.contains("<span class=\"badge bound\">bound</span>"));
    assert!(page.contains("<span class=\"badge unbound\">unbound</span>"));
    assert!(rel_link(&page, "prev").is_none());

    // Next → to the end: every user once, in order.
    let mut all = first_page.clone();
    let mut next = rel_link(&page, "next");
    let mut second_page = None;
    while let Some(url) = next {
        assert!(url.starts_with("/admin/users?after="), "{url}");
        let (status, page) = admin.get(&app, &url).await;
        assert_eq!(status, 200);
        second_page.get_or_insert_with(|| page.clone());
        all.extend(listed_usernames(&page));
        next = rel_link(&page, "next");
    }
    let expected: Vec<String> = (0..250).map(|i| format!("user{i:03}")).collect();
    assert_eq!(all, expected);

    // ← Previous from the second page is the first page again.
    let back = rel_link(&second_page.unwrap(), "prev").expect("a previous link");
    let (_, page) = admin.get(&app, &back).await;
    assert_eq!(listed_usernames(&page), first_page);
    assert!(
        rel_link(&page, "prev").is_none(),
        "nothing before the first page"
    );

    // Three letters or more match anywhere, names too; paging keeps the search.
    let (_, page) = admin.get(&app, "/admin/users?q=SMITHS").await;
    let smiths: Vec<String> = (0..250)
        .step_by(25)
        .map(|i| format!("user{i:03}"))
        .collect();
    assert_eq!(listed_usernames(&page), smiths);
    assert!(
        !page.contains("users in the directory"),
        "no count for a search"
    );
    let (_, page) = admin.get(&app, "/admin/users?q=r24").await;
    assert_eq!(
        listed_usernames(&page),
        (240..250)
            .map(|i| format!("user{i:03}"))
            .collect::<Vec<_>>()
    );
    let (_, page) = admin.get(&app, "/admin/users?q=ser1").await;
    let found = listed_usernames(&page);
    assert_eq!(found.len(), 50);
    let next = rel_link(&page, "next").expect("more matches");
    assert!(next.contains("q=ser1"), "{next}");
    let (_, page) = admin.get(&app, &next).await;
    assert_eq!(listed_usernames(&page).len(), 50, "100 users match ser1");
    assert!(rel_link(&page, "next").is_none());

    // One or two characters match the start of usernames and emails only.
    let (_, page) = admin.get(&app, "/admin/users?q=us").await;
    assert_eq!(listed_usernames(&page).len(), 50);
    let (_, page) = admin.get(&app, "/admin/users?q=sm").await;
    assert!(
        listed_usernames(&page).is_empty(),
        "names need three letters"
    );
    assert!(page.contains("No user matches"), "{page}");

    // Search text is escaped back into the page.
    let (status, page) = admin.get(&app, "/admin/users?q=%3Cscript%3E").await;
    assert_eq!(status, 200);
    assert!(!page.contains("<script>") && shows(&page, "No user matches “<script>”"));
}

async fn reload_key(app: &TestApp, key: &str) -> User {
    app.state().directory.get_user(key).await.unwrap()
}

#[tokio::test]
async fn creating_a_user_names_the_refused_field_and_keeps_what_was_typed() {
    let app = TestApp::spawn().await;
    let admin = admin_browser(&app, "root", AdminRole::Admin).await;
    let (status, page) = admin.get(&app, "/admin/users/new").await;
    assert_eq!(status, 200);
    assert!(page.contains("name=\"jobTitle\"") && page.contains("(jobTitle)"));

    let form = |email: &'static str, password: &'static str, confirm: &'static str| {
        vec![
            ("username", "Alice"),
            ("email", email),
            ("firstname", "Alice"),
            ("lastname", "Liddell"),
            ("jobTitle", "Explorer"),
            ("password", password),
            ("confirm", confirm),
        ]
    };
    let r = admin
        .post(
            &app,
            "/admin/users",
            &form("not-an-email", PASSWORD, PASSWORD),
        )
        .await;
    assert_eq!(r.status(), 422);
    let page = r.text().await.unwrap();
    assert!(
        shows(
            &page,
            "email: \"not-an-email\" is not a valid email address"
        ),
        "{page}"
    );
    assert!(page.contains("value=\"Explorer\""), "the input is kept");
    assert!(page.contains("id=\"f-email\" name=\"email\" value=\"not-an-email\""));
    assert!(
        page.contains("name=\"email\" value=\"not-an-email\" maxlength=\"254\" required aria-invalid=\"true\""),
        "the email field is marked: {page}"
    );
    assert!(!page.contains(PASSWORD), "the password is never sent back");

    let r = admin
        .post(
            &app,
            "/admin/users",
            &form("alice@contoso.com", PASSWORD, "Other-Passw0rd!"),
        )
        .await;
    assert_eq!(r.status(), 422);
    assert!(shows(
        &r.text().await.unwrap(),
        "password: the two passwords differ"
    ));

    let r = admin
        .post(
            &app,
            "/admin/users",
            &form("alice@contoso.com", "short", "short"),
        )
        .await;
    assert_eq!(r.status(), 422);
    let page = r.text().await.unwrap();
    assert!(
        shows(&page, "password rejected: it must be at least 8 characters"),
        "{page}"
    );
    assert!(page.contains(
        "id=\"password\" name=\"password\" autocomplete=\"new-password\" aria-invalid=\"true\""
    ));
    assert!(
        app.state().directory.get_user("alice").await.is_err(),
        "nothing written"
    );

    let (location, page) = post_and_follow(
        &app,
        &admin,
        "/admin/users",
        &form("alice@contoso.com", PASSWORD, PASSWORD),
    )
    .await;
    let alice = reload_key(&app, "alice").await;
    assert_eq!(location, format!("/admin/users/{}", alice.id));
    assert!(
        shows(&page, "User alice was created with a password."),
        "{page}"
    );
    assert_eq!(alice.get(Attribute::JobTitle), Some("Explorer"));
    assert!(alice.has_password());
    let created = app.events("user_create").await;
    assert_eq!(created[0].actor, "admin:root");

    // A duplicate names the field too.
    let r = admin
        .post(
            &app,
            "/admin/users",
            &[("username", "alice2"), ("email", "ALICE@contoso.com")],
        )
        .await;
    assert_eq!(r.status(), 422);
    assert!(shows(
        &r.text().await.unwrap(),
        "email: another user already has this email"
    ));
}

#[tokio::test]
async fn editing_suspending_and_resetting_a_password_from_the_detail_page() {
    let app = TestApp::spawn().await;
    let admin = admin_browser(&app, "root", AdminRole::Admin).await;
    let bob = user(&app, "bob", "Bob", "Builder").await;
    let path = format!("/admin/users/{}", bob.id);
    let (status, page) = admin.get(&app, &path).await;
    assert_eq!(status, 200);
    let fields = edit_form(&page);
    assert!(
        fields.contains(&("lastname".to_string(), "Builder".to_string())),
        "{fields:?}"
    );

    // Saving the untouched form changes nothing.
    let (_, page) = post_and_follow(&app, &admin, &path, &refs(&fields)).await;
    assert!(page.contains("Nothing was changed."), "{page}");
    assert_eq!(app.events("user_update").await.len(), 0);

    // One changed field is saved alone.
    let changed = with(&fields, "department", "Construction");
    let (_, page) = post_and_follow(&app, &admin, &path, &refs(&changed)).await;
    assert!(page.contains("Saved department of bob."), "{page}");
    assert_eq!(
        reload(&app, &bob).await.get(Attribute::Department),
        Some("Construction")
    );
    let updates = app.events("user_update").await;
    assert_eq!(updates[0].details, r#"{"changed":["department"]}"#);

    // A refused change names the field and keeps the typed values.
    let bad = with(&with(&fields, "manager", "nobody"), "jobTitle", "Foreman");
    let r = admin.post(&app, &path, &refs(&bad)).await;
    assert_eq!(r.status(), 422);
    let page = r.text().await.unwrap();
    assert!(
        shows(&page, "manager: \"nobody\" is not a user in the directory"),
        "{page}"
    );
    assert!(page.contains("value=\"Foreman\""));
    assert!(
        page.contains("name=\"manager\" value=\"nobody\" maxlength=\"254\" aria-invalid=\"true\"")
    );
    assert_eq!(reload(&app, &bob).await.get(Attribute::JobTitle), None);

    // Suspend and activate.
    let (_, page) = post_and_follow(
        &app,
        &admin,
        &format!("{path}/state"),
        &[("state", "suspended")],
    )
    .await;
    assert!(page.contains("bob is suspended"), "{page}");
    assert!(page.contains("<span class=\"badge failed\">suspended</span>"));
    assert!(page.contains("value=\"active\""), "an Activate button now");
    assert_eq!(reload(&app, &bob).await.state.as_str(), "suspended");
    let (_, page) = post_and_follow(
        &app,
        &admin,
        &format!("{path}/state"),
        &[("state", "active")],
    )
    .await;
    assert!(page.contains("bob is active again"), "{page}");
    assert_eq!(reload(&app, &bob).await.state.as_str(), "active");

    // Reset the password: refusals first, then success.
    let password_path = format!("{path}/password");
    let r = admin
        .post(
            &app,
            &password_path,
            &[("password", PASSWORD), ("confirm", "x")],
        )
        .await;
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("the two passwords differ"));
    let r = admin
        .post(
            &app,
            &password_path,
            &[("password", "alllowercase"), ("confirm", "alllowercase")],
        )
        .await;
    assert_eq!(r.status(), 422);
    let page = r.text().await.unwrap();
    assert!(
        shows(&page, "password rejected: it must mix at least 3 of"),
        "{page}"
    );
    assert!(!page.contains("alllowercase"));
    assert_eq!(app.events("user_password_rejected").await.len(), 1);
    let (_, page) = post_and_follow(
        &app,
        &admin,
        &password_path,
        &[("password", PASSWORD), ("confirm", PASSWORD)],
    )
    .await;
    assert!(page.contains("The password of bob was set."), "{page}");
    assert!(reload(&app, &bob).await.has_password());
    let set = app.events("user_password_set").await;
    assert_eq!(set[0].actor, "admin:root");

    // A bound user's changes say they travel to Microsoft 365.
    app.bind(&bob, "ImmBob", "bob@contoso.com").await;
    let (_, page) = admin.get(&app, &path).await;
    assert!(
        page.contains("reach Microsoft 365 within seconds"),
        "{page}"
    );
    let fields = edit_form(&page);
    let (_, page) = post_and_follow(
        &app,
        &admin,
        &path,
        &refs(&with(&fields, "location", "Leeds")),
    )
    .await;
    assert!(
        page.contains("Saved location of bob. The change reaches Microsoft 365 within seconds."),
        "{page}"
    );
}

#[tokio::test]
async fn deleting_is_refused_for_a_bound_user_and_allowed_otherwise() {
    let app = TestApp::spawn().await;
    let admin = admin_browser(&app, "root", AdminRole::Admin).await;
    let carol = user(&app, "carol", "Carol", "Bound").await;
    let dave = user(&app, "dave", "Dave", "Free").await;
    app.bind(&carol, "ImmCarol", "carol@contoso.com").await;

    let (_, page) = admin.get(&app, &format!("/admin/users/{}", carol.id)).await;
    assert!(page.contains(&format!("action=\"/admin/users/{}/delete\"", carol.id)));
    assert!(page.contains("data-confirm=\"Delete carol for good?"));
    let r = admin
        .post(&app, &format!("/admin/users/{}/delete", carol.id), &[])
        .await;
    assert_eq!(r.status(), 409);
    let page = r.text().await.unwrap();
    assert!(
        shows(
            &page,
            "user \"carol\" is bound to Microsoft 365; unbind it before deleting it"
        ),
        "{page}"
    );
    assert!(app.state().directory.get_user(&carol.id).await.is_ok());

    let r = admin
        .post(&app, &format!("/admin/users/{}/delete", dave.id), &[])
        .await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/admin/users");
    let (_, page) = admin.get(&app, "/admin/users").await;
    assert!(page.contains("User dave was deleted."), "{page}");
    assert!(app.state().directory.get_user(&dave.id).await.is_err());
    assert_eq!(app.events("user_delete").await[0].actor, "admin:root");

    let (status, _) = admin.get(&app, &format!("/admin/users/{}", dave.id)).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_detail_page_shows_attributes_binding_the_last_error_and_events() {
    let app = TestApp::spawn().await;
    let admin = admin_browser(&app, "root", AdminRole::Admin).await;
    let changes = UserChanges::new()
        .with(Attribute::Username, "erin")
        .with(Attribute::Email, "erin@contoso.com")
        .with(Attribute::Firstname, "Erin")
        .with(Attribute::Lastname, "O'Neil <b>bold</b>")
        .with(Attribute::JobTitle, "Engineer")
        .with(Attribute::WorkPostalCode, "LS1 4AP")
        .with(Attribute::MobilePhone, "+44 7700 900123");
    let erin = app
        .state()
        .directory
        .create_user(
            &Actor::Admin("root".into()),
            &changes,
            Some(&SecretString::from(PASSWORD.to_string())),
            Utc::now(),
        )
        .await
        .unwrap();
    app.bind(&erin, "ErinImmutable123", "erin@contoso.com")
        .await;
    app.store
        .mark_binding_lost(
            &erin.id,
            "Resource 'erin@contoso.com' does not exist <Graph>",
        )
        .await
        .unwrap();

    let (status, page) = admin.get(&app, &format!("/admin/users/{}", erin.id)).await;
    assert_eq!(status, 200);
    // Each value once: in the edit form, under the catalogue's label (not a second list).
    assert!(!page.contains("id=\"attributes\""), "{page}");
    for expected in [
        "value=\"Engineer\"",
        "value=\"LS1 4AP\"",
        "value=\"+44 7700 900123\"",
        "Mobile Phone <span class=\"muted\">(phoneNumbers.mobile.number)</span>",
        "<code>ErinImmutable123</code>",
        "<span class=\"badge failed\">failed</span>",
        "Resource &#39;erin@contoso.com&#39; does not exist &lt;Graph&gt;",
        "<code class=\"nowrap\">user_create</code>",
        "<code class=\"nowrap\">test_bind</code>",
        "href=\"/admin/events?user=erin\"",
        "Password last changed",
    ] {
        assert!(
            shows(&page, &unescape(expected)),
            "missing {expected}: {page}"
        );
    }
    // Everything is escaped.
    assert!(shows(&page, "O'Neil <b>bold</b>"));
    assert!(!page.contains("<b>bold</b>") && !page.contains("<Graph>"));
    // A read-only admin has no form: the values are a list, labelled from the catalogue.
    let reader = admin_browser(&app, "auditor", AdminRole::ReadOnly).await;
    let (_, page) = reader.get(&app, &format!("/admin/users/{}", erin.id)).await;
    for expected in [
        "<dt>Job Title <code class=\"key\">jobTitle</code></dt><dd>Engineer",
        "<code class=\"key\">phoneNumbers.mobile.number</code></dt><dd>+44 7700 900123",
        "<dt>Immutable ID <code class=\"key\">immutableId</code></dt><dd>ErinImmutable123",
    ] {
        assert!(page.contains(expected), "missing {expected}: {page}");
    }

    let (status, page) = admin.get(&app, "/admin/users/no-such-user").await;
    assert_eq!(status, 404, "{page}");
}

/// Records an event directly (tests need many, at chosen times).
async fn event(app: &TestApp, at_ms: i64, actor: &Actor, event_type: &'static str, target: &str) {
    let at = Utc.timestamp_millis_opt(at_ms).unwrap();
    let e = NewEvent::new(at, actor, event_type, Some(target))
        .details(serde_json::json!({"n": at_ms}))
        .client_ip(Some("192.0.2.7".into()));
    app.store.record_event(&e).await.unwrap();
}

/// The event types in a page's table rows, in order.
fn listed_types(html: &str) -> Vec<String> {
    let marker = "<tr data-type=\"";
    html.match_indices(marker)
        .filter_map(|(i, _)| {
            let rest = &html[i + marker.len()..];
            Some(unescape(&rest[..rest.find('"')?]))
        })
        .collect()
}

#[tokio::test]
async fn events_filter_page_and_export_as_json_lines() {
    let app = TestApp::spawn().await;
    let admin = admin_browser(&app, "root", AdminRole::Admin).await;
    let root = Actor::Admin("root".into());
    let ops = Actor::Admin("ops".into());
    let now = Utc::now().timestamp_millis();
    // 1,100 of one type (more than one export page), a few others, and two long ago.
    for i in 0..1100 {
        event(&app, now - 1_000_000 + i, &root, "test_event", "alice").await;
    }
    for i in 0..3 {
        event(&app, now - 500 + i, &ops, "other_event", "bob").await;
    }
    let jan_2020 = Utc
        .with_ymd_and_hms(2020, 1, 1, 10, 30, 0)
        .unwrap()
        .timestamp_millis();
    event(&app, jan_2020, &ops, "old_event", "bob").await;
    event(&app, jan_2020 + 60_000, &ops, "old_event", "bob").await;

    // By type, paged with Older → keeping the filter.
    let (status, page) = admin.get(&app, "/admin/events?type=test_event").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("<option value=\"test_event\" selected>"),
        "type menu"
    );
    let mut seen = listed_types(&page);
    assert_eq!(seen.len(), 100);
    assert!(page.contains("192.0.2.7"));
    assert!(
        shows(
            &page,
            &format!("<dt>n</dt><dd>{}</dd>", now - 1_000_000 + 1099)
        ),
        "newest first, details shown as a list"
    );
    let mut older = rel_link(&page, "next");
    let mut pages = 1;
    while let Some(url) = older {
        assert!(
            url.contains("type=test_event") && url.contains("before="),
            "{url}"
        );
        let (status, page) = admin.get(&app, &url).await;
        assert_eq!(status, 200);
        assert!(page.contains("« Newest"));
        seen.extend(listed_types(&page));
        older = rel_link(&page, "next");
        pages += 1;
    }
    assert_eq!(pages, 11);
    assert_eq!(seen.len(), 1100);
    assert!(seen.iter().all(|t| t == "test_event"));

    // By user (target), by admin (actor), by time.
    let (_, page) = admin.get(&app, "/admin/events?user=bob").await;
    assert_eq!(listed_types(&page).len(), 5);
    let (_, page) = admin
        .get(&app, "/admin/events?admin=ops&type=other_event")
        .await;
    assert_eq!(listed_types(&page), vec!["other_event"; 3]);
    let (_, page) = admin.get(&app, "/admin/events?admin=admin%3Aops").await;
    assert_eq!(listed_types(&page).len(), 5);
    let (_, page) = admin
        .get(
            &app,
            "/admin/events?from=2020-01-01T10%3A30&to=2020-01-01T10%3A30",
        )
        .await;
    assert_eq!(
        listed_types(&page),
        vec!["old_event"],
        "to includes its minute"
    );
    let (_, page) = admin
        .get(
            &app,
            "/admin/events?from=2019-12-31T00%3A00&to=2020-01-02T00%3A00",
        )
        .await;
    assert_eq!(listed_types(&page), vec!["old_event"; 2]);
    let (status, page) = admin.get(&app, "/admin/events?from=yesterday").await;
    assert_eq!(status, 422);
    assert!(
        shows(&page, "from: \"yesterday\" is not a date and time"),
        "{page}"
    );
    assert!(page.contains("id=\"from\" name=\"from\" value=\"yesterday\" aria-invalid=\"true\""));

    // The export: every matching event (past the first page), newest first, one JSON per line.
    let link = link_to(&page, "Export").expect("export link");
    assert_eq!(link, "/admin/events.jsonl?from=yesterday");
    let r = admin
        .client
        .get(app.url("/admin/events.jsonl?type=test_event"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    assert_eq!(
        r.headers()["content-disposition"],
        "attachment; filename=\"idbridge-events.jsonl\""
    );
    let body = r.text().await.unwrap();
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 1100);
    let ids: Vec<i64> = lines.iter().map(|l| l["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first");
    let first = &lines[0];
    assert_eq!(first["type"], "test_event");
    assert_eq!(first["actor"], "admin:root");
    assert_eq!(first["target"], "alice");
    assert_eq!(first["clientIp"], "192.0.2.7");
    assert_eq!(first["details"]["n"], now - 1_000_000 + 1099);
    let at = chrono::DateTime::parse_from_rfc3339(first["at"].as_str().unwrap()).unwrap();
    assert_eq!(at.timestamp_millis(), now - 1_000_000 + 1099);

    let body = admin
        .client
        .get(app.url(
            "/admin/events.jsonl?user=bob&admin=ops&from=2020-01-01T00%3A00&to=2020-01-01T23%3A59",
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let types: Vec<String> = body
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(types, vec!["old_event"; 2]);
    let all = admin
        .client
        .get(app.url("/admin/events.jsonl"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(all.lines().count() >= 1105, "the whole log");
}

#[tokio::test]
async fn the_saml_page_shows_what_microsoft_needs_and_the_service_providers() {
    let app = TestApp::spawn_with(
        "[saml.domain_issuers]\n\"fed.example\" = \"https://idp.example/fed\"\n\
         [[saml.service_providers]]\nentity_id = \"https://app.example.com/saml\"\n\
         name = \"Example <app>\"\nacs_urls = [\"https://app.example.com/saml/acs\"]\n\
         name_id = \"email\"\n",
    )
    .await;
    let admin = admin_browser(&app, "root", AdminRole::ReadOnly).await;
    let (status, page) = admin.get(&app, "/admin/saml").await;
    assert_eq!(status, 200, "{page}");
    let signing = app.state().idp.signing();
    let base = &app.base_url;
    for expected in [
        format!("{base}/saml/metadata"),
        format!("{base}/saml/sso"),
        format!("{base}/saml/slo"),
        format!("<code id=\"issuer\">{base}</code>"),
        "https://idp.example/fed".to_string(),
        signing.fingerprint_sha256(),
        signing.certificate_der_base64().to_string(),
        signing.subject(),
        "passiveSignInUri".into(),
        "issuerUri".into(),
        "signOutUri".into(),
        "signingCertificate".into(),
        "preferredAuthenticationProtocol".into(),
        "/domains/fed.example/federationConfiguration".into(),
        "New-MgDomainFederationConfiguration".into(),
        "urn:federation:MicrosoftOnline".into(),
        "https://login.microsoftonline.com/login.srf".into(),
        "https://app.example.com/saml".into(),
        "https://app.example.com/saml/acs".into(),
        "Example &lt;app&gt;".into(),
        "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress".into(),
        "not https".into(),
    ] {
        assert!(shows(&page, &unescape(&expected)), "missing {expected}");
    }
    assert!(!page.contains("Example <app>"));
    assert!(
        !page.contains("renew"),
        "a fresh certificate needs no warning"
    );
}

#[tokio::test]
async fn a_read_only_admin_sees_every_page_but_no_write_forms_and_cannot_post() {
    let app = TestApp::spawn().await;
    let frank = user(&app, "frank", "Frank", "Reader").await;
    let admin = admin_browser(&app, "viewer", AdminRole::ReadOnly).await;
    let detail = format!("/admin/users/{}", frank.id);
    for path in [
        "/admin/users",
        "/admin/users?q=fra",
        "/admin/users/new",
        detail.as_str(),
        "/admin/events",
        "/admin/events?type=user_create",
        "/admin/saml",
    ] {
        let (status, page) = admin.get(&app, path).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            !page.contains("method=\"post\" action=\"/admin/users"),
            "no write form on {path}"
        );
    }
    let (_, page) = admin.get(&app, "/admin/users").await;
    assert!(!page.contains("href=\"/admin/users/new\""));
    let (_, page) = admin.get(&app, &detail).await;
    assert!(page.contains("Frank Reader") && !page.contains("Delete user"));
    let (_, page) = admin.get(&app, "/admin/users/new").await;
    assert!(page.contains("read-only"));

    for (path, fields) in [
        (
            "/admin/users".to_string(),
            vec![("username", "x"), ("email", "x@contoso.com")],
        ),
        (detail.clone(), vec![("department", "Sales")]),
        (format!("{detail}/state"), vec![("state", "suspended")]),
        (
            format!("{detail}/password"),
            vec![("password", PASSWORD), ("confirm", PASSWORD)],
        ),
        (format!("{detail}/delete"), vec![]),
    ] {
        let r = admin.post(&app, &path, &fields).await;
        assert_eq!(r.status(), 403, "{path}");
    }
    let frank = reload(&app, &frank).await;
    assert_eq!(frank.get(Attribute::Department), None);
    assert_eq!(frank.state.as_str(), "active");
    assert!(!frank.has_password());
    assert!(app.state().directory.get_user("x").await.is_err());
}

/// Times the user list at 100,000 users in SQLite: the old offset/LIKE query and count next to
/// the keyset page the console uses, then the console page itself over HTTP.
///
/// Inserting 100,000 users takes about two minutes, so this is not part of the normal run:
/// `cargo test --test it console_pages::user_list_at_100k_users -- --ignored --nocapture`
/// (add `--release` for optimised SQLite).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "inserts 100,000 users; run with --ignored --nocapture to see the timings"]
async fn user_list_at_100k_users() {
    const USERS: usize = 100_000;
    const FIRST: &[&str] = &[
        "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
        "mallory", "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter",
        "yolanda", "zoe", "amir", "bianca", "chen", "dmitri", "elena", "fatima", "goran",
    ];
    const LAST: &[&str] = &[
        "smith",
        "jones",
        "taylor",
        "brown",
        "williams",
        "wilson",
        "johnson",
        "davies",
        "robinson",
        "wright",
        "thompson",
        "evans",
        "walker",
        "white",
        "roberts",
        "green",
        "hall",
        "wood",
        "jackson",
        "clarke",
        "novak",
        "kowalski",
        "garcia",
        "muller",
        "rossi",
        "nakamura",
        "okafor",
        "lindqvist",
        "petrov",
        "haddad",
        "quispe",
    ];
    let app = TestApp::spawn().await;
    let store = &app.store;
    let started = Instant::now();
    let now = Utc::now();
    // A small deterministic generator, so names spread like a real directory's.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..USERS {
        let first = FIRST[(next() % FIRST.len() as u64) as usize];
        let last = LAST[(next() % LAST.len() as u64) as usize];
        let username = format!("{first}.{last}{i}");
        let write = UserWrite {
            id: format!("{:032x}", i),
            username: username.clone(),
            email: format!("{username}@contoso.com"),
            firstname: first.to_string(),
            lastname: last.to_string(),
            state: "active".into(),
            ..UserWrite::default()
        };
        let event = NewEvent::new(now, &Actor::System, "user_create", Some(&username));
        store
            .insert_user(&write, None, None, now.timestamp_millis(), &event)
            .await
            .unwrap();
        if i % 10 == 0 {
            let event = NewEvent::new(now, &Actor::System, "test_bind", Some(&username));
            store
                .upsert_binding(
                    &write.id,
                    &format!("imm{i}"),
                    &write.email,
                    now.timestamp_millis(),
                    &event,
                )
                .await
                .unwrap();
        }
    }
    println!("inserted {USERS} users in {:?}", started.elapsed());

    // The best of three runs (the first warms the page cache), printed with its label.
    macro_rules! time {
        ($label:expr, $query:expr $(,)?) => {{
            let mut best = Duration::MAX;
            let mut out = None;
            for _ in 0..3 {
                let t = Instant::now();
                out = Some($query.await.unwrap());
                best = best.min(t.elapsed());
            }
            println!("{:<60} {best:>12.2?}", $label);
            out.unwrap()
        }};
    }
    let old = |search: Option<&str>, offset: i64| UserListQuery {
        search: search.map(str::to_string),
        limit: 50,
        offset,
    };
    println!("--- before: offset paging, LIKE '%x%', COUNT(*) per page");
    time!("list_users page 1", store.list_users(&old(None, 0)));
    time!(
        "list_users offset 50,000",
        store.list_users(&old(None, 50_000))
    );
    time!(
        "list_users offset 99,950",
        store.list_users(&old(None, 99_950))
    );
    time!(
        "list_users search 'smith'",
        store.list_users(&old(Some("smith"), 0))
    );
    time!(
        "list_users search 'al'",
        store.list_users(&old(Some("al"), 0))
    );
    time!(
        "list_users search 'zzz' (no match)",
        store.list_users(&old(Some("zzz"), 0))
    );
    time!(
        "list_users search 'smith' offset 2,000",
        store.list_users(&old(Some("smith"), 2_000)),
    );
    time!("count_users", store.count_users());
    time!(
        "count_matching_users(None)",
        store.count_matching_users(None)
    );
    time!(
        "count_matching_users('smith')",
        store.count_matching_users(Some("smith")),
    );

    println!("--- after: keyset paging (user_page)");
    let page = time!("user_page page 1", store.user_page(None, None, None, 51));
    assert_eq!(page.len(), 51);
    let middle = format!("{}.", FIRST[FIRST.len() / 2]);
    time!(
        "user_page after the middle of the list",
        store.user_page(None, Some(&middle), None, 51),
    );
    time!(
        "user_page before the middle of the list",
        store.user_page(None, None, Some(&middle), 51),
    );
    time!(
        "user_page last page (after 'zoe.z')",
        store.user_page(None, Some("zoe.z"), None, 51),
    );
    time!(
        "user_page search 'smith'",
        store.user_page(Some("smith"), None, None, 51)
    );
    time!(
        "user_page search 'smith' after the middle",
        store.user_page(Some("smith"), Some(&middle), None, 51),
    );
    time!(
        "user_page search 'a' (prefix)",
        store.user_page(Some("a"), None, None, 51)
    );
    time!(
        "user_page search 'al' (prefix)",
        store.user_page(Some("al"), None, None, 51)
    );
    time!(
        "user_page search 'al' (prefix) after 'alice.s'",
        store.user_page(Some("al"), Some("alice.s"), None, 51),
    );
    time!(
        "user_page search 'zo' (prefix)",
        store.user_page(Some("zo"), None, None, 51)
    );
    time!(
        "user_page search 'quispe9999'",
        store.user_page(Some("quispe9999"), None, None, 51),
    );
    time!(
        "user_page search 'zzz' (no match)",
        store.user_page(Some("zzz"), None, None, 51),
    );

    println!("--- the console page over HTTP (render included)");
    let admin = admin_browser(&app, "root", AdminRole::Admin).await;
    for path in [
        "/admin/users".to_string(),
        format!("/admin/users?after={middle}"),
        "/admin/users?q=smith".to_string(),
        "/admin/users?q=al".to_string(),
        "/admin/users?q=zzz".to_string(),
        "/admin/users?q=quispe9999".to_string(),
    ] {
        let t = Instant::now();
        let (status, _) = admin.get(&app, &path).await;
        assert_eq!(status, 200, "{path}");
        println!("GET {path:<56} {:>12.2?}", t.elapsed());
    }
}
