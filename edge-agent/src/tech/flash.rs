//! Firmware update of one lock over the bus (PROTOCOL.md §4, "Firmware transfer"): resume
//! from FW_RECEIVED, chunked transfer on the bulk lane, VERIFY, ACTIVATE, wait for the
//! reboot, check the new version, CONFIRM.
//!
//! Writes are never repeated blindly by the driver, so every lost reply here is resolved the
//! way the protocol intends: read FW_STATE/FW_RECEIVED and carry on from what the lock says
//! it has. The procedure is a library function so `dmr-agent` can roll a release out too.

use std::time::{Duration, Instant};

use dmr_protocol::firmware::{self, FirmwareHeader};
use dmr_protocol::modbus::{ExceptionCode, Request, Response};
use dmr_protocol::registers::{
    self, FwCtrl, FwErrorCode, FwState, FwStatus, FwVersion, Identity, holding, input,
};

use crate::bus::{BusError, BusHandle, Priority};

/// Consecutive chunk writes without progress before giving up.
const MAX_STALLS: u32 = 20;
/// How long VERIFY may take before the flasher stops waiting.
const VERIFY_DEADLINE: Duration = Duration::from_secs(20);
/// How long the lock may stay silent after ACTIVATE.
const REBOOT_DEADLINE: Duration = Duration::from_secs(20);

/// Why a flash failed. The old firmware keeps running in every case except
/// [`FlashError::WrongVersion`] after CONFIRM (which cannot happen: it is checked before).
#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    // The reason is part of the message, not a `source`: its text already says what is wrong
    // ("not a firmware image: ..."), and printing the chain would say it twice.
    #[error("{path}: {reason}")]
    NotAnImage {
        path: String,
        reason: firmware::FirmwareError,
    },
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("lock {addr} rejected the image: {code}; its old firmware {running} keeps running")]
    Rejected {
        addr: u8,
        code: FwErrorCode,
        running: FwVersion,
    },
    #[error(
        "lock {addr} made no progress for {MAX_STALLS} chunk writes at byte {at} (last: {last}); run the same command again to resume"
    )]
    Stalled { addr: u8, at: u32, last: String },
    #[error("lock {addr} did not finish verifying within {VERIFY_DEADLINE:?}")]
    VerifyTimeout { addr: u8 },
    #[error(
        "lock {addr} did not come back within {REBOOT_DEADLINE:?} after ACTIVATE: check its power; if it answers later it will roll back to the old firmware"
    )]
    NoReboot { addr: u8 },
    #[error(
        "lock {addr} came back running {found}, expected {expected}: the new image did not start and the lock rolled back"
    )]
    WrongVersion {
        addr: u8,
        expected: FwVersion,
        found: FwVersion,
    },
    #[error("lock {addr}: unexpected firmware state {state} ({detail})")]
    State {
        addr: u8,
        state: FwState,
        detail: &'static str,
    },
}

/// Progress of a transfer, for a progress bar.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub addr: u8,
    pub done: u32,
    pub total: u32,
    pub phase: Phase,
}

/// Where the flash is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Transfer,
    Verify,
    Activate,
    Reboot,
    Confirm,
    Done,
}

/// Options for one flash.
#[derive(Clone, Copy, Debug)]
pub struct FlashOptions {
    /// CONFIRM the new image after checking its version; without it the lock rolls back at
    /// its next reboot (test-and-confirm).
    pub confirm: bool,
}

impl Default for FlashOptions {
    fn default() -> Self {
        FlashOptions { confirm: true }
    }
}

/// What a successful flash did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FlashReport {
    pub addr: u8,
    pub from: String,
    pub to: String,
    pub bytes: u32,
    /// Bytes the lock already had when the transfer started (a resumed transfer).
    pub resumed_from: u32,
    pub transfer_s: f64,
    pub bytes_per_s: f64,
    pub total_s: f64,
    pub confirmed: bool,
}

/// Checks the file is an image at all (the lock does the real verification).
pub fn inspect(path: &str, image: &[u8]) -> Result<FirmwareHeader, FlashError> {
    firmware::parse_header(image).map_err(|reason| FlashError::NotAnImage {
        path: path.to_owned(),
        reason,
    })
}

/// Attempts for a write that is safe to repeat (the same value into the same register).
const IDEMPOTENT_TRIES: u32 = 5;

/// Writes a register whose repetition is harmless (FW_TOTAL_SIZE, BEGIN before any chunk,
/// CONFIRM), sending it again when the reply is lost. The driver never repeats writes on
/// its own because for coils (UNLOCK, REBOOT) that would be wrong; here it is not.
async fn write_idempotent(bus: &BusHandle, addr: u8, req: Request) -> Result<(), BusError> {
    let mut n = 1;
    loop {
        match bus.request(addr, req.clone(), Priority::Bulk).await {
            Ok(resp) => return expect_ok(addr, resp),
            Err(BusError::NoReply { .. }) if n < IDEMPOTENT_TRIES => n += 1,
            Err(e) => return Err(e),
        }
    }
}

