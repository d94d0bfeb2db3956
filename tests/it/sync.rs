//! Binding users to Microsoft 365 and keeping them in sync, against the Graph fake.

use chrono::Utc;
use idbridge::directory::{Attribute, User, UserChanges};
use idbridge::events::Actor;
use secrecy::SecretString;
use serde_json::{json, Value};

use crate::support::graph_fake::{FakeUserSpec, GraphFake};
use crate::support::m365::{
    connected as support_connected, eventually, m365_settings as settings_with, settled,
};
use crate::support::TestApp;

const PASSWORD: &str = "Corr3ct-Horse-Battery";

fn admin() -> Actor {
    Actor::Admin("root".into())
}

/// A server connected (client credentials) to a fake tenant whose default domain is
/// contoso.com (managed) and which also has fed.example (federated).
async fn connected(sync_keys: &str, extra: &str) -> (TestApp, GraphFake) {
    let (app, fake) = support_connected(sync_keys, extra).await;
    fake.add_domain("fed.example", true, false);
    (app, fake)
}

async fn user(app: &TestApp, key: &str) -> User {
    app.state().directory.get_user(key).await.unwrap()
}

async fn bind(app: &TestApp, keys: &[&str]) {
    let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    let report = app
        .state()
        .sync
        .bind(&admin(), &keys, Utc::now())
        .await
        .expect("bind accepted");
    assert_eq!(report.queued.len(), keys.len(), "{report:?}");
}

async fn change(app: &TestApp, key: &str, changes: UserChanges) -> User {
    app.state()
        .directory
        .update_user(&admin(), key, &changes, Utc::now())
        .await
        .expect("updated")
}

