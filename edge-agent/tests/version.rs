//! `--version` names the git commit the binary was built from (build.rs), and it is the
//! commit of this checkout, not a stale one from an earlier build.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

/// The commit the build script should have recorded: the checkout's own when git can see one,
/// else DMR_GIT_COMMIT, else "unknown" (build-support/git_commit.rs).
fn expected_commit() -> String {
    let git = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
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

fn assert_version(bin: &str, name: &str) {
    let out = Command::new(bin).arg("--version").output().unwrap();
    assert!(out.status.success(), "{name} --version failed: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let want = format!(
        "{name} {} (commit {})",
        env!("CARGO_PKG_VERSION"),
        expected_commit()
    );
    assert_eq!(text.trim(), want, "{name} --version");
}

#[test]
fn agent_version_names_the_commit() {
    assert_version(env!("CARGO_BIN_EXE_dmr-agent"), "dmr-agent");
}

#[test]
fn tech_version_names_the_commit() {
    assert_version(env!("CARGO_BIN_EXE_dmr-tech"), "dmr-tech");
}
