//! Helpers for the bus and dmr-tech tests: the lock simulator in-process behind a real pty,
//! the `dmr-lock-sim` binary as a separate process (for kill -9), vendor keys and images,
//! and waiting for a condition with a deadline.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dmr_edge_agent::bus::{self, BusConfig, BusHandle};
use dmr_firmware_sim::{DoorBehaviour, LockSpec, SimConfig, SimHandle};
use dmr_protocol::firmware;
use dmr_protocol::registers::{FwVersion, HARDWARE_LOCK};
use ed25519_dalek::SigningKey;

pub const VENDOR_KEY_ID: u32 = 7;

/// A fixed vendor key, so images can be built without randomness.
pub fn vendor_key() -> SigningKey {
    SigningKey::from_bytes(&[42u8; 32])
}

/// A signed image of `len` payload bytes.
pub fn image(version: &str, len: usize) -> Vec<u8> {
    image_with(version, len, HARDWARE_LOCK, &vendor_key())
}

pub fn image_with(version: &str, len: usize, hardware: u8, key: &SigningKey) -> Vec<u8> {
    let payload: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    let v: FwVersion = version.parse().unwrap();
    firmware::build(hardware, v, &payload, VENDOR_KEY_ID, key).unwrap()
}

/// A running in-process simulator and the directory holding its pty link.
pub struct Sim {
    pub handle: SimHandle,
    pub dir: tempfile::TempDir,
}

impl Sim {
    pub fn pty(&self) -> PathBuf {
        self.handle.pty_path().unwrap().to_path_buf()
    }

    pub fn lock(&self, addr: u8) -> dmr_firmware_sim::LockView {
        self.handle.control().lock(addr).unwrap()
    }
}

/// `n` locks at 1..=n over a pty, the door staying shut, the test vendor key trusted.
pub async fn start_sim(n: u8, tweak: impl FnOnce(&mut SimConfig)) -> Sim {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = SimConfig::new(LockSpec::numbered(n));
    cfg.pty_link = Some(dir.path().join("ttySIM"));
    cfg.door = DoorBehaviour::StaysShut;
    cfg.vendor_keys = vec![(VENDOR_KEY_ID, vendor_key().verifying_key())];
    cfg.reboot_silence_ms = 300;
    tweak(&mut cfg);
    let handle = dmr_firmware_sim::start(cfg).await.unwrap();
    Sim { handle, dir }
}

/// A bus on the simulator's pty with short timeouts.
pub async fn open_bus(pty: &Path, tweak: impl FnOnce(&mut BusConfig)) -> BusHandle {
    let mut cfg = BusConfig::serial(pty, 9600);
    cfg.request_timeout = Duration::from_millis(150);
    tweak(&mut cfg);
    bus::spawn(cfg).await.unwrap()
}

/// Polls `cond` every 20 ms until it holds or `deadline` passes (then panics with `what`).
pub async fn wait_until(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let until = tokio::time::Instant::now() + deadline;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `target/<profile>` directory of this test executable (`.../deps/test-hash`).
pub fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

/// Path of the `dmr-lock-sim` binary next to this test's target dir, building it with
/// cargo (same target dir and profile) when it is not there yet.
pub fn lock_sim_binary() -> PathBuf {
    let dir = target_profile_dir();
    let bin = dir.join("dmr-lock-sim");
    if !bin.exists() {
        let target = dir.parent().unwrap();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "dmr-firmware-sim", "--bin", "dmr-lock-sim"])
            .env("CARGO_TARGET_DIR", target);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo to build dmr-lock-sim");
        assert!(status.success(), "building dmr-lock-sim failed");
    }
    assert!(bin.exists(), "{} missing after the build", bin.display());
    bin
}

/// `dmr-lock-sim` as a child process; waits for its READY line.
pub struct SimProcess {
    pub child: Child,
    pub pty: PathBuf,
}

impl SimProcess {
    pub fn start(args: &[String], pty: &Path) -> SimProcess {
        use std::io::BufRead as _;
        let mut child = Command::new(lock_sim_binary())
            .args(args)
            .arg("--link")
            .arg(pty)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start dmr-lock-sim");
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        // READY comes within a second; a dead child ends the iterator instead.
        loop {
            match lines.next() {
                Some(Ok(l)) if l.trim() == "READY" => break,
                Some(Ok(_)) => {}
                other => panic!("dmr-lock-sim ended before READY: {other:?}"),
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        SimProcess {
            child,
            pty: pty.to_path_buf(),
        }
    }

    /// SIGKILL: no flush, no goodbye, like a power cut.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        let _ = self.child.wait();
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