fn prop(fake: &GraphFake, upn: &str, name: &str) -> Value {
    fake.user(upn)
        .unwrap_or_else(|| panic!("{upn} in M365"))
        .get(name)
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn binding_creates_the_m365_user_stamped_with_a_new_immutable_id() {
    let (app, fake) = connected("", "").await;
    app.create_user("alice", "alice@contoso.com", PASSWORD)
        .await;
    bind(&app, &["alice"]).await;
    let alice = settled(&app, "alice", "bound").await;
    let binding = alice.m365.clone().unwrap();

    let m365 = fake.user("alice@contoso.com").expect("created in M365");
    assert_eq!(m365["givenName"], "Test");
    assert_eq!(m365["surname"], "alice");
    assert_eq!(m365["displayName"], "Test alice");
    assert_eq!(m365["accountEnabled"], true);
    assert_eq!(m365["mailNickname"], "alice");
    // Standard base64 of 16 bytes, never URL-safe; the SAML NameID.
    let immutable = m365["onPremisesImmutableId"].as_str().unwrap();
    assert_eq!(immutable, binding.immutable_id);
    assert_eq!(immutable.len(), 24);
    assert!(immutable.ends_with("==") && !immutable.contains('_') && !immutable.contains('-'));
    // Graph needs a password to create a user; the real one is not known yet (seed 000).
    let random = m365["passwordProfile"]["password"].as_str().unwrap();
    assert_ne!(random, PASSWORD);
    assert!(random.len() >= 16);

    let status = app.state().sync.user_status(&alice).await.unwrap();
    assert_eq!(status.m365_object_id.as_deref(), m365["id"].as_str());
    assert!(status.last_sync_at.is_some());
    assert!(!status.password_pushed);
    assert_eq!(app.events("m365_bind").await[0].actor, "admin:root");
    assert_eq!(app.events("m365_user_created").await.len(), 1);

    // Binding again changes nothing.
    let again = app
        .state()
        .sync
        .bind(&admin(), &["alice".into()], Utc::now())
        .await
        .unwrap();
    assert!(again.queued.is_empty());
    assert_eq!(again.skipped[0].1, "already bound");
}

#[tokio::test]
async fn binding_adopts_an_existing_m365_user_and_keeps_its_immutable_id() {
    let (app, fake) = connected("", "").await;
    fake.add_user(FakeUserSpec {
        upn: "bob@contoso.com".into(),
        given_name: Some("Robert".into()),
        surname: Some("Old".into()),
        immutable_id: Some("yU+2g8ZoAE2X4a4AAfw+KQ==".into()),
        account_enabled: false,
        ..FakeUserSpec::default()
    });
    fake.add_user(FakeUserSpec {
        upn: "carol@contoso.com".into(),
        account_enabled: true,
        ..FakeUserSpec::default()
    });
    let before = fake.users().len();
    app.create_user("bob", "bob@contoso.com", PASSWORD).await;
    app.create_user("carol", "carol@contoso.com", PASSWORD)
        .await;
    bind(&app, &["bob", "carol"]).await;
    let bob = settled(&app, "bob", "bound").await;
    let carol = settled(&app, "carol", "bound").await;

    assert_eq!(fake.users().len(), before, "adopted, not created");
    assert_eq!(bob.m365.unwrap().immutable_id, "yU+2g8ZoAE2X4a4AAfw+KQ==");
    // idbridge's data overwrites M365's, and the adopted account is enabled.
    assert_eq!(prop(&fake, "bob@contoso.com", "givenName"), "Test");
    assert_eq!(prop(&fake, "bob@contoso.com", "surname"), "bob");
    assert_eq!(prop(&fake, "bob@contoso.com", "displayName"), "Test bob");
    assert_eq!(prop(&fake, "bob@contoso.com", "accountEnabled"), true);
    // Carol had none (managed domain): one is generated and stamped.
    let carol_id = carol.m365.unwrap().immutable_id;
    assert_eq!(
        prop(&fake, "carol@contoso.com", "onPremisesImmutableId"),
        carol_id.as_str()
    );
    assert_eq!(app.events("m365_user_adopted").await.len(), 2);
}

#[tokio::test]
async fn federated_domains_need_the_immutable_id_at_creation_and_adoption_without_one_fails_clearly(
) {
    let (app, fake) = connected("", "").await;
    fake.add_user(FakeUserSpec {
        upn: "erin@fed.example".into(),
        immutable_id: None,
        account_enabled: true,
        ..FakeUserSpec::default()
    });
    app.create_user("dave", "dave@fed.example", PASSWORD).await;
    app.create_user("erin", "erin@fed.example", PASSWORD).await;
    bind(&app, &["dave", "erin"]).await;

    let dave = settled(&app, "dave", "bound").await;
    assert_eq!(
        prop(&fake, "dave@fed.example", "onPremisesImmutableId"),
        dave.m365.unwrap().immutable_id.as_str()
    );
    let erin = settled(&app, "erin", "failed").await;
    let status = app.state().sync.user_status(&erin).await.unwrap();
    let error = status.last_error.unwrap();
    assert!(
        error.contains("no immutable ID") && error.contains("federated"),
        "{error}"
    );
    assert!(error.contains("Fix:"), "{error}");
    assert_eq!(status.failed_jobs.len(), 1);
    assert_eq!(status.failed_jobs[0].kind, "bind");
    // Nothing was changed on Erin's M365 account.
    assert_eq!(
        prop(&fake, "erin@fed.example", "onPremisesImmutableId"),
        Value::Null
    );
    let events = app.events("m365_sync_failed").await;
    assert_eq!(events[0].target.as_deref(), Some("erin"));
}

#[tokio::test]
async fn unbind_blocks_sign_in_in_m365_and_rebind_unblocks_the_same_account() {
    let (app, fake) = connected("", "").await;
    app.create_user("frank", "frank@contoso.com", PASSWORD)
        .await;
    bind(&app, &["frank"]).await;
    let bound = settled(&app, "frank", "bound").await;
    let object_id = prop(&fake, "frank@contoso.com", "id");

    let report = app
        .state()
        .sync
        .unbind(&admin(), &["frank".into()], Utc::now())
        .await
        .unwrap();
    assert_eq!(report.queued, vec!["frank".to_string()]);
    // SAML sign-in stops at once: the binding is no longer "bound".
    assert_eq!(
        user(&app, "frank").await.m365.unwrap().state.as_str(),
        "unbound"
    );
    settled(&app, "frank", "unbound").await;
    assert_eq!(prop(&fake, "frank@contoso.com", "accountEnabled"), false);
    assert!(
        fake.user("frank@contoso.com").is_some(),
        "blocked, not deleted"
    );
    assert_eq!(app.events("m365_unbind").await.len(), 1);

    bind(&app, &["frank"]).await;
    let rebound = settled(&app, "frank", "bound").await;
    assert_eq!(prop(&fake, "frank@contoso.com", "accountEnabled"), true);
    assert_eq!(prop(&fake, "frank@contoso.com", "id"), object_id);
    assert_eq!(
        rebound.m365.unwrap().immutable_id,
        bound.m365.unwrap().immutable_id,
        "the immutable ID never changes"
    );
    assert_eq!(fake.users().len(), 1);
}

/// Every row of seed 004's tables, exported at bind and on change.
#[tokio::test]
async fn every_exported_attribute_reaches_m365_at_bind_and_on_change() {
    let (app, fake) = connected("", "").await;
    let sync = &app.state().sync;
    for attribute in [
        "addresses.work.country",
        "addresses.work.locality",
        "addresses.work.postalCode",
        "addresses.work.region",
        "addresses.work.streetAddress",
        "alternateEmail",
        "department",
        "jobTitle",
        "location",
        "manager",
        "phoneNumbers.mobile.number",
        "phoneNumbers.work.number",
    ] {
        sync.set_direction(&admin(), attribute, "export", Utc::now())
            .await
            .unwrap();
    }
    app.create_user("boss", "boss@contoso.com", PASSWORD).await;
    app.create_user("gina", "gina@contoso.com", PASSWORD).await;
    change(
        &app,
        "gina",
        UserChanges::new()
            .with(Attribute::Firstname, "Gina")
            .with(Attribute::Lastname, "Ruiz")
            .with(Attribute::WorkCountry, "NL")
            .with(Attribute::WorkLocality, "Utrecht")
            .with(Attribute::WorkPostalCode, "3511 AB")
            .with(Attribute::WorkRegion, "UT")
            .with(Attribute::WorkStreetAddress, "Oudegracht 1")
            .with(Attribute::AlternateEmail, "gina@home.example")
            .with(Attribute::Department, "Finance")
            .with(Attribute::JobTitle, "Controller")
            .with(Attribute::Location, "HQ 3.14")
            .with(Attribute::Manager, "boss")
            .with(Attribute::MobilePhone, "+31 6 1234 5678")
            .with(Attribute::WorkPhone, "+31 30 123 4567"),
    )
    .await;
    bind(&app, &["boss"]).await;
    settled(&app, "boss", "bound").await;
    bind(&app, &["gina"]).await;
    settled(&app, "gina", "bound").await;

    let upn = "gina@contoso.com";
    let expected = [
        ("givenName", json!("Gina")),
        ("surname", json!("Ruiz")),
        ("displayName", json!("Gina Ruiz")),
        ("userPrincipalName", json!(upn)),
        ("country", json!("NL")),
        ("city", json!("Utrecht")),
        ("postalCode", json!("3511 AB")),
        ("state", json!("UT")),
        ("streetAddress", json!("Oudegracht 1")),
        ("otherMails", json!(["gina@home.example"])),
        ("department", json!("Finance")),
        ("jobTitle", json!("Controller")),
        ("officeLocation", json!("HQ 3.14")),
        ("mobilePhone", json!("+31 6 1234 5678")),
        ("businessPhones", json!(["+31 30 123 4567"])),
    ];
    for (name, value) in &expected {
        assert_eq!(&prop(&fake, upn, name), value, "{name} at bind");
    }
    let boss_id = prop(&fake, "boss@contoso.com", "id");
    assert_eq!(fake.manager_of(upn).map(Value::from), Some(boss_id));

    // Changes later flow without an admin action.
    change(
        &app,
        "gina",
        UserChanges::new()
            .with(Attribute::Lastname, "Ruiz-Smit")
            .with(Attribute::Department, "Treasury")
            .with(Attribute::WorkPhone, String::new())
            .with(Attribute::AlternateEmail, "g.ruiz@home.example")
            .with(Attribute::Manager, String::new()),
    )
    .await;
    settled(&app, "gina", "bound").await;
    assert_eq!(prop(&fake, upn, "surname"), "Ruiz-Smit");
    assert_eq!(prop(&fake, upn, "displayName"), "Gina Ruiz-Smit");
    assert_eq!(prop(&fake, upn, "department"), "Treasury");
    assert_eq!(prop(&fake, upn, "businessPhones"), json!([]));
    assert_eq!(
        prop(&fake, upn, "otherMails"),
        json!(["g.ruiz@home.example"])
    );
    assert_eq!(fake.manager_of(upn), None);

    // Company email is the userPrincipalName: changing it renames the M365 user.
    change(
        &app,
        "gina",
        UserChanges::new().with(Attribute::Email, "gina.ruiz@contoso.com"),
    )
    .await;
    settled(&app, "gina", "bound").await;
    assert!(fake.user("gina.ruiz@contoso.com").is_some());
    assert!(fake.user(upn).is_none());
}

#[tokio::test]
async fn excluded_attributes_stay_as_they_are_in_m365() {
    let (app, fake) = connected("", "").await;
    fake.add_user(FakeUserSpec {
        upn: "hank@contoso.com".into(),
        job_title: Some("Set in M365".into()),
        department: Some("M365 dept".into()),
        account_enabled: true,
        ..FakeUserSpec::default()
    });
    app.create_user("hank", "hank@contoso.com", PASSWORD).await;
    change(
        &app,
        "hank",
        UserChanges::new()
            .with(Attribute::JobTitle, "Set here")
            .with(Attribute::Department, "Here dept"),
    )
    .await;
    bind(&app, &["hank"]).await;
    settled(&app, "hank", "bound").await;
    assert_eq!(prop(&fake, "hank@contoso.com", "jobTitle"), "Set in M365");
    change(
        &app,
        "hank",
        UserChanges::new().with(Attribute::JobTitle, "Changed here"),
    )
    .await;
    settled(&app, "hank", "bound").await;
    assert_eq!(prop(&fake, "hank@contoso.com", "jobTitle"), "Set in M365");

    // Selecting Export overwrites M365's value for every bound user at once.
    let from = app
        .state()
        .sync
        .set_direction(&admin(), "department", "export", Utc::now())
        .await
        .unwrap();
    assert_eq!(from.as_str(), "exclude");
    eventually("department exported", || async {
        (prop(&fake, "hank@contoso.com", "department") == "Here dept").then_some(())
    })
    .await;
}

#[tokio::test]
async fn changing_an_attribute_direction_records_seed_004_events() {
    let (app, _fake) = connected("", "").await;
    let sync = &app.state().sync;
    let now = Utc::now();
    sync.set_direction(&admin(), "department", "import", now)
        .await
        .unwrap();
    sync.set_direction(&admin(), "department", "export", now)
        .await
        .unwrap();
    sync.set_direction(&admin(), "department", "exclude", now)
        .await
        .unwrap();
    // Setting the same direction again is not a change.
    sync.set_direction(&admin(), "department", "exclude", now)
        .await
        .unwrap();

    let include = app.events("integrationattribute_include").await;
    let exclude = app.events("integrationattribute_exclude").await;
    assert_eq!(include.len(), 2);
    assert_eq!(exclude.len(), 1);
    assert_eq!(exclude[0].actor, "admin:root");
    assert_eq!(exclude[0].target.as_deref(), Some("department"));
    let details: Value = serde_json::from_str(&exclude[0].details).unwrap();
    assert_eq!(details["from"], "export");
    assert_eq!(details["to"], "exclude");
    assert_eq!(details["integration"]["type"], "microsoft365");
    assert_eq!(details["integration"]["tenantId"], GraphFake::TENANT_ID);
    let last_include: Value = serde_json::from_str(&include[0].details).unwrap();
    assert_eq!(
        (last_include["from"].as_str(), last_include["to"].as_str()),
        (Some("import"), Some("export"))
    );

    // Always-exported rows and unknown names are refused with the list of choices.
    let err = sync
        .set_direction(&admin(), "firstname", "exclude", now)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not an optional attribute") && err.contains("department"),
        "{err}"
    );
    let err = sync
        .set_direction(&admin(), "jobTitle", "sideways", now)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("export, import or exclude"), "{err}");
    let table = sync.attribute_table().await.unwrap();
    assert_eq!(table.len(), 17);
    assert!(table
        .iter()
        .filter(|(m, _)| m.always)
        .all(|(_, d)| d.as_str() == "export"));
}

