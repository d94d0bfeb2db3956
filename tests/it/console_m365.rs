//! The console's binding page and Microsoft 365 page, over real HTTP against the Graph fake.

use chrono::Utc;
use idbridge::directory::AdminRole;
use idbridge::events::Actor;

use crate::support::console::{admin_browser, AdminBrowser};
use crate::support::graph_fake::{FakeUserSpec, GraphFake};
use crate::support::m365::eventually;
use crate::support::{html_unescape, TestApp};

const PASSWORD: &str = "Corr3ct-Horse-Battery";

/// A server configured for the fake tenant (default domain contoso.com), not yet connected,
/// and a signed-in full admin `root`.
async fn unconnected() -> (TestApp, GraphFake, AdminBrowser) {
    let (app, fake) = crate::support::m365::configured("", "").await;
    let admin = admin_browser(&app, "root", AdminRole::Admin).await;
    (app, fake, admin)
}

/// The same, connected with the app's own credentials.
async fn connected() -> (TestApp, GraphFake, AdminBrowser) {
    let (app, fake, admin) = unconnected().await;
    app.state()
        .m365
        .connect_application(&Actor::cli(), Utc::now())
        .await
        .expect("connected");
    (app, fake, admin)
}

/// The binding state shown for `username` in a binding table.
fn row_state(html: &str, username: &str) -> Option<String> {
    let start = html.find(&format!("data-user=\"{username}\""))?;
    let rest = &html[start..];
    let from = rest.find("data-state=\"")? + "data-state=\"".len();
    let len = rest[from..].find('"')?;
    Some(rest[from..from + len].to_string())
}

