//! The user directory through the real store: validation, uniqueness, policy, events.

use chrono::{Duration, Utc};
use idbridge::directory::{Attribute, DirectoryError, PolicyViolation, UserChanges};
use idbridge::events::Actor;
use secrecy::SecretString;

use crate::support::TestApp;

fn pw(s: &str) -> SecretString {
    SecretString::from(s.to_string())
}

fn new_user(username: &str, email: &str) -> UserChanges {
    UserChanges::new()
        .with(Attribute::Username, username)
        .with(Attribute::Email, email)
        .with(Attribute::Firstname, "Ada")
        .with(Attribute::Lastname, "Lovelace")
}

async fn count(app: &TestApp) -> i64 {
    app.store.count_users().await.unwrap()
}

#[tokio::test]
async fn every_seed_004_attribute_is_stored_and_shown() {
    let app = TestApp::spawn().await;
    let dir = &app.state().directory;
    let boss = app
        .create_user("boss", "boss@contoso.com", "Chief pw 1!x")
        .await;
    let changes = new_user("ada", "Ada@Contoso.com")
        .with(Attribute::AlternateEmail, "ada@home.example")
        .with(Attribute::JobTitle, "Engineer")
        .with(Attribute::Department, "R&D")
        .with(Attribute::Location, "Building 7")
        .with(Attribute::Manager, boss.username.clone())
        .with(Attribute::WorkStreetAddress, "1 Main St")
        .with(Attribute::WorkLocality, "Springfield")
        .with(Attribute::WorkRegion, "IL")
        .with(Attribute::WorkPostalCode, "62701")
        .with(Attribute::WorkCountry, "US")
        .with(Attribute::WorkPhone, "+1 555 0100")
        .with(Attribute::MobilePhone, "+1 555 0199");
    let user = dir
        .create_user(
            &Actor::System,
            &changes,
            Some(&pw("Analytical 1!")),
            Utc::now(),
        )
        .await
        .unwrap();
    let json = user.to_json();
    assert_eq!(json["username"], "ada");
    assert_eq!(json["email"], "Ada@Contoso.com");
    assert_eq!(json["displayName"], "Ada Lovelace");
    assert_eq!(json["alternateEmail"], "ada@home.example");
    assert_eq!(json["jobTitle"], "Engineer");
    assert_eq!(json["department"], "R&D");
    assert_eq!(json["location"], "Building 7");
    assert_eq!(json["manager"], "boss");
    assert_eq!(json["addresses"]["work"]["streetAddress"], "1 Main St");
    assert_eq!(json["addresses"]["work"]["locality"], "Springfield");
    assert_eq!(json["addresses"]["work"]["region"], "IL");
    assert_eq!(json["addresses"]["work"]["postalCode"], "62701");
    assert_eq!(json["addresses"]["work"]["country"], "US");
    assert_eq!(json["phoneNumbers"]["work"]["number"], "+1 555 0100");
    assert_eq!(json["phoneNumbers"]["mobile"]["number"], "+1 555 0199");
    assert_eq!(json["state"], "active");
    assert_eq!(json["hasPassword"], true);
    assert!(json.get("passwordHash").is_none());

    // Clearing an optional attribute with an empty value.
    let cleared = dir
        .update_user(
            &Actor::System,
            "ada",
            &UserChanges::new().with(Attribute::Department, String::new()),
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(cleared.get(Attribute::Department), None);
    assert_eq!(cleared.get(Attribute::JobTitle), Some("Engineer"));
    // Lookup by email is case-insensitive.
    assert_eq!(dir.get_user("ada@contoso.COM").await.unwrap().id, user.id);
}

#[tokio::test]
async fn duplicates_are_refused_and_change_nothing() {
    let app = TestApp::spawn().await;
    let dir = &app.state().directory;
    app.create_user("ann", "ann@contoso.com", "Secret pw 1!")
        .await;
    let before = count(&app).await;

    let err = dir
        .create_user(
            &Actor::System,
            &new_user("ANN", "other@contoso.com"),
            None,
            Utc::now(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, DirectoryError::Duplicate { field: "username" }),
        "{err}"
    );
    let err = dir
        .create_user(
            &Actor::System,
            &new_user("ann2", "ANN@contoso.com"),
            None,
            Utc::now(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, DirectoryError::Duplicate { field: "email" }),
        "{err}"
    );
    assert!(err.to_string().contains("email"));
    assert_eq!(count(&app).await, before);

    // Renaming onto an existing email is refused too and leaves the user unchanged.
    app.create_user("bob", "bob@contoso.com", "Secret pw 2!")
        .await;
    let err = dir
        .update_user(
            &Actor::System,
            "bob",
            &UserChanges::new().with(Attribute::Email, "ann@contoso.com"),
            Utc::now(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, DirectoryError::Duplicate { field: "email" }));
    assert_eq!(dir.get_user("bob").await.unwrap().email, "bob@contoso.com");
}

#[tokio::test]
async fn invalid_input_names_the_field_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let dir = &app.state().directory;
    let cases: Vec<(UserChanges, &str)> = vec![
        (new_user("x", "not-an-email"), "email"),
        (new_user("bad name", "x@contoso.com"), "username"),
        (
            new_user("y", "y@contoso.com").with(Attribute::Department, "d".repeat(65)),
            "department",
        ),
        (
            new_user("z", "z@contoso.com").with(Attribute::Firstname, "f".repeat(65)),
            "firstname",
        ),
        (
            new_user("w", "w@contoso.com").with(Attribute::JobTitle, "bad\u{1}title"),
            "jobTitle",
        ),
        (
            new_user("v", "v@contoso.com").with(Attribute::AlternateEmail, "nope"),
            "alternateEmail",
        ),
        (new_user("u", ""), "email"),
    ];
    for (changes, field) in cases {
        let err = dir
            .create_user(&Actor::System, &changes, None, Utc::now())
            .await
            .unwrap_err();
        assert!(
            err.to_string().starts_with(field),
            "expected an error about {field}, got: {err}"
        );
    }
    let err = dir
        .create_user(
            &Actor::System,
            &new_user("m", "m@contoso.com").with(Attribute::Manager, "ghost"),
            None,
            Utc::now(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, DirectoryError::UnknownManager(_)), "{err}");
    assert_eq!(count(&app).await, 0);
    assert!(app.events("user_create").await.is_empty());
}