#[tokio::test]
async fn imported_attributes_follow_changes_made_in_m365() {
    let (app, fake) = connected("", "").await;
    app.create_user("ivy", "ivy@contoso.com", PASSWORD).await;
    app.create_user("jack", "jack@contoso.com", PASSWORD).await;
    bind(&app, &["ivy", "jack"]).await;
    settled(&app, "ivy", "bound").await;
    settled(&app, "jack", "bound").await;
    let sync = &app.state().sync;
    sync.set_direction(&admin(), "jobTitle", "import", Utc::now())
        .await
        .unwrap();
    sync.set_direction(&admin(), "manager", "import", Utc::now())
        .await
        .unwrap();
    // Switching to Import reads Microsoft 365 at once (a full delta round).
    eventually("first import round done", || async {
        let state = app.store.delta_state().await.unwrap();
        state.filter(|(select, link)| select.contains("manager") && link.is_some())
    })
    .await;

    fake.set_user_property("ivy@contoso.com", "jobTitle", json!("CFO"));
    fake.set_manager_in_m365("ivy@contoso.com", Some("jack@contoso.com"));
    fake.set_user_property("ivy@contoso.com", "department", json!("not imported"));
    let updated = sync.import_round(Utc::now()).await.unwrap();
    assert_eq!(updated, 1);
    let ivy = user(&app, "ivy").await;
    assert_eq!(ivy.get(Attribute::JobTitle), Some("CFO"));
    assert_eq!(ivy.get(Attribute::Manager), Some("jack"));
    assert_eq!(
        ivy.get(Attribute::Department),
        None,
        "department is excluded"
    );

    // Later rounds read only changes (the deltaLink is kept).
    fake.set_user_property("ivy@contoso.com", "jobTitle", json!("CEO"));
    assert_eq!(sync.import_round(Utc::now()).await.unwrap(), 1);
    assert_eq!(
        user(&app, "ivy").await.get(Attribute::JobTitle),
        Some("CEO")
    );
    assert_eq!(sync.import_round(Utc::now()).await.unwrap(), 0);
    let events = app.events("user_update").await;
    let details: Value = serde_json::from_str(&events[0].details).unwrap();
    assert_eq!(details["source"], "m365");
    assert_eq!(events[0].actor, "system");

    // An imported value is not pushed back, and Exclude stops the import.
    sync.set_direction(&admin(), "jobTitle", "exclude", Utc::now())
        .await
        .unwrap();
    fake.set_user_property("ivy@contoso.com", "jobTitle", json!("Retired"));
    sync.import_round(Utc::now()).await.unwrap();
    assert_eq!(
        user(&app, "ivy").await.get(Attribute::JobTitle),
        Some("CEO")
    );
}