fn ctrl_request(c: FwCtrl) -> Request {
    Request::WriteSingleRegister {
        addr: holding::FW_CTRL,
        value: c.to_reg(),
    }
}

async fn write_total(bus: &BusHandle, addr: u8, total: u32) -> Result<(), BusError> {
    let req = Request::WriteMultipleRegisters {
        addr: holding::FW_TOTAL_SIZE,
        values: registers::u32_to_regs(total).to_vec(),
    };
    write_idempotent(bus, addr, req).await
}

async fn read_total(bus: &BusHandle, addr: u8) -> Result<u32, BusError> {
    let req = Request::ReadHoldingRegisters {
        addr: holding::FW_TOTAL_SIZE,
        count: 2,
    };
    match bus.request(addr, req, Priority::Bulk).await? {
        Response::Registers(r) if r.len() == 2 => Ok(registers::regs_to_u32(r[0], r[1])),
        Response::Exception { function, code } => Err(BusError::Exception {
            addr,
            function,
            code,
        }),
        other => Err(BusError::BadReply {
            addr,
            detail: format!("FW_TOTAL_SIZE read returned {other:?}"),
        }),
    }
}

fn expect_ok(addr: u8, resp: Response) -> Result<(), BusError> {
    match resp {
        Response::Exception { function, code } => Err(BusError::Exception {
            addr,
            function,
            code,
        }),
        _ => Ok(()),
    }
}

