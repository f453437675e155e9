//! Records the git commit the binaries are built from, for `--version`
//! (see build-support/git_commit.rs).
include!("../build-support/git_commit.rs");

fn main() {
    emit_git_commit();
}
