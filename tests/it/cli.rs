//! The built `idbridge` binary, run as an admin would run it.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use idbridge::directory::Attribute;

use crate::support::binary;

/// Runs the binary in `dir` (so the default `data/` and `certs/` land there) with stdin text.
fn idbridge(dir: &Path, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("binary runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("output")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "failed: {}\n{}", stdout(&o), stderr(&o));
    stdout(&o)
}

#[test]
fn user_lifecycle_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(idbridge(
        d,
        &[
            "user",
            "add",
            "alice",
            "--email",
            "alice@contoso.com",
            "--firstname",
            "Alice",
            "--lastname",
            "Smith",
            "--department",
            "Sales",
            "--password",
        ],
        "Str0ng pass!\n",
        &[],
    ));
    let list = ok(idbridge(d, &["user", "list"], "", &[]));
    assert!(
        list.contains("alice\talice@contoso.com\tAlice Smith\tactive\tunbound"),
        "{list}"
    );

    ok(idbridge(
        d,
        &[
            "user",
            "set",
            "alice",
            "--job-title",
            "Lead",
            "--department",
            "",
        ],
        "",
        &[],
    ));
    let json: serde_json::Value = serde_json::from_str(&ok(idbridge(
        d,
        &["user", "show", "alice", "--json"],
        "",
        &[],
    )))
    .unwrap();
    assert_eq!(json["jobTitle"], "Lead");
    assert_eq!(json["department"], serde_json::Value::Null);
    assert_eq!(json["hasPassword"], true);

    // A weak password is refused with the rule, and the old one stays.
    let weak = idbridge(d, &["user", "passwd", "alice"], "weakpass\n", &[]);
    assert_eq!(weak.status.code(), Some(1));
    assert!(
        stderr(&weak).contains("password rejected"),
        "{}",
        stderr(&weak)
    );
    assert!(stderr(&weak).contains("at least 3 of"), "{}", stderr(&weak));
    ok(idbridge(
        d,
        &["user", "passwd", "alice"],
        "Better pass 2!\n",
        &[],
    ));

    ok(idbridge(d, &["user", "suspend", "alice"], "", &[]));
    assert!(ok(idbridge(d, &["user", "show", "alice"], "", &[])).contains("suspended"));
    ok(idbridge(d, &["user", "activate", "alice"], "", &[]));
    assert!(ok(idbridge(d, &["user", "show", "alice"], "", &[])).contains("active"));

    let events = ok(idbridge(d, &["events", "--target", "alice"], "", &[]));
    for kind in [
        "user_create",
        "user_update",
        "user_password_rejected",
        "user_password_set",
        "user_suspend",
        "user_activate",
    ] {
        assert!(events.contains(kind), "missing {kind} in\n{events}");
    }
    assert!(events.contains("cli:"), "events name the CLI actor");
    assert!(!events.contains("Better pass 2!"), "no password in events");

    ok(idbridge(d, &["user", "delete", "alice"], "", &[]));
    let gone = idbridge(d, &["user", "show", "alice"], "", &[]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(stderr(&gone).contains("no user \"alice\""));
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(idbridge(
        d,
        &["user", "add", "bob", "--email", "bob@contoso.com"],
        "",
        &[],
    ));
    let cases: [(&[&str], &str); 5] = [
        (
            &["user", "add", "bob2", "--email", "BOB@contoso.com"],
            "another user already has this email",
        ),
        (
            &["user", "set", "bob", "--email", ""],
            "email: is required and cannot be cleared",
        ),
        (
            &["user", "add", "bob3", "--email", "not-an-email"],
            "is not a valid email address",
        ),
        (
            &[
                "user",
                "add",
                "bob4",
                "--email",
                "b4@contoso.com",
                "--manager",
                "ghost",
            ],
            "\"ghost\" is not a user",
        ),
        (
            &["user", "set", "bob", "--department", &"x".repeat(65)],
            "department: must be at most 64",
        ),
    ];
    for (args, expected) in cases {
        let out = idbridge(d, args, "", &[]);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(stderr(&out).starts_with("error: "));
    }
    // A usage error (clap's status 2) names the flag and its range.
    let out = idbridge(d, &["user", "list", "--limit", "0"], "", &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--limit") && stderr(&out).contains("1..=1000"),
        "{}",
        stderr(&out)
    );
    let list = ok(idbridge(d, &["user", "list", "--no-header"], "", &[]));
    assert_eq!(list.lines().count(), 1, "{list}");
    let table = ok(idbridge(d, &["user", "list"], "", &[]));
    assert!(table.starts_with("USERNAME\tEMAIL"), "a header: {table}");
    assert!(ok(idbridge(d, &["user", "show", "bob", "--json"], "", &[]))
        .contains("\"department\": null"));
}

#[test]
fn passwords_are_never_taken_from_argv() {
    let dir = tempfile::tempdir().unwrap();
    let out = idbridge(
        dir.path(),
        &[
            "user",
            "add",
            "eve",
            "--email",
            "eve@contoso.com",
            "--password",
            "S3cret pass!",
        ],
        "",
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap refuses the extra argument"
    );
    let out = idbridge(
        dir.path(),
        &["user", "passwd", "eve", "S3cret pass!"],
        "",
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    // With no password on stdin the message says how to give one.
    ok(idbridge(
        dir.path(),
        &["user", "add", "eve", "--email", "eve@contoso.com"],
        "",
        &[],
    ));
    let out = idbridge(dir.path(), &["user", "passwd", "eve"], "", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no password on stdin"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn every_command_has_help() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["migrate", "--help"],
        vec!["user", "--help"],
        vec!["user", "add", "--help"],
        vec!["user", "list", "--help"],
        vec!["user", "show", "--help"],
        vec!["user", "set", "--help"],
        vec!["user", "passwd", "--help"],
        vec!["user", "suspend", "--help"],
        vec!["user", "activate", "--help"],
        vec!["user", "delete", "--help"],
        vec!["cert", "show", "--help"],
        vec!["admin", "create", "--help"],
        vec!["admin", "key", "create", "--help"],
        vec!["admin", "key", "list", "--help"],
        vec!["admin", "key", "revoke", "--help"],
        vec!["m365", "bind", "--help"],
        vec!["m365", "unbind", "--help"],
        vec!["events", "--help"],
    ] {
        let out = ok(idbridge(dir.path(), &args, "", &[]));
        assert!(out.contains("Usage:"), "{args:?}");
    }
    let add = ok(idbridge(dir.path(), &["user", "add", "--help"], "", &[]));
    // One flag per attribute of the catalogue, named by its product name.
    for spec in idbridge::directory::CATALOGUE {
        if spec.name != "username" {
            assert!(
                add.contains(&format!("--{} <", spec.name)),
                "{}: {add}",
                spec.name
            );
        }
    }
}

#[test]
fn config_errors_name_the_setting_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = idbridge(
        d,
        &["migrate"],
        "",
        &[("IDBRIDGE_PASSWORD_POLICY__MIN_LENGTH", "6")],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("password_policy.min_length") && err.contains("Fix:"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    std::fs::write(
        d.join("idbridge.toml"),
        "base_urll = \"https://idp.example.com\"\n",
    )
    .unwrap();
    let out = idbridge(d, &["migrate"], "", &[]);
    assert!(stderr(&out).contains("base_urll"), "{}", stderr(&out));

    let out = idbridge(d, &["--config", "missing.toml", "migrate"], "", &[]);
    assert!(stderr(&out).contains("missing.toml"), "{}", stderr(&out));

    std::fs::write(d.join("idbridge.toml"), "[certs]\nkey_bits = 1000\n").unwrap();
    let out = idbridge(d, &["migrate"], "", &[]);
    assert!(stderr(&out).contains("certs.key_bits"), "{}", stderr(&out));

    std::fs::write(d.join("idbridge.toml"), "listen = \"nowhere\"\n").unwrap();
    let out = idbridge(d, &["migrate"], "", &[]);
    assert!(stderr(&out).contains("listen"), "{}", stderr(&out));
    std::fs::remove_file(d.join("idbridge.toml")).unwrap();

    // A value from the environment overrides the default and is used.
    let out = idbridge(d, &["cert", "show"], "", &[]);
    assert!(stderr(&out).contains("idbridge serve"), "{}", stderr(&out));
}

fn wait_healthy(port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::Read;
            let _ = s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n");
            let mut body = String::new();
            let _ = s.read_to_string(&mut body);
            if body.contains("ok") {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `serve`, waits for health, sends SIGTERM and returns (exit code, stdout).
fn serve_once(dir: &Path) -> (Option<i32>, String) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(binary())
        .arg("serve")
        .current_dir(dir)
        .env("IDBRIDGE_LISTEN", &listen)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    assert!(wait_healthy(port), "server became healthy");
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    (out.status.code(), stdout(&out))
}

#[test]
fn first_start_generates_the_certificate_and_prints_the_admin_password_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (code, first) = serve_once(d);
    assert_eq!(code, Some(0), "graceful shutdown on SIGTERM exits 0");
    assert!(first.contains("Admin account created: admin"), "{first}");
    let password_line = first
        .lines()
        .find(|l| l.contains("One-time password:"))
        .expect("password printed");
    let password = password_line.split(':').nth(1).unwrap().trim().to_string();
    assert!(password.len() >= 16);
    // Also in a file only its owner reads (under systemd stdout is the journal).
    let file = d.join("data/initial-admin-password");
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), password);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    use std::os::unix::fs::PermissionsExt;
    let key_mode = std::fs::metadata(d.join("certs/signing.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600, "private key is owner-only");
    assert!(d.join("certs/signing.crt").exists());
    assert!(d.join("data/idbridge.db").exists());

    let (code, second) = serve_once(d);
    assert_eq!(code, Some(0));
    assert!(
        !second.contains("One-time password"),
        "never printed again: {second}"
    );
    assert!(!second.contains(&password));

    let show = ok(idbridge(d, &["cert", "show"], "", &[]));
    assert!(show.contains("subject:") && show.contains("sha256 fingerprint:"));
    assert!(
        show.contains("not after:") && show.contains("RSA 2048 bits"),
        "{show}"
    );
    let der = ok(idbridge(d, &["cert", "show", "--der-base64"], "", &[]));
    let pem = std::fs::read_to_string(d.join("certs/signing.crt")).unwrap();
    let pem_body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    assert_eq!(der.trim(), pem_body, "base64 DER is the PEM body");

    let events = ok(idbridge(d, &["events"], "", &[]));
    assert!(events.contains("signing_certificate_create"));
    assert_eq!(events.matches("admin_create").count(), 1, "{events}");

    // The key file made readable by others is refused at start, with the fix.
    std::fs::set_permissions(
        d.join("certs/signing.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = idbridge(d, &["cert", "show"], "", &[]);
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
}

#[test]
fn admin_create_prints_a_one_time_password_and_refuses_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(idbridge(dir.path(), &["admin", "create", "ops"], "", &[]));
    assert!(out.contains("One-time password:"));
    let again = idbridge(dir.path(), &["admin", "create", "ops"], "", &[]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("already exists"));
}

#[test]
fn key_size_is_configurable() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("idbridge.toml"), "[certs]\nkey_bits = 3072\n").unwrap();
    let (code, _) = serve_once(d);
    assert_eq!(code, Some(0));
    let show = ok(idbridge(d, &["cert", "show"], "", &[]));
    assert!(show.contains("RSA 3072 bits"), "{show}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m365_commands_against_the_fake() {
    use crate::support::graph_fake::GraphFake;
    let fake = GraphFake::start().await;
    fake.add_domain("contoso.com", false, true);
    fake.add_users(3, "contoso.com");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    std::fs::write(
        d.join("idbridge.toml"),
        format!(
            "[m365]\nlogin_base_url = \"{}\"\ngraph_base_url = \"{}\"\nclient_id = \"{}\"\ntenant = \"{}\"\n",
            fake.login_base_url(),
            fake.graph_base_url(),
            GraphFake::CLIENT_ID,
            GraphFake::TENANT_ID
        ),
    )
    .unwrap();
    let secret = [("IDBRIDGE_M365__CLIENT_SECRET", GraphFake::CLIENT_SECRET)];
    let run = move |args: Vec<&'static str>| {
        let d = d.clone();
        tokio::task::spawn_blocking(move || idbridge(&d, &args, "", &secret))
    };

    let status = run(vec!["m365", "status"]).await.unwrap();
    assert!(stdout(&status).contains("not_connected") && stdout(&status).contains("m365 connect"));
    let refused = run(vec!["m365", "deactivate"]).await.unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("--yes") && stderr(&refused).contains("active in Microsoft 365")
    );

    let connected = ok(run(vec!["m365", "connect", "--client-credentials"])
        .await
        .unwrap());
    assert!(
        connected.contains("state:          connected"),
        "{connected}"
    );
    assert!(
        connected.contains("default domain: contoso.com"),
        "{connected}"
    );
    let users = ok(run(vec!["m365", "users"]).await.unwrap());
    assert_eq!(users.lines().count(), 3, "{users}");
    let imported = run(vec!["m365", "import", "--all"]).await.unwrap();
    let out = ok(imported);
    assert!(out.contains("3 imported, 0 failed"), "{out}");
    let users = ok(run(vec!["m365", "users"]).await.unwrap());
    assert!(users.lines().all(|l| l.contains("imported")), "{users}");
    let list = ok(run(vec!["user", "list"]).await.unwrap());
    assert!(list.contains("user0001@contoso.com"), "{list}");
    let again = ok(run(vec!["m365", "import", "--all"]).await.unwrap());
    assert!(
        again.contains("0 imported, 0 failed, 3 already imported"),
        "{again}"
    );
    // The token never reaches stdout, stderr or the event log.
    let events = ok(run(vec!["events"]).await.unwrap());
    assert!(events.contains("m365_connect") && events.contains("m365_import"));
    let token_bodies = fake.token_requests();
    assert!(!events.contains(GraphFake::CLIENT_SECRET));
    assert!(!token_bodies.is_empty());
    let deactivated = ok(run(vec!["m365", "deactivate", "--yes"]).await.unwrap());
    assert!(deactivated.contains("0 bindings cleared"), "{deactivated}");
}

/// Binding from the command line while the server is down, then killing the server (SIGKILL)
/// in the middle of delivery: after a restart every user is bound exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_loses_and_duplicates_nothing() {
    use crate::support::graph_fake::GraphFake;
    const USERS: usize = 300;
    let fake = GraphFake::start().await;
    fake.add_domain("contoso.com", false, true);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let config_file = d.join("idbridge.toml");
    std::fs::write(
        &config_file,
        format!(
            "data_dir = \"{data}\"\n[certs]\nkey_file = \"{dir}/certs/signing.key\"\n\
             cert_file = \"{dir}/certs/signing.crt\"\n\
             [m365]\nlogin_base_url = \"{}\"\ngraph_base_url = \"{}\"\nclient_id = \"{}\"\n\
             tenant = \"{}\"\n[m365.sync]\npoll_interval_ms = 50\njobs_per_round = 20\n",
            fake.login_base_url(),
            fake.graph_base_url(),
            GraphFake::CLIENT_ID,
            GraphFake::TENANT_ID,
            data = d.join("data").display(),
            dir = d.display(),
        ),
    )
    .unwrap();
    let secret = [("IDBRIDGE_M365__CLIENT_SECRET", GraphFake::CLIENT_SECRET)];
    let run = {
        let d = d.clone();
        move |args: Vec<&'static str>| {
            let d = d.clone();
            tokio::task::spawn_blocking(move || idbridge(&d, &args, "", &secret))
        }
    };
    ok(run(vec!["m365", "connect", "--client-credentials"])
        .await
        .unwrap());

    // Users created in-process (no password, so no hashing), in the same database.
    let config = idbridge::config::Config::load(Some(&config_file)).unwrap();
    let store = idbridge::store::Store::connect(&config.database_url())
        .await
        .unwrap();
    let directory =
        idbridge::directory::Directory::new(store.clone(), config.password_policy.clone());
    for i in 0..USERS {
        let changes = idbridge::directory::UserChanges::new()
            .with(Attribute::Username, format!("k{i:03}"))
            .with(Attribute::Email, format!("k{i:03}@contoso.com"))
            .with(Attribute::Firstname, "Kill")
            .with(Attribute::Lastname, format!("{i:03}"));
        directory
            .create_user(
                &idbridge::events::Actor::System,
                &changes,
                None,
                chrono::Utc::now(),
            )
            .await
            .unwrap();
    }
    // Committed with the server down: nothing reaches Microsoft 365 yet, nothing is lost.
    let bound = ok(run(vec!["m365", "bind", "--all"]).await.unwrap());
    assert!(bound.contains(&format!("{USERS} queued")), "{bound}");
    assert_eq!(fake.users().len(), 0);

    let start = |d: &Path| {
        let port = free_port();
        let child = Command::new(binary())
            .arg("serve")
            .current_dir(d)
            .env("IDBRIDGE_LISTEN", format!("127.0.0.1:{port}"))
            .env("IDBRIDGE_M365__CLIENT_SECRET", GraphFake::CLIENT_SECRET)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("serve starts");
        (child, port)
    };
    let (mut first, _) = start(&d);
    let deadline = Instant::now() + Duration::from_secs(60);
    while fake.users().len() < USERS / 4 {
        assert!(Instant::now() < deadline, "delivery started");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    first.kill().unwrap(); // SIGKILL: no graceful shutdown
    first.wait().unwrap();
    let at_kill = fake.users().len();
    assert!(
        at_kill < USERS,
        "killed mid-sync ({at_kill} of {USERS} created)"
    );

    let (mut second, port) = start(&d);
    assert!(wait_healthy(port));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let counts = store.sync_counts().await.unwrap();
        if counts.bound == USERS as i64 && counts.queued == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "all bound after restart: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status();
    second.wait().unwrap();

    let users = fake.users();
    assert_eq!(users.len(), USERS, "each user created exactly once");
    for i in 0..USERS {
        let u = directory.get_user(&format!("k{i:03}")).await.unwrap();
        let b = store.binding(&u.id).await.unwrap().unwrap();
        let m = fake.user(&u.email).expect("in M365");
        assert_eq!(b.m365_object_id.as_deref(), m["id"].as_str());
        assert_eq!(
            Some(b.immutable_id.as_str()),
            m["onPremisesImmutableId"].as_str()
        );
    }
    store.close().await;
}