/// Writes FW_CTRL; a lost reply is not an error here because the caller reads the state
/// back next.
async fn ctrl(bus: &BusHandle, addr: u8, c: FwCtrl) -> Result<(), BusError> {
    match bus.fw_ctrl(addr, c).await {
        Ok(()) | Err(BusError::NoReply { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

async fn status(bus: &BusHandle, addr: u8) -> Result<FwStatus, BusError> {
    bus.fw_status_at(addr, Priority::Bulk).await
}

/// Waits until the lock answers an identity read again (after a reboot). Probes do not
/// count against the lock's health, so the reboot does not mark it offline.
pub async fn wait_for_lock(
    bus: &BusHandle,
    addr: u8,
    deadline: Duration,
) -> Result<Identity, BusError> {
    let until = Instant::now() + deadline;
    loop {
        let req = Request::ReadInputRegisters {
            addr: input::DEVICE_TYPE,
            count: input::IDENTITY_COUNT,
        };
        match bus.probe(addr, req).await {
            Ok(Response::Registers(r)) => {
                return Identity::from_regs(&r)
                    .map_err(|source| BusError::Register { addr, source });
            }
            // Busy or odd answers while booting: keep waiting.
            Ok(_) | Err(BusError::NoReply { .. }) => {}
            Err(e) => return Err(e),
        }
        if Instant::now() >= until {
            return Err(BusError::NoReply {
                addr,
                attempts: 0,
                last: "no answer since the reboot".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Flashes `image` into lock `addr`. `progress` is called after every chunk and phase.
pub async fn flash(
    bus: &BusHandle,
    addr: u8,
    image: &[u8],
    opts: FlashOptions,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<FlashReport, FlashError> {
    let started = Instant::now();
    let header = inspect("image", image)?;
    let total = u32::try_from(image.len()).map_err(|_| FlashError::NotAnImage {
        path: "image".into(),
        reason: firmware::FirmwareError::TooLarge {
            found: image.len() as u64,
        },
    })?;
    let before = bus.identity(addr).await?;
    let st = status(bus, addr).await?;

    // Resume only a transfer of an image of the same size; VERIFY's hash check catches a
    // different image of the same size, and the retry below then starts over.
    let resume = st.state == FwState::Receiving
        && st.received <= total
        && read_total(bus, addr).await? == total;
    let mut offset = if resume {
        tracing::info!(addr, received = st.received, "resuming firmware transfer");
        st.received
    } else {
        if st.state == FwState::Verifying {
            wait_verified(bus, addr).await?;
        }
        write_total(bus, addr, total).await?;
        write_idempotent(bus, addr, ctrl_request(FwCtrl::Begin)).await?;
        0
    };
    let resumed_from = offset;
    let transfer_start = Instant::now();
    let report = |done, phase| {
        progress(Progress {
            addr,
            done,
            total,
            phase,
        })
    };
    report(offset, Phase::Transfer);

    let mut stalls = 0u32;
    while offset < total {
        let end = (offset as usize + holding::FW_CHUNK_MAX).min(image.len());
        let chunk = &image[offset as usize..end];
        let values = registers::pack_chunk(offset, chunk).map_err(|e| BusError::BadReply {
            addr,
            detail: e.to_string(),
        })?;
        let req = Request::WriteMultipleRegisters {
            addr: holding::FW_CHUNK_OFFSET,
            values,
        };
        let last = match bus.request(addr, req, Priority::Bulk).await {
            Ok(Response::WriteMultipleRegisters { .. }) => {
                offset = end as u32;
                stalls = 0;
                report(offset, Phase::Transfer);
                continue;
            }
            Ok(Response::Exception { code, .. }) => format!("exception {code}"),
            Ok(other) => format!("unexpected reply {other:?}"),
            Err(e @ BusError::NoReply { .. }) => e.to_string(),
            Err(e) => return Err(e.into()),
        };
        // The write's reply was lost or refused: the lock says where it is.
        stalls += 1;
        if stalls > MAX_STALLS {
            return Err(FlashError::Stalled {
                addr,
                at: offset,
                last,
            });
        }
        match status(bus, addr).await {
            Ok(s) if s.state == FwState::Receiving => {
                if s.received != offset {
                    tracing::debug!(addr, from = offset, to = s.received, "transfer realigned");
                }
                offset = s.received.min(total);
                report(offset, Phase::Transfer);
            }
            Ok(s) => {
                return Err(FlashError::State {
                    addr,
                    state: s.state,
                    detail: "the lock left the receiving state during the transfer",
                });
            }
            Err(BusError::NoReply { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let transfer_s = transfer_start.elapsed().as_secs_f64();

    report(total, Phase::Verify);
    ctrl(bus, addr, FwCtrl::Verify).await?;
    let st = wait_verified(bus, addr).await?;
    match st.state {
        FwState::Verified => {}
        FwState::Failed => {
            return Err(FlashError::Rejected {
                addr,
                code: st.error,
                running: before.fw_version,
            });
        }
        // VERIFY's reply and the state read both went by before it took: ask again once.
        FwState::Receiving => {
            ctrl(bus, addr, FwCtrl::Verify).await?;
            let st = wait_verified(bus, addr).await?;
            if st.state == FwState::Failed {
                return Err(FlashError::Rejected {
                    addr,
                    code: st.error,
                    running: before.fw_version,
                });
            }
            if st.state != FwState::Verified {
                return Err(FlashError::State {
                    addr,
                    state: st.state,
                    detail: "VERIFY did not complete",
                });
            }
        }
        other => {
            return Err(FlashError::State {
                addr,
                state: other,
                detail: "expected verified after VERIFY",
            });
        }
    }

    report(total, Phase::Activate);
    ctrl(bus, addr, FwCtrl::Activate).await?;
    report(total, Phase::Reboot);
    // ACTIVATE reboots into the other slot: the lock is silent for a while.
    let mut after = wait_for_lock(bus, addr, REBOOT_DEADLINE)
        .await
        .map_err(|_| FlashError::NoReboot { addr })?;
    if after.fw_version != header.version && status(bus, addr).await?.state == FwState::Verified {
        // The lock never rebooted: ACTIVATE itself was lost. Sending it again is safe, the
        // state proves the first one did not take.
        bus.fw_ctrl(addr, FwCtrl::Activate)
            .await
            .or_else(|e| match e {
                BusError::NoReply { .. } => Ok(()),
                e => Err(e),
            })?;
        after = wait_for_lock(bus, addr, REBOOT_DEADLINE)
            .await
            .map_err(|_| FlashError::NoReboot { addr })?;
    }
    if after.fw_version != header.version {
        return Err(FlashError::WrongVersion {
            addr,
            expected: header.version,
            found: after.fw_version,
        });
    }
    let mut confirmed = false;
    if opts.confirm {
        report(total, Phase::Confirm);
        write_idempotent(bus, addr, ctrl_request(FwCtrl::Confirm)).await?;
        let st = status(bus, addr).await?;
        if st.state == FwState::RunningUnconfirmed {
            return Err(FlashError::State {
                addr,
                state: st.state,
                detail: "CONFIRM was acknowledged but did not take",
            });
        }
        confirmed = true;
    }
    report(total, Phase::Done);
    let bytes = total - resumed_from;
    Ok(FlashReport {
        addr,
        from: before.fw_version.to_string(),
        to: after.fw_version.to_string(),
        bytes: total,
        resumed_from,
        transfer_s,
        bytes_per_s: if transfer_s > 0.0 {
            f64::from(bytes) / transfer_s
        } else {
            0.0
        },
        total_s: started.elapsed().as_secs_f64(),
        confirmed,
    })
}

/// Polls FW_STATE until it leaves VERIFYING. A write during VERIFY answers BUSY (06); a read
/// does not, so this only reads.
async fn wait_verified(bus: &BusHandle, addr: u8) -> Result<FwStatus, FlashError> {
    let until = Instant::now() + VERIFY_DEADLINE;
    loop {
        match status(bus, addr).await {
            Ok(s) if s.state != FwState::Verifying => return Ok(s),
            Ok(_) => {}
            Err(BusError::Exception {
                code: ExceptionCode::ServerDeviceBusy,
                ..
            }) => {}
            Err(e) => return Err(e.into()),
        }
        if Instant::now() >= until {
            return Err(FlashError::VerifyTimeout { addr });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
