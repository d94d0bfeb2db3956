//! The console overview: the first-run checklist follows the install from nothing to the first
//! sign-in, and the charts count the events real sign-ins and real syncs wrote.

use std::collections::BTreeMap;

use chrono::{Duration, TimeZone, Utc};
use idbridge::directory::AdminRole;
use idbridge::events::{kind, Actor, NewEvent};
use serde_json::json;

use crate::federation::FEDERATION_ROLES;
use crate::sso::{authn_request, request_id, sign_in, sso_post, submit_login};
use crate::support::console::{admin_browser, AdminBrowser};
use crate::support::graph_fake::FakeUserSpec;
use crate::support::m365::{configured, connected, eventually, settled};
use crate::support::{html_unescape, TestApp};

/// The overview page, unescaped.
async fn overview(app: &TestApp, admin: &AdminBrowser) -> String {
    app.state().idp.flush_events().await;
    let (status, page) = admin.get(app, "/admin").await;
    assert_eq!(status, 200, "{page}");
    html_unescape(&page)
}

/// Every checklist step's state, in page order: (step, state).
fn steps(page: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut rest = page;
    while let Some(at) = rest.find("<li class=\"step ") {
        let item = &rest[at..];
        let id = between(item, "id=\"step-", "\"");
        let state = between(item, "data-state=\"", "\"");
        found.push((id, state));
        rest = &item[1..];
    }
    found
}

fn states(page: &str) -> Vec<String> {
    steps(page).into_iter().map(|(_, s)| s).collect()
}

/// The text between `start` and the next `end` after it.
fn between(text: &str, start: &str, end: &str) -> String {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("{start:?} not in {text}"))
        + start.len();
    let len = text[from..].find(end).unwrap();
    text[from..from + len].to_string()
}

/// The list item of one step.
fn step<'a>(page: &'a str, id: &str) -> &'a str {
    let start = page.find(&format!("id=\"step-{id}\"")).expect("step");
    let len = page[start..].find("</li>").unwrap();
    &page[start..start + len]
}

/// One chart's figure.
fn chart<'a>(page: &'a str, id: &str) -> &'a str {
    let start = page
        .find(&format!("<figure class=\"chart\" id=\"chart-{id}\">"))
        .unwrap_or_else(|| panic!("chart {id} in {page}"));
    let len = page[start..].find("</figure>").unwrap();
    &page[start..start + len]
}

/// A chart's table: (row label, values) for each bucket, oldest first.
fn rows(figure: &str) -> Vec<(String, Vec<i64>)> {
    let body = between(figure, "<tbody>", "</tbody>");
    body.split("<tr>")
        .filter(|r| !r.is_empty())
        .map(|r| {
            let label = between(r, "<th scope=\"row\">", "</th>");
            let values = r
                .split("<td>")
                .skip(1)
                .map(|v| v.split("</td>").next().unwrap().parse().unwrap())
                .collect();
            (label, values)
        })
        .collect()
}

/// A chart's totals row.
fn totals(figure: &str) -> Vec<i64> {
    figure
        .split("<td class=\"total\">")
        .skip(1)
        .map(|v| v.split("</td>").next().unwrap().parse().unwrap())
        .collect()
}

/// Rows with anything in them: label → values.
fn busy_rows(figure: &str) -> BTreeMap<String, Vec<i64>> {
    rows(figure)
        .into_iter()
        .filter(|(_, v)| v.iter().any(|n| *n > 0))
        .collect()
}

/// The bars a chart draws with `class`.
fn bars(figure: &str, class: &str) -> usize {
    figure.matches(&format!("<rect class=\"{class}\"")).count()
}

