//! Records the git revision the binary is built from, for `idbridge --version` (operators
//! match a running binary to the CHANGELOG and the code with it).

fn main() {
    let revision = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|rev| rev.trim().to_string())
        .filter(|rev| !rev.is_empty())
        // A source tarball has no git history.
        .unwrap_or_else(|| "unknown revision".into());
    println!("cargo:rustc-env=BUILD_GIT_REVISION={revision}");
    // A new commit moves the reflog; a missing file (no .git) just reruns this cheap script.
    println!("cargo:rerun-if-changed=.git/logs/HEAD");
    println!("cargo:rerun-if-changed=build.rs");
}
