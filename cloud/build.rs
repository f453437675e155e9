//! `sqlx::migrate!` embeds the migration files at compile time, but on stable Rust cargo
//! does not know to rebuild when they change; this tells it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