#[tokio::test]
async fn the_password_reaches_m365_at_the_next_sign_in_and_on_every_change() {
    let (app, fake) = connected("", "").await;
    let kim = app.create_user("kim", "kim@contoso.com", PASSWORD).await;
    bind(&app, &["kim"]).await;
    settled(&app, "kim", "bound").await;
    let random = prop(&fake, "kim@contoso.com", "passwordProfile")["password"].clone();

    // Seed 000: idbridge becomes the password authority once the user signs in here.
    let outcome = app
        .state()
        .idp
        .login(
            "kim",
            &SecretString::from(PASSWORD.to_string()),
            Some(&*sp_m365(&app)),
            None,
            Utc::now(),
        )
        .await
        .unwrap();
    assert!(matches!(
        outcome,
        idbridge::sso::LoginOutcome::PasswordPassed(_)
    ));
    eventually("password pushed", || async {
        (prop(&fake, "kim@contoso.com", "passwordProfile")["password"] == PASSWORD).then_some(())
    })
    .await;
    assert_ne!(random, PASSWORD);
    // The fake has the PATCH before the job's completion commits: wait for the record too.
    eventually("binding marked password pushed", || async {
        app.state()
            .sync
            .user_status(&kim)
            .await
            .unwrap()
            .password_pushed
            .then_some(())
    })
    .await;

    // The first push happens as the user signs in: their sessions stay.
    assert_eq!(
        prop(&fake, "kim@contoso.com", "signInSessionsValidFromDateTime"),
        Value::Null
    );

    // A change here is pushed, encrypted while it waits, and erased once delivered.
    fake.fail_next(3, 500);
    let new_password = "An0ther-Secret-Phrase";
    app.state()
        .directory
        .set_password(
            &admin(),
            "kim",
            &SecretString::from(new_password.to_string()),
            Utc::now(),
        )
        .await
        .unwrap();
    let sealed = app.store.queued_jobs(&kim.id).await.unwrap();
    if let Some(job) = sealed.first() {
        let enc = job.secret_enc.clone().unwrap();
        assert!(
            !enc.contains(new_password) && enc.starts_with("v1:"),
            "sealed at rest"
        );
    }
    eventually("new password pushed", || async {
        (prop(&fake, "kim@contoso.com", "passwordProfile")["password"] == new_password)
            .then_some(())
    })
    .await;
    settled(&app, "kim", "bound").await;
    // Seed 003: a password change here signs the user out of Microsoft 365.
    assert!(prop(&fake, "kim@contoso.com", "signInSessionsValidFromDateTime").is_string());
    assert!(app.store.queued_jobs(&kim.id).await.unwrap().is_empty());
    let failed = app.store.failed_jobs(None).await.unwrap();
    assert!(failed.is_empty(), "{failed:?}");
}

