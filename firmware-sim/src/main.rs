//! `dmr-lock-sim`: not built yet; exits with a clear message instead of pretending.
fn main() -> std::process::ExitCode {
    eprintln!("dmr-lock-sim: not available in this build yet (see the project's open issues)");
    std::process::ExitCode::from(69)
}
