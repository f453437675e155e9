//! `sqlx::migrate!` embeds the migration files at compile time, but on stable Rust cargo
//! does not know to rebuild when they change; this tells it. It also records the git commit
//! for `--version` (see build-support/git_commit.rs).
include!("../build-support/git_commit.rs");

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    emit_git_commit();
}