#[tokio::test]
async fn an_empty_install_shows_every_step_to_do_with_where_it_is_done() {
    let app = TestApp::spawn().await;
    let admin = admin_browser(&app, "root", AdminRole::Admin).await;
    let page = overview(&app, &admin).await;

    assert!(
        page.contains(
            "<details class=\"checklist\" id=\"setup-checklist\" data-complete=\"false\" open>"
        ),
        "open while not set up: {page}"
    );
    assert!(page.contains("Set up idbridge: 0 of 6 steps done"));
    assert_eq!(
        steps(&page),
        [
            ("app-registration", "to-do"),
            ("connect", "blocked"),
            ("import-users", "blocked"),
            ("bind-users", "blocked"),
            ("federate-domain", "blocked"),
            ("test-sign-in", "blocked"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    for (id, href) in [
        ("app-registration", "/admin/m365#app-registration"),
        ("connect", "/admin/m365#connection"),
        ("import-users", "/admin/m365#import"),
        ("bind-users", "/admin/binding?state=unbound"),
        ("federate-domain", "/admin/m365#domains"),
        ("test-sign-in", "https://login.microsoftonline.com/"),
    ] {
        assert!(
            step(&page, id).contains(&format!("id=\"step-{id}-link\" href=\"{href}\"")),
            "{id} links to {href}: {}",
            step(&page, id)
        );
    }
    // What to do first, and why the rest waits.
    assert!(step(&page, "app-registration").contains("aria-current=\"step\""));
    assert!(step(&page, "app-registration").contains("Missing: the application (client) ID"));
    assert!(step(&page, "connect")
        .contains("Waiting for “Configure the Microsoft 365 app registration”."));
    assert!(step(&page, "bind-users").contains("Waiting for “Connect Microsoft 365”."));
    assert!(step(&page, "test-sign-in").contains("Waiting for “Bind users to Microsoft 365”."));
    // Nothing happened yet: empty charts, all four of them.
    for id in ["sign-ins-24h", "sign-ins-30d", "sync-24h", "sync-30d"] {
        let figure = chart(&page, id);
        assert!(busy_rows(figure).is_empty(), "{id}");
        assert!(totals(figure).iter().all(|n| *n == 0), "{id}");
    }
    assert_eq!(rows(chart(&page, "sign-ins-24h")).len(), 24);
    assert_eq!(rows(chart(&page, "sign-ins-30d")).len(), 30);
    assert!(chart(&page, "sign-ins-24h")
        .contains("0 sign-ins, 0 refused, 0 failed in the last 24 hours (UTC)."));
}

#[tokio::test]
async fn the_checklist_advances_with_each_step_and_folds_away_once_all_are_done() {
    let (app, fake) = configured("", "").await;
    fake.set_app_roles(FEDERATION_ROLES);
    fake.add_domain("fabrikam.com", false, false);
    let admin = admin_browser(&app, "root", AdminRole::Admin).await;

    // Configured in the file: the registration is done, connecting is next.
    let page = overview(&app, &admin).await;
    assert_eq!(
        states(&page),
        ["done", "to-do", "blocked", "blocked", "blocked", "blocked"]
    );
    assert!(step(&page, "connect").contains("aria-current=\"step\""));

    app.state()
        .m365
        .connect_application(&Actor::cli(), Utc::now())
        .await
        .expect("connected");
    let page = overview(&app, &admin).await;
    assert_eq!(
        states(&page),
        ["done", "done", "to-do", "blocked", "blocked", "blocked"]
    );
    assert!(step(&page, "bind-users").contains("Waiting for “Import users”."));

    // Import the tenant's user from the Microsoft 365 page.
    fake.add_user(FakeUserSpec {
        upn: "adele@fabrikam.com".into(),
        given_name: Some("Adele".into()),
        surname: Some("Vance".into()),
        account_enabled: true,
        ..FakeUserSpec::default()
    });
    let r = admin
        .post(&app, "/admin/m365/import", &[("all", "1")])
        .await;
    assert_eq!(r.status(), 303);
    eventually("adele imported", || async {
        app.state().directory.get_user("adele").await.ok()
    })
    .await;
    let page = overview(&app, &admin).await;
    assert_eq!(
        states(&page),
        ["done", "done", "done", "to-do", "blocked", "blocked"]
    );
    assert!(step(&page, "import-users").contains("1 user in the directory."));

    // Bind a user (with a password, to sign in later).
    app.create_user(
        crate::sso::USERNAME,
        "ana@fabrikam.com",
        crate::sso::PASSWORD,
    )
    .await;
    app.state()
        .sync
        .bind(
            &Actor::Admin("root".into()),
            &[crate::sso::USERNAME.to_string()],
            Utc::now(),
        )
        .await
        .unwrap();
    settled(&app, crate::sso::USERNAME, "bound").await;
    let page = overview(&app, &admin).await;
    assert_eq!(
        states(&page),
        ["done", "done", "done", "done", "to-do", "blocked"]
    );
    assert!(step(&page, "bind-users").contains("1 of 2 users bound."));
    assert!(step(&page, "test-sign-in").contains("Waiting for “Federate a domain”."));

    // Federate the domain through Graph.
    let settings = app
        .state()
        .idp
        .new_federation_settings(&app.state().config, "fabrikam.com");
    app.state()
        .m365
        .federate_domain(
            &Actor::Admin("root".into()),
            "fabrikam.com",
            &settings,
            false,
            true,
            Utc::now(),
        )
        .await
        .expect("federated");
    let page = overview(&app, &admin).await;
    assert_eq!(
        states(&page),
        ["done", "done", "done", "done", "done", "to-do"]
    );
    assert!(step(&page, "federate-domain").contains("Federated: fabrikam.com."));

    // The bound user signs in to Microsoft 365 through idbridge.
    let signed_in = sign_in(
        &app.browser(),
        &app,
        &authn_request(&request_id(), ""),
        None,
        crate::sso::USERNAME,
    )
    .await;
    assert!(signed_in.has_saml_response(), "{}", signed_in.body);
    let page = overview(&app, &admin).await;
    assert_eq!(states(&page), ["done"; 6]);
    assert!(
        page.contains(
            "<details class=\"checklist\" id=\"setup-checklist\" data-complete=\"true\">"
        ),
        "folded away: {page}"
    );
    assert!(page.contains("Setup complete: all 6 steps are done."));
    assert!(!page.contains("aria-current=\"step\""));
    assert_eq!(totals(chart(&page, "sign-ins-24h")), [1, 0, 0]);

    // Deactivating unbinds everyone: connecting, binding and the test sign-in are to be done
    // again (the checklist opens again); the users and the federated domain stay.
    app.state()
        .m365
        .deactivate(&Actor::Admin("root".into()), Utc::now())
        .await
        .unwrap();
    let page = overview(&app, &admin).await;
    assert_eq!(
        states(&page),
        ["done", "to-do", "done", "blocked", "done", "blocked"]
    );
    assert!(step(&page, "connect").contains("The connection was deactivated: connect again."));
    assert!(page.contains("data-complete=\"false\" open>"));
}

#[tokio::test]
async fn sign_in_charts_count_the_sign_ins_refusals_and_failures_that_happened() {
    let (app, _) = crate::sso::app_with_bound_user().await;
    // bob is not bound: Microsoft 365 is refused to him.
    app.create_user("bob", "bob@contoso.com", crate::sso::PASSWORD)
        .await;
    let admin = admin_browser(&app, "root", AdminRole::Admin).await;

    for _ in 0..2 {
        let page = sign_in(
            &app.browser(),
            &app,
            &authn_request(&request_id(), ""),
            None,
            crate::sso::USERNAME,
        )
        .await;
        assert!(page.has_saml_response(), "{}", page.body);
    }
    let page = sign_in(
        &app.browser(),
        &app,
        &authn_request(&request_id(), ""),
        None,
        "bob",
    )
    .await;
    assert!(!page.has_saml_response(), "bob is refused");
    let browser = app.browser();
    for _ in 0..3 {
        let form = sso_post(&browser, &app, &authn_request(&request_id(), ""), None).await;
        let wrong = submit_login(&browser, &app, &form, "alice", "not the password").await;
        assert!(wrong.has_login_form(), "asked again");
    }
    // Repeated refusals are written as one row with their count; one from 3 days ago.
    let three_days_ago = Utc::now() - Duration::days(3);
    app.store
        .record_event(
            &NewEvent::new(
                three_days_ago,
                &Actor::Anonymous,
                kind::SIGN_IN_THROTTLED,
                None,
            )
            .details(json!({"reason": "locked", "path": "/saml/login", "count": 4})),
        )
        .await
        .unwrap();
    // An admin's failed console sign-in is not an end user's sign-in.
    app.store
        .record_event(&NewEvent::new(
            Utc::now(),
            &Actor::Anonymous,
            kind::ADMIN_LOGIN_FAILED,
            Some("root"),
        ))
        .await
        .unwrap();

    let page = overview(&app, &admin).await;
    let day = chart(&page, "sign-ins-24h");
    assert!(
        day.contains("2 sign-ins, 1 refused, 3 failed in the last 24 hours (UTC)."),
        "{day}"
    );
    assert_eq!(totals(day), [2, 1, 3]);
    // Each event is in its hour's row (the table's labels are the events' own hours).
    let mut expected: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (index, kinds) in [
        (0, kind::SSO_ASSERTION_ISSUED),
        (1, kind::SSO_ACCESS_REFUSED),
        (2, kind::SSO_LOGIN_FAILED),
    ] {
        for e in app.events(kinds).await {
            let at = Utc.timestamp_millis_opt(e.at).unwrap();
            let row = expected
                .entry(at.format("%b %-d, %H:00").to_string())
                .or_insert_with(|| vec![0, 0, 0]);
            row[index] += 1;
        }
    }
    assert_eq!(busy_rows(day), expected);
    // One tooltip per bucket, naming its numbers; one bar per busy series and bucket.
    assert_eq!(day.matches("<g class=\"bucket\"><title>").count(), 24);
    let (label, counts) = expected.iter().next_back().unwrap();
    assert!(
        day.contains(&format!("{label}–",))
            && day.contains(&format!(
                "{} signed in, {} refused, {} failed</title>",
                counts[0], counts[1], counts[2]
            )),
        "{day}"
    );
    assert_eq!(
        bars(day, "signed-in"),
        expected.values().filter(|v| v[0] > 0).count()
    );
    assert_eq!(
        bars(day, "failed"),
        expected.values().filter(|v| v[2] > 0).count()
    );

    // The month has today's and the counted refusals of three days ago, each on its day.
    let month = chart(&page, "sign-ins-30d");
    assert_eq!(totals(month), [2, 5, 3]);
    let busy = busy_rows(month);
    assert_eq!(
        busy.get(&three_days_ago.format("%b %-d").to_string()),
        Some(&vec![0, 4, 0]),
        "{busy:?}"
    );
    assert!(month.contains("2 sign-ins, 5 refused, 3 failed in the last 30 days (UTC)."));
}

#[tokio::test]
async fn sync_charts_count_changes_delivered_to_and_failed_at_microsoft_365() {
    let (app, fake) = connected("", "").await;
    // A federated domain's account without an immutable ID cannot be bound: that bind fails.
    fake.add_domain("fed.example", true, false);
    fake.add_user(FakeUserSpec {
        upn: "erin@fed.example".into(),
        account_enabled: true,
        ..FakeUserSpec::default()
    });
    app.create_user("alice", "alice@contoso.com", crate::sso::PASSWORD)
        .await;
    app.create_user("erin", "erin@fed.example", crate::sso::PASSWORD)
        .await;
    let admin = admin_browser(&app, "root", AdminRole::Admin).await;
    app.state()
        .sync
        .bind(
            &Actor::Admin("root".into()),
            &["alice".to_string(), "erin".to_string()],
            Utc::now(),
        )
        .await
        .unwrap();
    settled(&app, "alice", "bound").await;
    settled(&app, "erin", "failed").await;
    // A change of alice's reaches Microsoft 365 as one more delivered job.
    let before = overview(&app, &admin).await;
    let delivered_before = totals(chart(&before, "sync-24h"))[0];
    app.state()
        .directory
        .set_password(
            &Actor::Admin("root".into()),
            "alice",
            &secrecy::SecretString::from("An0ther-Passw0rd-2026".to_string()),
            Utc::now(),
        )
        .await
        .unwrap();
    settled(&app, "alice", "bound").await;

    let page = overview(&app, &admin).await;
    let day = chart(&page, "sync-24h");
    let [delivered, failed] = totals(day)[..] else {
        panic!("{day}")
    };
    // alice's bind, then her password change: one delivered job each; erin's bind failed.
    assert_eq!(delivered_before, 1, "alice's bind");
    assert_eq!((delivered, failed), (2, 1), "{day}");
    assert!(day.contains("2 changes delivered, 1 failed in the last 24 hours (UTC)."));
    assert_eq!(bars(day, "failed"), 1);
    assert_eq!(
        totals(chart(&page, "sync-30d")),
        [delivered, failed],
        "the month holds the same"
    );
    // The failed job is the one the binding page shows.
    assert_eq!(app.store.sync_counts().await.unwrap().failed, 1);
}
