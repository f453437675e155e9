//! `--version` names the git commit the binary was built from (build.rs), and it is the
//! commit of this checkout, not a stale one from an earlier build.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../build-support/version_check.rs"]
mod version_check;

fn assert_version(bin: &str, name: &str) {
    version_check::assert_version(
        bin,
        name,
        env!("CARGO_MANIFEST_DIR"),
        env!("CARGO_PKG_VERSION"),
    );
}

#[test]
fn agent_version_names_the_commit() {
    assert_version(env!("CARGO_BIN_EXE_dmr-agent"), "dmr-agent");
}

#[test]
fn tech_version_names_the_commit() {
    assert_version(env!("CARGO_BIN_EXE_dmr-tech"), "dmr-tech");
}