fn sp_m365(app: &TestApp) -> std::sync::Arc<idbridge::sso::ServiceProvider> {
    idbridge::sso::ServiceProviders::from_config(&app.state().config)
        .get(idbridge::sso::M365_ENTITY_ID)
        .expect("M365 is built in")
}

#[tokio::test]
async fn an_expired_password_blocks_the_m365_account_and_a_reset_unblocks_it() {
    let (app, fake) = connected("", "[password_policy]\nexpiry_days = 30\n").await;
    let lee = app.create_user("lee", "lee@contoso.com", PASSWORD).await;
    bind(&app, &["lee"]).await;
    settled(&app, "lee", "bound").await;
    assert_eq!(prop(&fake, "lee@contoso.com", "accountEnabled"), true);

    let long_ago = (Utc::now() - chrono::Duration::days(31)).timestamp_millis();
    app.store
        .set_password_changed_at(&lee.id, long_ago)
        .await
        .unwrap();
    app.state().sync.scan_expired_passwords(Utc::now()).await;
    app.state().sync.wake();
    eventually("blocked in M365", || async {
        (prop(&fake, "lee@contoso.com", "accountEnabled") == false).then_some(())
    })
    .await;
    // Scanning again queues nothing more.
    app.state().sync.scan_expired_passwords(Utc::now()).await;
    settled(&app, "lee", "bound").await;

    app.state()
        .directory
        .set_password(
            &admin(),
            "lee",
            &SecretString::from("Fresh-Passw0rd-2026".to_string()),
            Utc::now(),
        )
        .await
        .unwrap();
    eventually("unblocked in M365", || async {
        (prop(&fake, "lee@contoso.com", "accountEnabled") == true).then_some(())
    })
    .await;
    assert_eq!(
        prop(&fake, "lee@contoso.com", "passwordProfile")["password"],
        "Fresh-Passw0rd-2026"
    );
}

