//! Child processes for the tests that run the real binaries (`dmr-cloud serve`, `dmr-agent`,
//! `dmr-lock-sim`): where to find them, waiting for a port, and killing them on drop so a
//! failing test leaves nothing running.

use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

/// A binary of the workspace that cargo does not build for this test (cargo holds the build
/// lock while tests run): `DMR_E2E_BIN_DIR`, else `$CARGO_TARGET_DIR/debug`, else
/// `<workspace>/target/debug`.
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("DMR_E2E_BIN_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(|d| PathBuf::from(d).join("debug")))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug"));
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found: run `cargo build -p dmr-edge-agent -p dmr-firmware-sim` first \
         (or set DMR_E2E_BIN_DIR)",
        path.display()
    );
    path
}

/// Waits (15 s at most) until something accepts connections on the loopback port.
pub fn wait_port(port: u16, what: &str) {
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{what} did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed (SIGKILL) on drop.
pub struct Proc(pub Option<Child>);

impl Proc {
    /// SIGKILL: no flush, no goodbye, like a crash or a power cut.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}
