//! `dmr-lock-sim`: simulated lock controllers on a pty and/or Modbus TCP. All the work is
//! in the library (`dmr_firmware_sim::cli`), so tests can run the same code in-process.
fn main() -> std::process::ExitCode {
    dmr_firmware_sim::cli::main()
}