#[tokio::test]
async fn suspension_blocks_the_m365_account_and_activation_unblocks_it() {
    let (app, fake) = connected("", "").await;
    app.create_user("mia", "mia@contoso.com", PASSWORD).await;
    bind(&app, &["mia"]).await;
    settled(&app, "mia", "bound").await;
    let directory = &app.state().directory;
    directory
        .set_state(
            &admin(),
            "mia",
            idbridge::directory::UserState::Suspended,
            Utc::now(),
        )
        .await
        .unwrap();
    settled(&app, "mia", "bound").await;
    assert_eq!(prop(&fake, "mia@contoso.com", "accountEnabled"), false);
    directory
        .set_state(
            &admin(),
            "mia",
            idbridge::directory::UserState::Active,
            Utc::now(),
        )
        .await
        .unwrap();
    settled(&app, "mia", "bound").await;
    assert_eq!(prop(&fake, "mia@contoso.com", "accountEnabled"), true);
}

#[tokio::test]
async fn throttling_and_5xx_storms_mid_sync_lose_and_duplicate_nothing() {
    let (app, fake) = connected("", "").await;
    let mut names = Vec::new();
    for i in 0..60 {
        let name = format!("u{i:02}");
        app.create_user(&name, &format!("{name}@contoso.com"), PASSWORD)
            .await;
        names.push(name);
    }
    // Let the token and the domain list through, then a storm of 429s and 5xx.
    fake.pass_next(2);
    fake.throttle_next(3, "0");
    fake.fail_next(4, 503);
    fake.fail_next(3, 500);
    let keys: Vec<&str> = names.iter().map(String::as_str).collect();
    bind(&app, &keys).await;
    for name in &names {
        settled(&app, name, "bound").await;
    }
    let upns: Vec<String> = fake
        .users()
        .iter()
        .map(|u| u["userPrincipalName"].as_str().unwrap().to_lowercase())
        .collect();
    assert_eq!(upns.len(), 60, "each user created exactly once");
    let unique: std::collections::HashSet<_> = upns.iter().collect();
    assert_eq!(unique.len(), 60);
    assert!(app.store.failed_jobs(None).await.unwrap().is_empty());
    // Batching: far fewer HTTP requests than users.
    let graph_requests = fake.request_count();
    assert!(
        graph_requests < 60,
        "{graph_requests} Graph requests for 60 users"
    );
}

