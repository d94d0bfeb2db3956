//! The Debian package: built by `scripts/package` from the test binary, unpacked into a
//! scratch root, its systemd unit checked by `systemd-analyze`, and the installed binary
//! started with the installed configuration.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::binary;

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
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

#[test]
fn the_debian_package_installs_a_hardened_service_that_starts() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = tempfile::tempdir().unwrap();
    let (ok, deb, err) = run(Command::new(repo.join("scripts/package"))
        .args([
            "--binary",
            binary().to_str().unwrap(),
            "--compression",
            "none",
            "--out",
        ])
        .arg(work.path()));
    assert!(ok, "scripts/package failed: {err}");
    let deb = deb.trim().to_string();
    assert!(deb.ends_with(".deb"), "{deb}");

    let (ok, listing, err) = run(Command::new("dpkg-deb").args(["-c", &deb]));
    assert!(ok, "{err}");
    for path in [
        "./usr/bin/idbridge",
        "./lib/systemd/system/idbridge.service",
        "./etc/idbridge/idbridge.toml",
        "./usr/share/bash-completion/completions/idbridge",
        "./usr/share/zsh/vendor-completions/_idbridge",
        "./usr/share/fish/vendor_completions.d/idbridge.fish",
        "./usr/share/man/man1/idbridge.1.gz",
        "./usr/share/doc/idbridge/README.md",
    ] {
        assert!(
            listing.contains(path),
            "{path} is not in the package:\n{listing}"
        );
    }
    let (ok, info, _) = run(Command::new("dpkg-deb").args(["-I", &deb]));
    assert!(ok && info.contains("Package: idbridge"), "{info}");
    assert!(
        info.contains("conffiles"),
        "the configuration is a conffile: {info}"
    );

    let root = work.path().join("root");
    let (ok, _, err) = run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    assert!(ok, "{err}");
    let installed = root.join("usr/bin/idbridge");
    let (ok, version, _) = run(Command::new(&installed).arg("--version"));
    assert!(ok && version.starts_with("idbridge "), "{version}");
    let (ok, completions, _) = run(Command::new("bash")
        .arg("-n")
        .arg(root.join("usr/share/bash-completion/completions/idbridge")));
    assert!(ok, "the bash completions parse: {completions}");

    // The unit as systemd reads it (ExecStart pointed at the unpacked binary, since nothing is
    // installed on this machine): no warning at all, and a low exposure score.
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/idbridge.service")).unwrap();
    assert!(unit.contains("DynamicUser=yes") && unit.contains("ProtectSystem=strict"));
    let checked = work.path().join("idbridge.service");
    std::fs::write(
        &checked,
        unit.replace("/usr/bin/idbridge", installed.to_str().unwrap()),
    )
    .unwrap();
    let (ok, out, err) = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&checked));
    assert!(
        ok && out.is_empty() && err.is_empty(),
        "systemd-analyze verify: {out}{err}"
    );
    let (ok, out, err) = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=30"])
        .arg(&checked));
    assert!(ok, "exposure above 3.0: {out}{err}");

    // The installed configuration, moved into the scratch root, starts the installed binary.
    let shipped = std::fs::read_to_string(root.join("etc/idbridge/idbridge.toml")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let state = root.join("var/lib/idbridge");
    let config = work.path().join("idbridge.toml");
    std::fs::write(
        &config,
        shipped
            .replace("/var/lib/idbridge", state.to_str().unwrap())
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}")),
    )
    .unwrap();
    let (ok, _, err) = run(Command::new(&installed)
        .arg("--config")
        .arg(&config)
        .args(["config", "check"]));
    assert!(ok, "{err}");
    let child = Command::new(&installed)
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .current_dir(work.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(healthy(port), "the installed binary serves");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(state.join("certs/signing.key").exists());
    assert!(state.join("data/initial-admin-password").exists());
}