#[tokio::test]
async fn password_policy_rules_each_say_which_rule_failed() {
    let app = TestApp::spawn().await;
    let dir = &app.state().directory;
    app.create_user("carol", "carol@contoso.com", "First pass 1!")
        .await;
    let cases = [
        ("Ab1!", PolicyViolation::TooShort(8)),
        (
            "alllowercase",
            PolicyViolation::TooFewClasses {
                required: 3,
                found: 1,
            },
        ),
        ("Pässword12!", PolicyViolation::DisallowedCharacter),
        ("xxCarol123!", PolicyViolation::ContainsUsername),
        ("First pass 1!", PolicyViolation::Reused(5)),
    ];
    for (candidate, expected) in cases {
        let err = dir
            .set_password(&Actor::System, "carol", &pw(candidate), Utc::now())
            .await
            .unwrap_err();
        match err {
            DirectoryError::Policy(v) => assert_eq!(v, expected, "{candidate}"),
            other => panic!("{candidate}: unexpected {other}"),
        }
    }
    // Every refusal is an event, none carries the password.
    let rejected = app.events("user_password_rejected").await;
    assert_eq!(rejected.len(), 5);
    assert!(rejected.iter().all(|e| !e.details.contains("Ab1!")));
    // The original password still works.
    assert!(dir
        .authenticate("carol", &pw("First pass 1!"))
        .await
        .unwrap()
        .is_some());
    // A new valid password works and the old one stops working.
    dir.set_password(&Actor::System, "carol", &pw("Second pass 2?"), Utc::now())
        .await
        .unwrap();
    assert!(dir
        .authenticate("carol", &pw("First pass 1!"))
        .await
        .unwrap()
        .is_none());
    assert!(dir
        .authenticate("carol@contoso.com", &pw("Second pass 2?"))
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn history_length_and_expiry_follow_the_configured_policy() {
    let app =
        TestApp::spawn_with("[password_policy]\nhistory = 2\nexpiry_days = 30\nmin_length = 10")
            .await;
    let dir = &app.state().directory;
    let user = app
        .create_user("dave", "dave@contoso.com", "Hidden pw 01!")
        .await;
    let err = dir
        .set_password(&Actor::System, "dave", &pw("Short 1!"), Utc::now())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at least 10"), "{err}");
    for p in ["Hidden pw 02!", "Hidden pw 03!"] {
        dir.set_password(&Actor::System, "dave", &pw(p), Utc::now())
            .await
            .unwrap();
    }
    // Only the last two are remembered: the first may be used again.
    dir.set_password(&Actor::System, "dave", &pw("Hidden pw 01!"), Utc::now())
        .await
        .unwrap();

    let user = dir.get_user(&user.id).await.unwrap();
    assert!(!dir.password_expired(&user, Utc::now() + Duration::days(29)));
    assert!(dir.password_expired(&user, Utc::now() + Duration::days(31)));
}

#[tokio::test]
async fn admin_changes_are_recorded_with_actor_and_target() {
    let app = TestApp::spawn().await;
    let dir = &app.state().directory;
    let actor = Actor::Admin("root".into());
    dir.create_user(
        &actor,
        &new_user("erin", "erin@contoso.com"),
        None,
        Utc::now(),
    )
    .await
    .unwrap();
    dir.update_user(
        &actor,
        "erin",
        &UserChanges::new().with(Attribute::JobTitle, "CFO"),
        Utc::now(),
    )
    .await
    .unwrap();
    dir.set_state(
        &actor,
        "erin",
        idbridge::directory::UserState::Suspended,
        Utc::now(),
    )
    .await
    .unwrap();
    dir.delete_user(&actor, "erin", Utc::now()).await.unwrap();
    for kind in ["user_create", "user_update", "user_suspend", "user_delete"] {
        let events = app.events(kind).await;
        assert_eq!(events.len(), 1, "{kind}");
        assert_eq!(events[0].actor, "admin:root");
        assert_eq!(events[0].target.as_deref(), Some("erin"));
    }
    assert!(app.events("user_update").await[0]
        .details
        .contains("jobTitle"));
}

#[tokio::test]
async fn a_bound_user_cannot_be_deleted() {
    let app = TestApp::spawn().await;
    let user = app
        .create_user("fay", "fay@contoso.com", "Secret pw 3!")
        .await;
    app.bind(&user, "ZmF5MDAwMDAwMDAwMDAwMA==", "fay@contoso.com")
        .await;
    let err = app
        .state()
        .directory
        .delete_user(&Actor::System, "fay", Utc::now())
        .await
        .unwrap_err();
    assert!(matches!(err, DirectoryError::Bound(_)));
    assert!(err.to_string().contains("unbind"));
    assert_eq!(count(&app).await, 1);
}