/// Writes `idbridge.toml` into the test server's directory so the binary, run there, uses the
/// server's database and data key (and `extra` TOML tables, e.g. the `[m365]` settings).
fn config_beside(app: &crate::support::TestApp, extra: &str) -> std::path::PathBuf {
    write_config(app.dir.path(), app.config.database_url.as_deref(), extra)
}

fn write_config(d: &Path, database_url: Option<&str>, extra: &str) -> std::path::PathBuf {
    let database = database_url
        .map(|url| format!("database_url = \"{url}\"\n"))
        .unwrap_or_default();
    std::fs::write(
        d.join("idbridge.toml"),
        format!(
            "data_dir = \"{data}\"\n{database}[certs]\nkey_file = \"{dir}/certs/signing.key\"\n\
             cert_file = \"{dir}/certs/signing.crt\"\n{extra}\n",
            data = d.join("data").display(),
            dir = d.display(),
        ),
    )
    .unwrap();
    d.to_path_buf()
}

/// Runs the binary in `dir` off the async runtime (the test server keeps serving meanwhile).
async fn cli(dir: &Path, args: &[&str]) -> Output {
    let dir = dir.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        idbridge(&dir, &args, "", &[])
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_created_listed_and_revoked_from_the_command_line() {
    use crate::support::console::api_client;
    let app = crate::support::TestApp::spawn().await;
    let d = config_beside(&app, "");
    let out = ok(cli(&d, &["admin", "key", "create", "ci", "--role", "read_only"]).await);
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("{name} in {out}"))
    };
    let (key, id) = (field("key:"), field("id:"));
    assert!(key.starts_with("idb_"), "{out}");

    let me: serde_json::Value = api_client(&key)
        .get(app.url("/api/v1/me"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["role"], "read_only", "{me}");
    assert_eq!(me["keyId"], id.as_str(), "{me}");

    let list = ok(cli(&d, &["admin", "key", "list"]).await);
    assert!(
        list.contains(&id) && list.contains("ci\tread_only"),
        "{list}"
    );
    assert!(
        list.contains("last used") && list.contains("live"),
        "{list}"
    );
    assert!(!list.contains(&key), "never the key");
    let json = ok(cli(&d, &["admin", "key", "list", "--json"]).await);
    assert!(!json.contains(&key), "never the key");
    let line: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(
        (line["id"].as_str(), line["name"].as_str()),
        (Some(id.as_str()), Some("ci"))
    );
    assert!(
        line["lastUsedAt"].is_string() && line["revokedAt"].is_null(),
        "{line}"
    );
    assert!(line.get("keyHash").is_none() && line.get("key").is_none());

    // Bad input: one line saying what to change, and nothing written.
    for (args, expected) in [
        (
            vec!["admin", "key", "create", "x", "--role", "root"],
            "use admin or read_only",
        ),
        (vec!["admin", "key", "create", "ci"], "already named \"ci\""),
        (vec!["admin", "key", "create", " "], "1 to 64 characters"),
        (
            vec!["admin", "key", "revoke", "ghost"],
            "no API key has the id or name",
        ),
    ] {
        let o = cli(&d, &args).await;
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(stderr(&o).contains(expected), "{args:?}: {}", stderr(&o));
        assert_eq!(stderr(&o).trim().lines().count(), 1, "{}", stderr(&o));
    }
    assert_eq!(
        ok(cli(&d, &["admin", "key", "list"]).await).lines().count(),
        1
    );

    // Revoked by name: the key is refused at once.
    let revoked = ok(cli(&d, &["admin", "key", "revoke", "ci"]).await);
    assert!(revoked.contains(&id), "{revoked}");
    let r = api_client(&key)
        .get(app.url("/api/v1/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let again = cli(&d, &["admin", "key", "revoke", &id]).await;
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("already revoked"),
        "{}",
        stderr(&again)
    );
    assert!(ok(cli(&d, &["admin", "key", "list"]).await).contains("revoked"));

    let events = ok(cli(&d, &["events", "--type", "api_key_create"]).await)
        + &ok(cli(&d, &["events", "--type", "api_key_revoke"]).await);
    assert_eq!(events.matches("cli:").count(), 2, "{events}");
    assert!(!events.contains(&key), "no key in events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_json_lines_are_the_api_export() {
    use crate::support::console::{api_client, api_key};
    let app = crate::support::TestApp::spawn().await;
    let d = config_beside(&app, "");
    for name in ["ann", "ben", "cai"] {
        let email = format!("{name}@contoso.com");
        ok(cli(&d, &["user", "add", name, "--email", &email]).await);
    }
    ok(cli(&d, &["user", "suspend", "ben"]).await);
    let client =
        api_client(&api_key(&app, "reader", idbridge::directory::AdminRole::ReadOnly).await);
    let export = |query: &'static str| {
        let client = client.clone();
        let url = app.url(&format!("/api/v1/events.jsonl?{query}"));
        async move { client.get(url).send().await.unwrap().text().await.unwrap() }
    };
    for (args, query, lines) in [
        (
            vec!["--type", "user_create", "--limit", "2"],
            "type=user_create&limit=2",
            2,
        ),
        (vec!["--target", "ben"], "target=ben", 2),
        (
            vec!["--type", "user_create", "--since", "2000-01-01T00:00:00Z"],
            "type=user_create&since=2000-01-01T00:00:00Z",
            3,
        ),
        (
            vec!["--type", "user_create", "--since", "2999-01-01T00:00:00Z"],
            "type=user_create&since=2999-01-01T00:00:00Z",
            0,
        ),
    ] {
        let mut argv = vec!["events", "--json"];
        argv.extend(args.iter().copied());
        let mine = ok(cli(&d, &argv).await);
        assert_eq!(mine, export(query).await, "{argv:?}");
        assert_eq!(mine.lines().count(), lines, "{argv:?}: {mine}");
        for line in mine.lines() {
            let e: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(e["id"].is_i64() && e["details"].is_object(), "{e}");
            assert!(e["actor"].as_str().unwrap().starts_with("cli:"), "{e}");
        }
    }
    // The actor filter: the same as the API's.
    // The OS account the commands ran as (the test's), as the library names it.
    let actor = idbridge::events::Actor::cli().to_string();
    let by_actor = ok(cli(&d, &["events", "--json", "--actor", &actor]).await);
    assert_eq!(by_actor.lines().count(), 4, "{by_actor}");
    let bad = cli(&d, &["events", "--json", "--since", "yesterday"]).await;
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad).contains("--since must be an RFC 3339 time"),
        "{}",
        stderr(&bad)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_wait_returns_when_microsoft_365_has_the_user_or_prints_graphs_refusal() {
    use crate::support::m365::{connected, m365_settings};
    let (app, fake) = connected("", "").await;
    let d = config_beside(&app, &m365_settings(&fake, "", ""));
    app.create_user("alice", "alice@contoso.com", "Corr3ct-Horse-Battery")
        .await;
    app.create_user("pat", "pat@unverified.example", "Corr3ct-Horse-Battery")
        .await;

    let out = ok(cli(&d, &["m365", "bind", "alice", "--wait", "--timeout", "60"]).await);
    // Checked at once, without polling: the command returned only after Graph had it.
    let m = fake
        .user("alice@contoso.com")
        .expect("alice is in Microsoft 365");
    assert_eq!(m["accountEnabled"], true);
    assert!(
        out.contains("alice\tbound") && out.contains("1 of 1 done"),
        "{out}"
    );
    let b = app
        .state()
        .directory
        .get_user("alice")
        .await
        .unwrap()
        .m365
        .unwrap();
    assert_eq!(b.state.as_str(), "bound");
    assert_eq!(
        m["onPremisesImmutableId"].as_str(),
        Some(b.immutable_id.as_str())
    );

    // Already bound: nothing to wait for.
    let again = ok(cli(&d, &["m365", "bind", "alice", "--wait"]).await);
    assert!(again.contains("alice\talready bound"), "{again}");

    // Graph refuses the UPN's domain: non-zero, with Graph's message.
    let refused = cli(
        &d,
        &["m365", "bind", "pat", "ghost", "--wait", "--timeout", "60"],
    )
    .await;
    assert_eq!(refused.status.code(), Some(1), "{}", stdout(&refused));
    assert!(
        stdout(&refused).contains("pat\tfailed:") && stdout(&refused).contains("verified domain"),
        "{}",
        stdout(&refused)
    );
    assert!(
        stdout(&refused).contains("ghost\tfailed: no such user"),
        "{}",
        stdout(&refused)
    );
    assert!(
        stderr(&refused).contains("2 of 2 failed"),
        "{}",
        stderr(&refused)
    );
    assert!(fake.user("pat@unverified.example").is_none());

    // Unbinding waits for the account to be blocked.
    let out = ok(cli(
        &d,
        &["m365", "unbind", "alice", "--wait", "--timeout", "60"],
    )
    .await);
    assert!(out.contains("alice\tblocked in Microsoft 365"), "{out}");
    assert_eq!(
        fake.user("alice@contoso.com").unwrap()["accountEnabled"],
        false
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_wait_without_a_server_says_so_and_times_out() {
    use crate::support::m365::{connected, m365_settings};
    let (app, fake) = connected("", "").await;
    app.create_user("alice", "alice@contoso.com", "Corr3ct-Horse-Battery")
        .await;
    let settings = m365_settings(&fake, "", "");
    let database_url = app.config.database_url.clone();
    let dir = app.stop().await;
    let d = write_config(dir.path(), database_url.as_deref(), &settings);
    let out = cli(&d, &["m365", "bind", "alice", "--wait", "--timeout", "11"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("is `idbridge serve` running?"), "{err}");
    assert!(
        err.contains("timed out after 11 s") && err.contains("idbridge m365 sync"),
        "{err}"
    );
    assert!(
        stdout(&out).contains("alice\tstill pending"),
        "{}",
        stdout(&out)
    );
    assert!(fake.user("alice@contoso.com").is_none());
}

#[test]
fn configuration_that_cannot_trip_an_operator() {
    let dir = tempfile::tempdir().unwrap();
    // Kubernetes sets IDBRIDGE_PORT for a Service named idbridge: ignored, and said so.
    let out = idbridge(
        dir.path(),
        &["config", "check"],
        "",
        &[
            ("IDBRIDGE_PORT", "tcp://10.0.0.1:8080"),
            ("IDBRIDGE_SAML__SUPPORT_CONTACT", "the IT desk"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("IDBRIDGE_PORT names no setting"),
        "{}",
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("support_contact = \"the IT desk\""),
        "{}",
        stdout(&out)
    );
    // A misspelt setting inside a section still stops, naming it.
    let out = idbridge(
        dir.path(),
        &["config", "check"],
        "",
        &[("IDBRIDGE_SAML__SUPORT_CONTACT", "x")],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("suport_contact"), "{}", stderr(&out));

    // Secrets never show.
    std::fs::write(
        dir.path().join("idbridge.toml"),
        "database_url = \"postgres://idb:hunter2secret@db/idb\"\n[m365]\nclient_secret = \"cl13nt-s3cret\"\n",
    )
    .unwrap();
    let out = idbridge(dir.path(), &["config", "check"], "", &[]);
    let shown = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !shown.contains("hunter2secret") && !shown.contains("cl13nt-s3cret"),
        "{shown}"
    );

    // A log level tracing would read as a target is refused with the fix.
    std::fs::write(
        dir.path().join("idbridge.toml"),
        "[log]\nlevel = \"verbose\"\n",
    )
    .unwrap();
    let out = idbridge(dir.path(), &["config", "check"], "", &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("log.level"), "{}", stderr(&out));

    // The reference of every default loads as a configuration file, even beside a bad one.
    let out = idbridge(dir.path(), &["config", "show", "--defaults"], "", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(dir.path().join("idbridge.toml"), stdout(&out)).unwrap();
    let out = idbridge(dir.path(), &["config", "check"], "", &[]);
    assert!(out.status.success(), "{}", stderr(&out));

    let out = idbridge(dir.path(), &["--version"], "", &[]);
    let version = stdout(&out);
    assert!(version.starts_with("idbridge 0."), "{version}");
    assert!(version.contains('('), "the git revision: {version}");
}

#[test]
fn the_access_log_has_one_line_per_request_without_queries_or_colours() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new(binary())
        .arg("serve")
        .current_dir(dir.path())
        .env("IDBRIDGE_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    assert!(wait_healthy(port), "server became healthy");
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(
            b"GET /saml/sso?SAMLRequest=TOPSECRETVALUE HTTP/1.1\r\nHost: x\r\nX-Request-Id: upstream-42\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("x-request-id: upstream-42"),
        "{answer}"
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let log = stderr(&out);
    let line = log
        .lines()
        .find(|l| l.contains("idbridge::access") && l.contains("/saml/sso"))
        .unwrap_or_else(|| panic!("no access line: {log}"));
    assert!(line.contains("status=400"), "{line}");
    assert!(line.contains("upstream-42"), "{line}");
    assert!(line.contains("client=127.0.0.1"), "{line}");
    assert!(line.contains("duration_ms="), "{line}");
    assert!(
        !log.contains("TOPSECRETVALUE"),
        "a query reached the log: {log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "colours in a non-terminal log: {log}"
    );
}

/// Runs the binary with `--config FILE` and stdin text.
fn with_config(config: &Path, args: &[&str], stdin: &str) -> Output {
    let mut full = vec!["--config", config.to_str().unwrap()];
    full.extend_from_slice(args);
    idbridge(config.parent().unwrap(), &full, stdin, &[])
}

#[tokio::test]
async fn a_backup_taken_while_the_server_writes_restores_users_bindings_events_and_the_certificate()
{
    let app = crate::support::TestApp::spawn().await;
    let user = app
        .create_user("ana", "ana@contoso.com", "Corr3ct-Horse-Battery")
        .await;
    app.bind(&user, "YW5hLWltbXV0YWJsZQ==", "ana@contoso.com")
        .await;
    for n in 0..20 {
        app.create_user(
            &format!("u{n}"),
            &format!("u{n}@contoso.com"),
            "Corr3ct-Horse-Battery",
        )
        .await;
    }
    let work = tempfile::tempdir().unwrap();
    let fingerprint = app.cli(work.path(), &["cert", "show"]).await;
    let config = work.path().join("idbridge.toml");
    let on_postgres = crate::support::TestApp::on_postgres();
    if on_postgres {
        // PostgreSQL is backed up with pg_dump; the command says so and keeps the keys part.
        let target = work.path().join("refused.backup");
        let out = with_config(
            &config,
            &["backup", target.to_str().unwrap()],
            "backup passphrase 1\n",
        );
        assert!(!out.status.success());
        assert!(stderr(&out).contains("pg_dump"), "{}", stderr(&out));
        assert!(!target.exists(), "no half backup is left behind");
    }
    // Writes keep coming while the backup runs.
    let busy = app.state().clone();
    let writer = tokio::spawn(async move {
        for n in 0..200 {
            let event = idbridge::events::NewEvent::new(
                chrono::Utc::now(),
                &idbridge::events::Actor::System,
                "backup_test_write",
                Some(&format!("w{n}")),
            );
            busy.store.record_event(&event).await.unwrap();
        }
    });
    let file = work.path().join("idbridge.backup");
    let dump = work.path().join("idbridge.dump");
    let cfg = config.clone();
    let target = file.clone();
    let database_url = app.state().config.database_url();
    let dump_file = dump.clone();
    let out = tokio::task::spawn_blocking(move || {
        if on_postgres {
            // The procedure README gives: pg_dump for the database, the keys apart.
            let dumped = Command::new(pg_tool("pg_dump"))
                .args(["-Fc", "-f"])
                .arg(&dump_file)
                .arg(&database_url)
                .output()
                .unwrap();
            assert!(dumped.status.success(), "{}", stderr(&dumped));
            with_config(
                &cfg,
                &["backup", target.to_str().unwrap(), "--keys-only"],
                "backup passphrase 1\n",
            )
        } else {
            with_config(
                &cfg,
                &["backup", target.to_str().unwrap()],
                "backup passphrase 1\n",
            )
        }
    })
    .await
    .unwrap();
    writer.await.unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    if !on_postgres {
        assert!(stdout(&out).contains("database.sqlite"), "{}", stdout(&out));
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let raw = std::fs::read(&file).unwrap();
    assert!(
        !String::from_utf8_lossy(&raw).contains("ana@contoso.com"),
        "encrypted"
    );

    // Into an empty directory with its own configuration (on PostgreSQL, a new database that
    // pg_restore fills).
    let fresh = tempfile::tempdir().unwrap();
    let fresh_config = fresh.path().join("idbridge.toml");
    let mut fresh_toml = format!(
        "data_dir = {:?}\n",
        fresh.path().join("data").display().to_string()
    );
    let restore_args: Vec<&str> = if on_postgres {
        let url = restored_postgres_database(&app.state().config.database_url()).await;
        let restored = Command::new(pg_tool("pg_restore"))
            .args(["--no-owner", "-d", &url])
            .arg(&dump)
            .output()
            .unwrap();
        assert!(restored.status.success(), "{}", stderr(&restored));
        fresh_toml.push_str(&format!("database_url = {url:?}\n"));
        vec!["--keys-only"]
    } else {
        Vec::new()
    };
    fresh_toml.push_str(&format!(
        "[certs]\nkey_file = {:?}\ncert_file = {:?}\n",
        fresh.path().join("certs/signing.key").display().to_string(),
        fresh.path().join("certs/signing.crt").display().to_string(),
    ));
    std::fs::write(&fresh_config, fresh_toml).unwrap();
    let restore = |passphrase: &str| {
        let mut args = vec!["restore", file.to_str().unwrap()];
        args.extend(&restore_args);
        with_config(&fresh_config, &args, passphrase)
    };
    let wrong = restore("not the passphrase\n");
    assert!(!wrong.status.success());
    assert!(
        stderr(&wrong).contains("passphrase is wrong"),
        "{}",
        stderr(&wrong)
    );
    let restored = restore("backup passphrase 1\n");
    assert!(restored.status.success(), "{}", stderr(&restored));
    // A second restore refuses to overwrite.
    let again = restore("backup passphrase 1\n");
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );

    let show = stdout(&with_config(&fresh_config, &["cert", "show"], ""));
    let print = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("sha256 fingerprint:"))
            .map(str::to_string)
    };
    assert!(print(&show).is_some(), "{show}");
    assert_eq!(
        print(&show),
        print(&fingerprint),
        "the same signing certificate"
    );
    let users = stdout(&with_config(
        &fresh_config,
        &["user", "list", "--limit", "1000"],
        "",
    ));
    assert!(users.contains("ana") && users.contains("u19"), "{users}");
    let ana = stdout(&with_config(&fresh_config, &["user", "show", "ana"], ""));
    assert!(ana.contains("YW5hLWltbXV0YWJsZQ=="), "the binding: {ana}");
    let events = stdout(&with_config(
        &fresh_config,
        &["events", "--type", "user_create", "--limit", "100"],
        "",
    ));
    assert_eq!(events.matches("user_create").count(), 21, "{events}");
    let key_mode = std::fs::metadata(fresh.path().join("certs/signing.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
}

/// A PostgreSQL client tool: on PATH, else from Debian's versioned directory.
fn pg_tool(name: &str) -> std::path::PathBuf {
    if let Ok(out) = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
    {
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !path.is_empty() {
            return path.into();
        }
    }
    let mut found: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|v| v.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found
        .pop()
        .unwrap_or_else(|| panic!("{name} not found: install postgresql-client"))
}

/// A new, empty database beside the one at `url` (same server), for a restore.
async fn restored_postgres_database(url: &str) -> String {
    use sqlx::Connection;
    let (server, name) = url.rsplit_once('/').unwrap();
    let restored = format!("{name}_restored");
    let mut conn = sqlx::PgConnection::connect(&format!("{server}/postgres"))
        .await
        .unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {restored}"))
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query(&format!("CREATE DATABASE {restored}"))
        .execute(&mut conn)
        .await
        .unwrap();
    format!("{server}/{restored}")
}

#[test]
fn output_piped_into_head_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} completions bash | head -1 >/dev/null",
            binary().display()
        ))
        .current_dir(dir.path())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
}

#[test]
fn an_unknown_event_type_is_refused_with_the_near_ones() {
    let dir = tempfile::tempdir().unwrap();
    let out = idbridge(dir.path(), &["events", "--type", "sso_login"], "", &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("unknown event type") && err.contains("sso_login_failed"),
        "{err}"
    );
    let out = idbridge(
        dir.path(),
        &["events", "--type", "sso_login_failed"],
        "",
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn the_cli_actor_is_the_os_account_not_the_user_variable() {
    let dir = tempfile::tempdir().unwrap();
    let out = idbridge(
        dir.path(),
        &["admin", "create", "ops"],
        "",
        &[("USER", "mallory")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = idbridge(dir.path(), &["events", "--type", "admin_create"], "", &[]);
    let events = stdout(&out);
    let actor = idbridge::events::Actor::cli().to_string();
    assert!(events.contains(&actor), "{events}");
    assert!(!events.contains("cli:mallory"), "{events}");
}