#[tokio::test]
async fn a_lost_answer_after_graph_applied_the_create_does_not_create_twice() {
    let (app, fake) = connected("", "").await;
    app.create_user("nina", "nina@contoso.com", PASSWORD).await;
    app.create_user("omar", "omar@contoso.com", PASSWORD).await;
    fake.apply_then_fail_next(2, 500);
    bind(&app, &["nina", "omar"]).await;
    let nina = settled(&app, "nina", "bound").await;
    settled(&app, "omar", "bound").await;
    assert_eq!(fake.users().len(), 2);
    assert_eq!(
        prop(&fake, "nina@contoso.com", "onPremisesImmutableId"),
        nina.m365.unwrap().immutable_id.as_str()
    );
}

#[tokio::test]
async fn a_graph_400_fails_only_that_user_with_graphs_message() {
    let (app, fake) = connected("", "").await;
    app.create_user("pat", "pat@unverified.example", PASSWORD)
        .await;
    app.create_user("quinn", "quinn@contoso.com", PASSWORD)
        .await;
    bind(&app, &["pat", "quinn"]).await;
    settled(&app, "quinn", "bound").await;
    let pat = settled(&app, "pat", "failed").await;
    let status = app.state().sync.user_status(&pat).await.unwrap();
    let error = status.last_error.unwrap();
    assert!(
        error.contains("verified domain"),
        "Graph's message: {error}"
    );
    assert!(fake.user("pat@unverified.example").is_none());
    let counts = app.state().sync.counts().await.unwrap();
    assert_eq!((counts.bound, counts.bind_failed, counts.failed), (1, 1, 1));

    // After the admin fixes the email, binding again works.
    change(
        &app,
        "pat",
        UserChanges::new().with(Attribute::Email, "pat@contoso.com"),
    )
    .await;
    bind(&app, &["pat"]).await;
    settled(&app, "pat", "bound").await;
    assert!(fake.user("pat@contoso.com").is_some());
}

