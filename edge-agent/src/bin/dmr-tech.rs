//! `dmr-tech`: the technician CLI. Everything lives in `dmr_edge_agent::tech`; this only sets
//! up logging and the runtime. Exit status: 0 ok, 1 failed, 64 usage, 69 unreachable.
use std::process::ExitCode;

fn main() -> ExitCode {
    // Logs go to stderr so `--json` output on stdout stays clean; RUST_LOG turns them up.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dmr-tech: cannot start the async runtime: {e}");
            return ExitCode::from(dmr_edge_agent::tech::EXIT_FAILED);
        }
    };
    runtime.block_on(dmr_edge_agent::tech::main_with_args(std::env::args_os()))
}