/// The live region's fragment (what the page polls).
async fn rows(app: &TestApp, admin: &AdminBrowser, query: &str) -> String {
    let (status, body) = admin.get(app, &format!("/admin/binding/rows{query}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Polls the fragment until `username` shows `state` and nothing is on its way any more.
async fn shows(app: &TestApp, admin: &AdminBrowser, username: &str, state: &str) -> String {
    eventually(&format!("{username} shown {state}"), || async {
        let body = rows(app, admin, "").await;
        (row_state(&body, username).as_deref() == Some(state) && body.contains("data-refresh-stop"))
            .then_some(body)
    })
    .await
}

/// The raw (still escaped) `href` of the link with this id.
fn page_attr(html: &str, id: &str) -> String {
    let marker = format!("id=\"{id}\" href=\"");
    let start = html.find(&marker).expect("link") + marker.len();
    let len = html[start..].find('"').unwrap();
    html[start..start + len].to_string()
}

/// The `href` of the link with this id.
fn link(html: &str, id: &str) -> String {
    html_unescape(&page_attr(html, id).replace("&#38;", "&"))
}

fn location(response: &reqwest::Response) -> String {
    response.headers()["location"].to_str().unwrap().to_string()
}

/// POSTs a form and follows the post/redirect/get redirect; returns the page shown after it.
async fn post_and_follow(
    app: &TestApp,
    admin: &AdminBrowser,
    path: &str,
    fields: &[(&str, &str)],
) -> String {
    let r = admin.post(app, path, fields).await;
    let status = r.status();
    let to = r.headers().get("location").cloned();
    let body = r.text().await.unwrap();
    assert_eq!(status, 303, "{path}: {body}");
    let (status, page) = admin.get(app, to.unwrap().to_str().unwrap()).await;
    assert_eq!(status, 200);
    html_unescape(&page)
}

#[tokio::test]
async fn binding_one_and_many_from_the_binding_page_and_the_table_follows() {
    let (app, fake, admin) = connected().await;
    let alice = app
        .create_user("alice", "alice@contoso.com", PASSWORD)
        .await;
    let bob = app.create_user("bob", "bob@contoso.com", PASSWORD).await;
    let carol = app
        .create_user("carol", "carol@contoso.com", PASSWORD)
        .await;

    let (status, page) = admin.get(&app, "/admin/binding").await;
    assert_eq!(status, 200);
    assert!(!page.contains("m365-not-connected"), "connected: no notice");
    for name in ["alice", "bob", "carol"] {
        assert_eq!(row_state(&page, name).as_deref(), Some("unbound"), "{name}");
    }
    assert!(page.contains("data-select-all=\"user\""));
    assert!(page.contains("form=\"binding-selection\""));
    // Nothing is moving: the table does not poll.
    assert!(!page.contains("data-refresh=\""));

    // One user.
    let page = post_and_follow(&app, &admin, "/admin/binding/bind", &[("user", &alice.id)]).await;
    assert!(page.contains("Binding 1 user(s): alice"), "{page}");
    let state = row_state(&page, "alice").unwrap();
    if state == "pending" {
        assert!(
            page.contains("data-refresh=\"/admin/binding/rows\""),
            "a pending bind makes the table poll"
        );
    }
    let table = shows(&app, &admin, "alice", "bound").await;
    let immutable = app
        .state()
        .directory
        .get_user("alice")
        .await
        .unwrap()
        .m365
        .unwrap()
        .immutable_id;
    assert!(
        html_unescape(&table).contains(&immutable),
        "immutable ID shown"
    );
    assert!(fake.user("alice@contoso.com").is_some());

    // Many at once, from a filtered page: the filter is kept.
    let page = post_and_follow(
        &app,
        &admin,
        "/admin/binding/bind",
        &[("user", &bob.id), ("user", &carol.id), ("state", "unbound")],
    )
    .await;
    assert!(page.contains("Binding 2 user(s): bob, carol"), "{page}");
    shows(&app, &admin, "bob", "bound").await;
    shows(&app, &admin, "carol", "bound").await;
    let binds = app.events("m365_bind").await;
    assert_eq!(binds.len(), 3);
    assert!(binds.iter().all(|e| e.actor == "admin:root"));

    // Binding a bound user again says so.
    let page = post_and_follow(&app, &admin, "/admin/binding/bind", &[("user", &bob.id)]).await;
    assert!(page.contains("bob (already bound)"), "{page}");
}

#[tokio::test]
async fn filters_show_users_by_state() {
    let (app, _fake, admin) = connected().await;
    let dana = app.create_user("dana", "dana@contoso.com", PASSWORD).await;
    app.create_user("eve", "eve@contoso.com", PASSWORD).await;
    post_and_follow(&app, &admin, "/admin/binding/bind", &[("user", &dana.id)]).await;
    shows(&app, &admin, "dana", "bound").await;

    let bound = rows(&app, &admin, "?state=bound").await;
    assert!(bound.contains("data-user=\"dana\"") && !bound.contains("data-user=\"eve\""));
    let unbound = rows(&app, &admin, "?state=unbound").await;
    assert!(unbound.contains("data-user=\"eve\"") && !unbound.contains("data-user=\"dana\""));
    let failed = rows(&app, &admin, "?state=failed").await;
    assert!(failed.contains("No users match"));
    // Search narrows within the state; an unknown state shows everyone.
    let search = rows(&app, &admin, "?q=ev").await;
    assert!(search.contains("data-user=\"eve\"") && !search.contains("data-user=\"dana\""));
    let all = rows(&app, &admin, "?state=bogus").await;
    assert!(all.contains("data-user=\"eve\"") && all.contains("data-user=\"dana\""));
    let (status, page) = admin.get(&app, "/admin/binding?state=bound").await;
    assert_eq!(status, 200);
    assert!(page.contains("aria-current=\"page\">Bound<"), "active tab");
}

#[tokio::test]
async fn unbinding_asks_first_then_blocks_the_m365_account() {
    let (app, fake, admin) = connected().await;
    let frank = app
        .create_user("frank", "frank@contoso.com", PASSWORD)
        .await;
    post_and_follow(&app, &admin, "/admin/binding/bind", &[("user", &frank.id)]).await;
    let table = shows(&app, &admin, "frank", "bound").await;
    // The one-click unbind of a row asks the browser to confirm, saying what happens.
    assert!(
        html_unescape(&table).contains("data-confirm=\"Unbind frank? Sign-in through idbridge stops at once; the Microsoft 365 account is blocked from signing in (not deleted); binding again unblocks it.\""),
        "{table}"
    );

    // "Unbind selected" shows who and what first, and changes nothing yet.
    let r = admin
        .post(&app, "/admin/binding/unbind", &[("user", &frank.id)])
        .await;
    assert_eq!(r.status(), 200);
    let page = html_unescape(&r.text().await.unwrap());
    assert!(page.contains("Unbind 1 user from Microsoft 365?"), "{page}");
    assert!(page.contains("frank@contoso.com"));
    assert!(page.contains("blocked from signing in (not deleted)"));
    assert!(page.contains("name=\"confirmed\" value=\"yes\""));
    let still = app.state().directory.get_user("frank").await.unwrap();
    assert_eq!(still.m365.unwrap().state.as_str(), "bound");

    let page = post_and_follow(
        &app,
        &admin,
        "/admin/binding/unbind",
        &[("user", &frank.id), ("confirmed", "yes")],
    )
    .await;
    assert!(page.contains("Unbound 1 user(s): frank"), "{page}");
    assert_eq!(row_state(&page, "frank").as_deref(), Some("unbound"));
    eventually("M365 account blocked", || async {
        (fake.user("frank@contoso.com").unwrap()["accountEnabled"] == false).then_some(())
    })
    .await;
    assert!(fake.user("frank@contoso.com").is_some(), "not deleted");
    let ev = app.events("m365_unbind").await;
    assert_eq!(ev[0].actor, "admin:root");
    let unbound = rows(&app, &admin, "?state=unbound").await;
    assert!(unbound.contains("data-user=\"frank\""));
}

#[tokio::test]
async fn a_failed_bind_shows_graphs_message_and_retry_completes_it() {
    let (app, fake, admin) = connected().await;
    let x = app
        .create_user("xavier", "x@unverified.example", PASSWORD)
        .await;
    post_and_follow(&app, &admin, "/admin/binding/bind", &[("user", &x.id)]).await;
    let table = eventually("failed bind shown", || async {
        let body = rows(&app, &admin, "?state=failed").await;
        (row_state(&body, "xavier").as_deref() == Some("failed")).then_some(body)
    })
    .await;
    let table = html_unescape(&table);
    assert!(
        table.contains("verified domain"),
        "Graph's message: {table}"
    );
    assert!(table.contains("1 failed change"), "{table}");
    assert!(table.contains("action=\"/admin/binding/retry\""));
    let (_, page) = admin.get(&app, "/admin/binding").await;
    assert!(page.contains("Retry everything that failed (2)"), "{page}");

    // The admin verifies the domain in Microsoft 365, then retries from the row.
    fake.add_domain("unverified.example", false, false);
    let page = post_and_follow(&app, &admin, "/admin/binding/retry", &[("user", &x.id)]).await;
    assert!(
        page.contains("1 failed change(s) for xavier queued again"),
        "{page}"
    );
    shows(&app, &admin, "xavier", "bound").await;
    assert!(fake.user("x@unverified.example").is_some());
    let ev = app.events("m365_sync_retry").await;
    assert_eq!(ev[0].actor, "admin:root");
    assert_eq!(ev[0].target.as_deref(), Some("xavier"));
}

#[tokio::test]
async fn binding_without_a_connection_points_to_the_m365_page_and_is_refused() {
    let (app, _fake, admin) = unconnected().await;
    let gina = app.create_user("gina", "gina@contoso.com", PASSWORD).await;
    let (status, page) = admin.get(&app, "/admin/binding").await;
    assert_eq!(status, 200);
    assert!(page.contains("id=\"m365-not-connected\""));
    assert!(page.contains("Microsoft 365 is not connected"));
    assert!(page.contains("href=\"/admin/m365\""));
    // The buttons that cannot work are disabled, with the reason beside them.
    assert!(
        page.contains("id=\"bind-selected\" disabled") && page.contains("id=\"bind-all\" disabled"),
        "{page}"
    );
    assert!(page.contains("id=\"bind-disabled-reason\""), "{page}");

    let r = admin
        .post(&app, "/admin/binding/bind", &[("user", &gina.id)])
        .await;
    assert_eq!(r.status(), 409);
    let page = html_unescape(&r.text().await.unwrap());
    assert!(
        page.contains("Microsoft 365 is not connected. Fix:"),
        "the service's message: {page}"
    );
    let r = admin.post(&app, "/admin/binding/bind-all", &[]).await;
    assert_eq!(r.status(), 409);
    assert!(app
        .state()
        .directory
        .get_user("gina")
        .await
        .unwrap()
        .m365
        .is_none());
}

#[tokio::test]
async fn bind_all_binds_everyone_not_bound() {
    let (app, _fake, admin) = connected().await;
    app.create_user("hana", "hana@contoso.com", PASSWORD).await;
    app.create_user("ivan", "ivan@contoso.com", PASSWORD).await;
    let (_, page) = admin.get(&app, "/admin/binding").await;
    assert!(page.contains("action=\"/admin/binding/bind-all\""));
    assert!(page.contains("data-confirm=\"Bind every user who is not bound yet?"));
    let page = post_and_follow(&app, &admin, "/admin/binding/bind-all", &[]).await;
    assert!(page.contains("Binding 2 user(s): hana, ivan"), "{page}");
    shows(&app, &admin, "hana", "bound").await;
    shows(&app, &admin, "ivan", "bound").await;
}

#[tokio::test]
async fn the_m365_page_shows_the_connection_sync_counts_and_export_table() {
    let (app, _fake, admin) = connected().await;
    let (status, page) = admin.get(&app, "/admin/m365").await;
    assert_eq!(status, 200);
    let page = html_unescape(&page);
    assert!(
        page.contains("id=\"connection-state\">connected<"),
        "{page}"
    );
    assert!(page.contains(GraphFake::TENANT_ID));
    assert!(page.contains("id=\"default-domain\">contoso.com<"));
    assert!(page.contains("application (the app registration"));
    assert!(page.contains(" by cli:"), "connected by");
    assert!(page.contains(&app.url("/m365/callback")), "redirect URI");
    assert!(page.contains(">Reconnect"));
    assert!(page.contains("action=\"/admin/m365/deactivate\""));
    assert!(page.contains(
        "Users stay active in Microsoft 365 and in idbridge. The tokens are dropped and every user's binding is cleared"
    ));
    assert!(page.contains("After reconnecting, users must be bound again."));
    // Sync summary links to the filtered binding page.
    assert!(page.contains("href=\"/admin/binding?state=failed\""));
    // Export table: five locked rows, twelve selects, and the warning.
    assert_eq!(page.matches("always exported</span>").count(), 5);
    assert_eq!(page.matches("<select name=\"dir.").count(), 12);
    assert!(page.contains(
        "Selecting Export immediately overwrites that attribute in Microsoft 365 for every bound user"
    ));
}

#[tokio::test]
async fn connect_goes_to_microsofts_consent_and_the_callback_links_back() {
    let (app, fake, admin) = unconnected().await;
    let (_, page) = admin.get(&app, "/admin/m365").await;
    assert!(
        page.contains("id=\"connection-state\">not connected<"),
        "{page}"
    );
    assert!(page.contains("action=\"/admin/m365/connect\""));
    assert!(
        page.contains("action=\"/admin/m365/connect-app\""),
        "one tenant set"
    );
    assert!(!page.contains("action=\"/admin/m365/deactivate\""));

    // The answer moves on to Microsoft by itself (a 303 would be blocked by the console's
    // `form-action 'self'` in Chromium) and links there too.
    let r = admin.post(&app, "/admin/m365/connect", &[]).await;
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    let consent_url = link(&page, "consent-link");
    assert!(
        page.contains(&format!(
            "<meta http-equiv=\"refresh\" content=\"0; url={}\">",
            page_attr(&page, "consent-link")
        )),
        "{page}"
    );
    assert!(
        consent_url.starts_with(&format!(
            "{}/{}/oauth2/v2.0/authorize?",
            fake.login_base_url(),
            GraphFake::TENANT_ID
        )),
        "{consent_url}"
    );
    // The admin signs in at Microsoft and consents; Microsoft sends the browser back.
    let browser = app.browser();
    let at_microsoft = browser.get(&consent_url).send().await.unwrap();
    assert_eq!(at_microsoft.status(), 302);
    let back = location(&at_microsoft);
    assert!(back.starts_with(&app.url("/m365/callback")));
    let done = browser.get(&back).send().await.unwrap();
    assert_eq!(done.status(), 200);
    let page = done.text().await.unwrap();
    assert!(page.contains("Microsoft 365 is connected"), "{page}");
    assert!(
        page.contains("href=\"/admin/m365\""),
        "links back to the console"
    );

    let status = app.state().m365.status().await.unwrap();
    assert_eq!(status.state, "connected");
    assert_eq!(status.mode.as_deref(), Some("delegated"));
    assert_eq!(status.connected_by.as_deref(), Some("admin:root"));
    let (_, page) = admin.get(&app, "/admin/m365").await;
    assert!(page.contains("id=\"connection-state\">connected<"));
    assert!(page.contains("delegated (an admin consented)"));

    // The helper of the connection tests works against this server too.
    assert_eq!(crate::m365::consent(&app).await.0, 200);
}

#[tokio::test]
async fn connect_app_connects_and_missing_settings_are_named() {
    let (app, _fake, admin) = unconnected().await;
    let page = post_and_follow(&app, &admin, "/admin/m365/connect-app", &[]).await;
    assert!(page.contains("Connected to tenant"), "{page}");
    assert!(page.contains("id=\"connection-state\">connected<"));

    let bare = TestApp::spawn().await;
    let admin = admin_browser(&bare, "root", AdminRole::Admin).await;
    let (_, page) = admin.get(&bare, "/admin/m365").await;
    assert!(page.contains("id=\"config-problem\""), "{page}");
    assert!(
        page.contains("application (client) ID is missing"),
        "{page}"
    );
    assert!(page.contains("App registration"), "{page}");
    assert!(
        page.contains("id=\"connect\" disabled aria-describedby=\"config-problem\""),
        "Connect cannot work, and says why: {page}"
    );
    let r = admin.post(&bare, "/admin/m365/connect", &[]).await;
    assert_eq!(r.status(), 409);
    let page = r.text().await.unwrap();
    assert!(
        page.contains("Microsoft 365 is not configured: the application (client) ID is missing"),
        "{page}"
    );
    let r = admin.post(&bare, "/admin/m365/deactivate", &[]).await;
    assert_eq!(r.status(), 409, "nothing to deactivate");
}

#[tokio::test]
async fn deactivating_clears_every_binding_and_keeps_users_active() {
    let (app, fake, admin) = connected().await;
    let jo = app.create_user("jo", "jo@contoso.com", PASSWORD).await;
    post_and_follow(&app, &admin, "/admin/binding/bind", &[("user", &jo.id)]).await;
    shows(&app, &admin, "jo", "bound").await;

    let page = post_and_follow(&app, &admin, "/admin/m365/deactivate", &[]).await;
    assert!(page.contains("1 binding(s) were cleared"), "{page}");
    assert!(page.contains("id=\"connection-state\">deactivated<"));
    let jo = app.state().directory.get_user("jo").await.unwrap();
    assert!(jo.m365.is_none(), "binding cleared");
    assert_eq!(jo.state, idbridge::directory::UserState::Active);
    assert_eq!(fake.user("jo@contoso.com").unwrap()["accountEnabled"], true);
    assert_eq!(app.events("m365_deactivate").await[0].actor, "admin:root");
    let (_, page) = admin.get(&app, "/admin/binding").await;
    assert_eq!(row_state(&page, "jo").as_deref(), Some("unbound"));
    assert!(page.contains("connection was deactivated"));
}

#[tokio::test]
async fn importing_selected_users_runs_in_the_background_with_live_progress() {
    let (app, fake, admin) = connected().await;
    let adele = fake.add_user(FakeUserSpec {
        upn: "adele.vance@contoso.com".into(),
        given_name: Some("Adele".into()),
        surname: Some("Vance".into()),
        display_name: Some("Adele Vance".into()),
        account_enabled: true,
        ..FakeUserSpec::default()
    });
    let taken = fake.add_user(FakeUserSpec {
        upn: "taken@contoso.com".into(),
        display_name: Some("Taken Already".into()),
        account_enabled: true,
        ..FakeUserSpec::default()
    });
    fake.add_users(3, "contoso.com");
    app.create_user("local", "taken@contoso.com", PASSWORD)
        .await;

    let (_, page) = admin.get(&app, "/admin/m365").await;
    assert!(page.contains("adele.vance@contoso.com"));
    assert!(page.contains(&format!("name=\"user\" value=\"{adele}\"")));
    assert!(
        page.contains("5 users in the tenant, 5 not imported yet"),
        "{page}"
    );

    let r = admin
        .post(
            &app,
            "/admin/m365/import",
            &[("user", &adele), ("user", &taken)],
        )
        .await;
    assert_eq!(r.status(), 303);
    let to = location(&r);
    let run_id = to
        .strip_prefix("/admin/m365?run=")
        .and_then(|s| s.strip_suffix("#import-run"))
        .unwrap_or_else(|| panic!("{to}"))
        .to_string();
    let (status, page) = admin.get(&app, &to).await;
    assert_eq!(status, 200);
    assert!(page.contains("The import has started"));
    assert!(page.contains(&format!("data-run=\"{run_id}\"")));

    let fragment = eventually("import finished", || async {
        let (status, body) = admin
            .get(&app, &format!("/admin/m365/imports/{run_id}"))
            .await;
        assert_eq!(status, 200);
        body.contains("data-refresh-stop").then_some(body)
    })
    .await;
    let fragment = html_unescape(&fragment);
    assert!(
        fragment.contains("data-run-state=\"finished\""),
        "{fragment}"
    );
    assert!(
        fragment.contains("<progress max=\"2\" value=\"2\">"),
        "{fragment}"
    );
    assert!(fragment.contains("1 imported, 1 failed, 2 of 2 done"));
    assert!(fragment.contains("imported as adele.vance"));
    assert!(fragment.contains("a user with this email already exists in idbridge"));
    let run = app.store.import_run(&run_id).await.unwrap().unwrap();
    assert_eq!(
        (run.state.as_str(), run.imported, run.failed),
        ("finished", 1, 1)
    );
    let adele_here = app.state().directory.get_user("adele.vance").await.unwrap();
    assert_eq!(adele_here.firstname, "Adele");
    let ev = app.events("m365_import").await;
    assert_eq!(ev[0].actor, "admin:root");

    // The list marks her imported; "Import all" takes the rest.
    let (_, page) = admin.get(&app, "/admin/m365").await;
    assert!(page.contains("as adele.vance"));
    assert!(page.contains("4 not imported yet"), "{page}");
    let r = admin
        .post(&app, "/admin/m365/import", &[("all", "1")])
        .await;
    assert_eq!(r.status(), 303);
    let to = location(&r);
    let run_id = to
        .strip_prefix("/admin/m365?run=")
        .and_then(|s| s.strip_suffix("#import-run"))
        .unwrap()
        .to_string();
    let run = eventually("import all finished", || async {
        let run = app.store.import_run(&run_id).await.unwrap().unwrap();
        (run.state != "running").then_some(run)
    })
    .await;
    // The three new users import; the taken one fails again (it is still not imported).
    assert_eq!(
        (run.state.as_str(), run.total, run.imported, run.failed),
        ("finished", 4, 3, 1)
    );
    let (_, page) = admin.get(&app, "/admin/m365").await;
    assert!(page.contains("Recent imports"));
}

#[tokio::test]
async fn changing_an_export_direction_is_recorded_with_the_admin() {
    let (app, _fake, admin) = connected().await;
    // The whole table is submitted; only the changed row is written.
    let table = app.state().sync.attribute_table().await.unwrap();
    let mut fields: Vec<(String, String)> = table
        .iter()
        .filter(|(m, _)| !m.always)
        .map(|(m, d)| (format!("dir.{}", m.attribute), d.as_str().to_string()))
        .collect();
    for f in &mut fields {
        if f.0 == "dir.department" {
            f.1 = "export".into();
        }
    }
    let refs: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let page = post_and_follow(&app, &admin, "/admin/m365/attributes", &refs).await;
    assert!(
        page.contains("Export table changed: department: exclude → export."),
        "{page}"
    );
    assert!(page.contains("<option value=\"export\" selected>export</option>"));
    let ev = app.events("integrationattribute_include").await;
    assert_eq!(ev.len(), 1, "one row changed, one event");
    assert_eq!(ev[0].actor, "admin:root");
    assert_eq!(ev[0].target.as_deref(), Some("department"));
    assert!(ev[0].details.contains("\"to\":\"export\""));

    // One attribute + direction.
    let page = post_and_follow(
        &app,
        &admin,
        "/admin/m365/attributes",
        &[("attribute", "department"), ("direction", "exclude")],
    )
    .await;
    assert!(page.contains("department: export → exclude"), "{page}");
    let ev = app.events("integrationattribute_exclude").await;
    assert_eq!(ev[0].actor, "admin:root");

    // Always-exported rows cannot change; bad directions are named.
    let r = admin
        .post(
            &app,
            "/admin/m365/attributes",
            &[("attribute", "firstname"), ("direction", "exclude")],
        )
        .await;
    assert_eq!(r.status(), 422);
    assert!(html_unescape(&r.text().await.unwrap()).contains("not an optional attribute"));
    let r = admin
        .post(
            &app,
            "/admin/m365/attributes",
            &[("dir.jobTitle", "sideways")],
        )
        .await;
    assert_eq!(r.status(), 422);
    assert!(html_unescape(&r.text().await.unwrap()).contains("\"sideways\" is not a direction"));
}

#[tokio::test]
async fn a_read_only_admin_sees_the_pages_but_cannot_change_anything() {
    let (app, fake, _root) = connected().await;
    fake.add_user(FakeUserSpec {
        upn: "kim@contoso.com".into(),
        account_enabled: true,
        ..FakeUserSpec::default()
    });
    let lee = app.create_user("lee", "lee@contoso.com", PASSWORD).await;
    let viewer = admin_browser(&app, "viewer", AdminRole::ReadOnly).await;

    let (status, page) = viewer.get(&app, "/admin/binding").await;
    assert_eq!(status, 200);
    assert_eq!(row_state(&page, "lee").as_deref(), Some("unbound"));
    assert!(
        !page.contains("method=\"post\" action=\"/admin/binding"),
        "{page}"
    );
    assert!(!page.contains("type=\"checkbox\""));
    let (status, page) = viewer.get(&app, "/admin/m365").await;
    assert_eq!(status, 200);
    assert!(page.contains("kim@contoso.com"));
    assert!(
        !page.contains("method=\"post\" action=\"/admin/m365"),
        "{page}"
    );
    assert!(!page.contains("<select"));
    assert!(page.contains("always exported"));

    for (path, fields) in [
        ("/admin/binding/bind", vec![("user", lee.id.as_str())]),
        ("/admin/binding/bind-all", vec![]),
        (
            "/admin/binding/unbind",
            vec![("user", lee.id.as_str()), ("confirmed", "yes")],
        ),
        ("/admin/binding/retry", vec![]),
        ("/admin/m365/connect", vec![]),
        ("/admin/m365/connect-app", vec![]),
        ("/admin/m365/deactivate", vec![]),
        ("/admin/m365/import", vec![("all", "1")]),
        (
            "/admin/m365/attributes",
            vec![("attribute", "department"), ("direction", "export")],
        ),
    ] {
        let r = viewer.post(&app, path, &fields).await;
        assert_eq!(r.status(), 403, "{path}");
    }
    assert!(app
        .state()
        .directory
        .get_user("lee")
        .await
        .unwrap()
        .m365
        .is_none());
    assert_eq!(app.state().m365.status().await.unwrap().state, "connected");
    assert!(app.events("integrationattribute_include").await.is_empty());
}