#[tokio::test]
async fn retries_are_bounded_then_the_job_is_failed_and_can_be_retried() {
    let (app, fake) = connected("max_attempts = 3\ngraph_max_attempts = 1", "").await;
    app.create_user("rosa", "rosa@contoso.com", PASSWORD).await;
    bind(&app, &["rosa"]).await;
    settled(&app, "rosa", "bound").await;
    // Each attempt is one $batch request (Graph's own retries are off here).
    fake.fail_next(3, 500);
    change(
        &app,
        "rosa",
        UserChanges::new().with(Attribute::Firstname, "Rosalind"),
    )
    .await;
    let rosa = user(&app, "rosa").await;
    let failed = eventually("job failed", || async {
        let f = app.state().sync.failed_jobs(Some(&rosa.id)).await.unwrap();
        (!f.is_empty()).then_some(f)
    })
    .await;
    assert_eq!(failed[0].attempts, 3);
    assert!(failed[0]
        .error
        .as_deref()
        .unwrap()
        .contains("gave up after 3 attempts"));
    assert_eq!(prop(&fake, "rosa@contoso.com", "givenName"), "Test");
    // The user stays bound (sign-in works); the failure is visible on the user.
    let status = app.state().sync.user_status(&rosa).await.unwrap();
    assert_eq!(status.state.map(|s| s.as_str()), Some("bound"));
    assert!(status.last_error.is_some());

    let n = app
        .state()
        .sync
        .retry_failed(&admin(), Some(&rosa), Utc::now())
        .await
        .unwrap();
    assert_eq!(n, 1);
    eventually("retried", || async {
        (prop(&fake, "rosa@contoso.com", "givenName") == "Rosalind").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_user_deleted_in_m365_stays_here_and_rebinding_waits_for_the_address() {
    let (app, fake) = connected("", "").await;
    app.create_user("sam", "sam@contoso.com", PASSWORD).await;
    bind(&app, &["sam"]).await;
    settled(&app, "sam", "bound").await;
    fake.delete_user_in_m365("sam@contoso.com");
    change(
        &app,
        "sam",
        UserChanges::new().with(Attribute::Lastname, "Changed"),
    )
    .await;
    let sam = settled(&app, "sam", "failed").await;
    assert_eq!(
        sam.lastname, "Changed",
        "unchanged here apart from the edit"
    );
    let status = app.state().sync.user_status(&sam).await.unwrap();
    assert!(status.last_error.unwrap().contains("no longer exists"));

    // Microsoft still holds the address: the bind fails with Graph's message and retries.
    bind(&app, &["sam"]).await;
    let waiting = eventually("bind retrying", || async {
        let jobs = app.store.queued_jobs(&sam.id).await.unwrap();
        jobs.first()
            .and_then(|j| j.last_error.clone())
            .filter(|_| jobs[0].attempts >= 1)
    })
    .await;
    assert!(waiting.contains("userPrincipalName"), "{waiting}");
    assert_eq!(
        user(&app, "sam").await.m365.unwrap().state.as_str(),
        "pending"
    );

    fake.release_deleted_upns();
    let rebound = settled(&app, "sam", "bound").await;
    assert_eq!(prop(&fake, "sam@contoso.com", "surname"), "Changed");
    assert_eq!(rebound.m365.unwrap().state.as_str(), "bound");
}

#[tokio::test]
async fn deactivating_the_connection_clears_bindings_and_the_outbox() {
    let (app, fake) = connected("", "").await;
    app.create_user("tess", "tess@contoso.com", PASSWORD).await;
    bind(&app, &["tess"]).await;
    settled(&app, "tess", "bound").await;
    app.state()
        .m365
        .deactivate(&admin(), Utc::now())
        .await
        .unwrap();
    let tess = user(&app, "tess").await;
    assert!(tess.m365.is_none());
    assert_eq!(
        prop(&fake, "tess@contoso.com", "accountEnabled"),
        true,
        "users stay active"
    );
    let err = app
        .state()
        .sync
        .bind(&admin(), &["tess".into()], Utc::now())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("idbridge m365 connect"), "{err}");
}

#[tokio::test]
async fn a_refused_token_pauses_sync_shows_reconnect_and_reconnecting_resumes_it() {
    let fake = GraphFake::start().await;
    fake.add_domain("contoso.com", false, true);
    let app = TestApp::spawn_with(&settings_with(&fake, "", "")).await;
    fake.register_redirect_uri(&app.url("/m365/callback"));
    let (status, page) = crate::m365::consent(&app).await;
    assert_eq!(status, 200, "{page}");
    app.create_user("uma", "uma@contoso.com", PASSWORD).await;
    bind(&app, &["uma"]).await;
    let uma = settled(&app, "uma", "bound").await;

    // The admin's grant is revoked in Entra: the refresh is refused.
    fake.revoke_refresh_tokens();
    fake.expire_access_tokens();
    change(
        &app,
        "uma",
        UserChanges::new().with(Attribute::Lastname, "Waiting"),
    )
    .await;
    eventually("connection shows reconnect", || async {
        let s = app.state().m365.status().await.unwrap();
        (s.state == "reconnect").then_some(())
    })
    .await;
    let queued = eventually("job waiting, not failed", || async {
        let jobs = app.store.queued_jobs(&uma.id).await.unwrap();
        jobs.first().filter(|j| j.last_error.is_some()).cloned()
    })
    .await;
    assert_eq!(
        queued.attempts, 0,
        "a connection problem is not the job's fault"
    );
    assert!(queued.last_error.unwrap().contains("m365 connect"));
    assert!(app.store.failed_jobs(None).await.unwrap().is_empty());

    let (status, _) = crate::m365::consent(&app).await;
    assert_eq!(status, 200);
    settled(&app, "uma", "bound").await;
    assert_eq!(prop(&fake, "uma@contoso.com", "surname"), "Waiting");
}
