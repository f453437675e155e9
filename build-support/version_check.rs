// Shared by the `tests/version.rs` of dmr-cloud, dmr-edge-agent and dmr-firmware-sim (pulled in
// with `#[path]`): checks that a binary's `--version` names the commit of this checkout, which
// build-support/git_commit.rs records at build time, and not a stale one from an earlier build.

use std::process::Command;

/// The commit the build script should have recorded: the checkout's own when git can see one,
/// else DMR_GIT_COMMIT, else "unknown" (the same order as git_commit.rs).
fn expected_commit(manifest_dir: &str) -> String {
    let git = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(manifest_dir)
        .output();
    if let Ok(out) = git {
        let c = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !c.is_empty() {
            return c;
        }
    }
    match std::env::var("DMR_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => "unknown".to_string(),
    }
}

/// Runs `bin --version` and expects exactly `name VERSION (commit COMMIT)`. The caller passes its
/// own manifest dir and package version: `env!` here would name whichever crate compiles this file,
/// which is the caller anyway, but passing them keeps the dependency visible at the call site.
pub fn assert_version(bin: &str, name: &str, manifest_dir: &str, pkg_version: &str) {
    let out = Command::new(bin).arg("--version").output().unwrap();
    assert!(out.status.success(), "{name} --version failed: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let want = format!(
        "{name} {pkg_version} (commit {})",
        expected_commit(manifest_dir)
    );
    assert_eq!(text.trim(), want, "{name} --version");
}
