//! Bus driver tests over an in-memory pipe: a scripted device on the far end crafts replies
//! with the protocol codec, including corrupt CRCs, wrong unit ids, truncated frames and
//! silence. (The simulator-backed tests are in `bus_sim.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dmr_protocol::modbus::{ExceptionCode, Request, Response, rtu};
use dmr_protocol::registers::{Identity, LastError, coil, holding, input};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use dmr_edge_agent::bus::*;

/// What the scripted device does with one request.
#[derive(Debug, Clone)]
enum Act {
    /// Answer normally from the model.
    Answer,
    /// Apply the request to the model but send nothing back (lost reply).
    ApplySilently,
    /// Neither apply nor answer (lost request).
    Ignore,
    /// Answer with the CRC flipped (not applied).
    BadCrc,
    /// Answer as another unit id (not applied).
    WrongUnit(u8),
    /// Send only the first n bytes of the answer (not applied).
    Truncate(usize),
    /// Answer with this exception.
    Exception(ExceptionCode),
    /// Answer normally, but only after this long.
    Late(Duration),
}

/// A tiny lock model: enough registers for the driver's operations.
#[derive(Debug, Default)]
struct Model {
    unlock_count: u32,
    actuations: u32,
    unlocked: bool,
    fault: bool,
    pulse_ms: u16,
}

impl Model {
    fn apply(&mut self, req: &Request) -> Response {
        match req {
            Request::ReadInputRegisters { addr, count } => {
                let mut regs = [0u16; 0x40];
                let id = Identity {
                    fw_version: "1.0.0".parse().unwrap(),
                    unlock_count: self.unlock_count,
                    supply_mv: 12000,
                    last_error: LastError::None,
                    serial: "SN-TEST".into(),
                };
                regs[..16].copy_from_slice(&id.to_regs());
                let a = usize::from(*addr);
                Response::Registers(regs[a..a + usize::from(*count)].to_vec())
            }
            Request::ReadDiscreteInputs { count, .. } => {
                let mut bits = vec![true, !self.unlocked, false, self.fault, false];
                bits.truncate(usize::from(*count));
                Response::Bits(bits)
            }
            Request::ReadCoils { count, .. } => {
                let mut bits = vec![self.unlocked, false, false];
                bits.truncate(usize::from(*count));
                Response::Bits(bits)
            }
            Request::ReadHoldingRegisters { addr, count } => {
                let regs = [self.pulse_ms, 0, 1, 0];
                let a = usize::from(*addr);
                Response::Registers(regs[a..a + usize::from(*count)].to_vec())
            }
            Request::WriteSingleCoil { addr, value } => {
                if *addr == coil::UNLOCK && *value {
                    // Like the controller: a jammed latch counts nothing and stays shut.
                    if !self.fault {
                        self.unlock_count += 1;
                        self.actuations += 1;
                    }
                }
                Response::WriteSingleCoil {
                    addr: *addr,
                    value: *value,
                }
            }
            Request::WriteSingleRegister { addr, value } => {
                if *addr == holding::UNLOCK_PULSE_MS {
                    self.pulse_ms = *value;
                }
                Response::WriteSingleRegister {
                    addr: *addr,
                    value: *value,
                }
            }
            Request::WriteMultipleRegisters { addr, values } => Response::WriteMultipleRegisters {
                addr: *addr,
                count: values.len() as u16,
            },
        }
    }
}

/// The scripted device. `script` is consumed one entry per request; when it runs out every
/// request is answered. Every request it sees is reported on `seen` with its arrival time.
struct Device {
    model: Arc<Mutex<Model>>,
    seen: mpsc::UnboundedReceiver<(Instant, Request)>,
    replied_at: Arc<Mutex<Vec<Instant>>>,
}

const UNIT: u8 = 5;

fn start(
    baud: u32,
    script: Vec<Act>,
    delay: Duration,
    cfg: impl FnOnce(&mut BusConfig),
) -> (BusHandle, Device) {
    let (ours, theirs) = tokio::io::duplex(4096);
    let model = Arc::new(Mutex::new(Model {
        pulse_ms: 3000,
        ..Model::default()
    }));
    let script = Arc::new(Mutex::new(script.into_iter().collect()));
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let replied_at = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(serve(
        theirs,
        Arc::clone(&model),
        Arc::clone(&script),
        seen_tx,
        Arc::clone(&replied_at),
        delay,
    ));
    let mut c = BusConfig::serial("/dev/null", baud);
    c.request_timeout = Duration::from_millis(80);
    c.inter_char_timeout = Duration::from_millis(20);
    c.backoff_min = Duration::from_secs(5);
    cfg(&mut c);
    let handle = spawn_on(Box::new(ours), Framing::Rtu { baud }, c);
    (
        handle,
        Device {
            model,
            seen,
            replied_at,
        },
    )
}

async fn serve(
    mut io: DuplexStream,
    model: Arc<Mutex<Model>>,
    script: Arc<Mutex<std::collections::VecDeque<Act>>>,
    seen: mpsc::UnboundedSender<(Instant, Request)>,
    replied_at: Arc<Mutex<Vec<Instant>>>,
    delay: Duration,
) {
    let mut buf = Vec::new();
    let mut scratch = [0u8; 256];
    loop {
        let n = match io.read(&mut scratch).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&scratch[..n]);
        while let Ok(Some(len)) = rtu::request_len(&buf) {
            if buf.len() < len {
                break;
            }
            let frame: Vec<u8> = buf.drain(..len).collect();
            let (unit, pdu) = rtu::decode(&frame).unwrap();
            let req = Request::decode_pdu(pdu).unwrap();
            let _ = seen.send((Instant::now(), req.clone()));
            if unit != UNIT {
                continue;
            }
            let act = script.lock().unwrap().pop_front().unwrap_or(Act::Answer);
            let fc = req.function();
            let mut wait = delay;
            let out = match act {
                Act::Late(d) => {
                    wait = d;
                    Some(rtu::encode(
                        unit,
                        &model.lock().unwrap().apply(&req).encode_pdu(fc),
                    ))
                }
                Act::Answer => Some(rtu::encode(
                    unit,
                    &model.lock().unwrap().apply(&req).encode_pdu(fc),
                )),
                Act::ApplySilently => {
                    model.lock().unwrap().apply(&req);
                    None
                }
                Act::Ignore => None,
                Act::BadCrc => {
                    let mut f = rtu::encode(unit, &Model::default().apply(&req).encode_pdu(fc));
                    let last = f.len() - 1;
                    f[last] ^= 0xFF;
                    Some(f)
                }
                Act::WrongUnit(u) => {
                    Some(rtu::encode(u, &Model::default().apply(&req).encode_pdu(fc)))
                }
                Act::Truncate(n) => {
                    let mut f = rtu::encode(unit, &Model::default().apply(&req).encode_pdu(fc));
                    f.truncate(n);
                    Some(f)
                }
                Act::Exception(code) => Some(rtu::encode(
                    unit,
                    &Response::Exception { function: fc, code }.encode_pdu(fc),
                )),
            };
            if let Some(out) = out {
                tokio::time::sleep(wait).await;
                if io.write_all(&out).await.is_err() {
                    return;
                }
                replied_at.lock().unwrap().push(Instant::now());
            }
        }
    }
}

impl Device {
    fn drain_seen(&mut self) -> Vec<(Instant, Request)> {
        let mut out = Vec::new();
        while let Ok(x) = self.seen.try_recv() {
            out.push(x);
        }
        out
    }
}

#[tokio::test]
async fn reads_identity_and_waits_the_silence_between_frames() {
    let (bus, mut dev) = start(9600, vec![], Duration::ZERO, |_| {});
    let id = bus.identity(UNIT).await.unwrap();
    assert_eq!(id.serial, "SN-TEST");
    let st = bus.read_state(UNIT).await.unwrap();
    assert!(st.inputs.door_closed && st.inputs.latch_locked && !st.unlocked);
    let seen = dev.drain_seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    let replies = dev.replied_at.lock().unwrap().clone();
    // Each new request reached the device no sooner than 3.5 characters (3.65 ms at 9600)
    // after the previous reply left it.
    for (i, (arrived, _)) in seen.iter().enumerate().skip(1) {
        let gap = *arrived - replies[i - 1];
        assert!(
            gap >= rtu::inter_frame_silence(9600),
            "gap {gap:?} before request {i}"
        );
    }
    let h = bus.health(UNIT);
    assert!(h.online && h.last_seen.is_some() && h.consecutive_failures == 0);
    assert_eq!(bus.counters().replies, 3);
}

#[tokio::test]
async fn waits_the_fixed_silence_above_19200_baud() {
    // 1.75 ms: shorter than tokio's coarse stretch, so all of it is the precise wait.
    let (bus, mut dev) = start(115_200, vec![], Duration::ZERO, |_| {});
    for _ in 0..5 {
        bus.read_state(UNIT).await.unwrap();
    }
    let seen = dev.drain_seen();
    let replies = dev.replied_at.lock().unwrap().clone();
    // read_state is two exchanges (inputs, then the UNLOCK coil).
    assert_eq!(seen.len(), 10, "{seen:?}");
    for (i, (arrived, _)) in seen.iter().enumerate().skip(1) {
        let gap = *arrived - replies[i - 1];
        assert!(
            gap >= rtu::inter_frame_silence(115_200),
            "gap {gap:?} before request {i}"
        );
    }
}

#[tokio::test]
async fn crc_error_wrong_unit_and_truncated_reply_are_counted_and_retried() {
    let (bus, _dev) = start(
        115_200,
        vec![Act::BadCrc, Act::WrongUnit(9), Act::Truncate(4)],
        Duration::ZERO,
        |_| {},
    );
    // Default read_retries is 2: three attempts, each meets a different fault.
    let err = bus.identity(UNIT).await.unwrap_err();
    assert!(
        matches!(
            err,
            BusError::NoReply {
                addr: UNIT,
                attempts: 3,
                ..
            }
        ),
        "{err}"
    );
    let c = bus.counters();
    assert_eq!(
        (c.crc_errors, c.wrong_unit, c.truncated),
        (1, 1, 1),
        "{c:?}"
    );
    assert_eq!(c.faults(), 3);
    assert_eq!(bus.health(UNIT).consecutive_failures, 1);
    // The next read is answered and resets the failure count.
    bus.identity(UNIT).await.unwrap();
    assert_eq!(bus.health(UNIT).consecutive_failures, 0);
}

#[tokio::test]
async fn a_fault_then_a_good_reply_succeeds_with_one_retry() {
    let (bus, _dev) = start(115_200, vec![Act::BadCrc], Duration::ZERO, |_| {});
    let s = bus.settings(UNIT).await.unwrap();
    assert_eq!(s.unlock_pulse_ms, 3000);
    let c = bus.counters();
    assert_eq!((c.crc_errors, c.retries, c.replies), (1, 1, 1));
}

#[tokio::test]
async fn exceptions_are_values_not_io_errors() {
    let (bus, _dev) = start(
        115_200,
        vec![Act::Exception(ExceptionCode::ServerDeviceBusy)],
        Duration::ZERO,
        |_| {},
    );
    let r = bus
        .request(
            UNIT,
            Request::ReadInputRegisters {
                addr: input::FW_STATE,
                count: 5,
            },
            Priority::Bulk,
        )
        .await
        .unwrap();
    assert_eq!(
        r,
        Response::Exception {
            function: 4,
            code: ExceptionCode::ServerDeviceBusy
        }
    );
    assert!(bus.health(UNIT).online, "an exception is an answer");
    // The typed call turns it into an error that names the lock.
    let (bus, _dev) = start(
        115_200,
        vec![Act::Exception(ExceptionCode::IllegalDataValue)],
        Duration::ZERO,
        |_| {},
    );
    let err = bus
        .write_setting(UNIT, holding::UNLOCK_PULSE_MS, 500)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("lock 5"), "{err}");
    assert!(matches!(
        err,
        BusError::Exception {
            code: ExceptionCode::IllegalDataValue,
            ..
        }
    ));
}

#[tokio::test]
async fn out_of_range_setting_is_refused_before_the_bus() {
    let (bus, mut dev) = start(115_200, vec![], Duration::ZERO, |_| {});
    let err = bus
        .write_setting(UNIT, holding::UNLOCK_PULSE_MS, 5)
        .await
        .unwrap_err();
    assert!(
        matches!(err, BusError::Register { addr: UNIT, .. }),
        "{err}"
    );
    bus.write_setting(UNIT, holding::UNLOCK_PULSE_MS, 500)
        .await
        .unwrap();
    assert_eq!(dev.model.lock().unwrap().pulse_ms, 500);
    assert_eq!(dev.drain_seen().len(), 1);
}

#[tokio::test]
async fn silent_lock_goes_offline_and_backs_off_without_holding_the_bus() {
    let (bus, mut dev) = start(115_200, vec![Act::Ignore; 100], Duration::ZERO, |c| {
        c.read_retries = 1
    });
    for _ in 0..3 {
        let err = bus.read_state(UNIT).await.unwrap_err();
        assert!(
            matches!(err, BusError::NoReply { attempts: 2, .. }),
            "{err}"
        );
    }
    let h = bus.health(UNIT);
    assert!(!h.online && h.consecutive_failures == 3, "{h:?}");
    let before = dev.drain_seen().len();
    // In backoff: fails at once without touching the wire.
    let t0 = Instant::now();
    let err = bus.identity(UNIT).await.unwrap_err();
    assert!(matches!(err, BusError::Offline { addr: UNIT, .. }), "{err}");
    // Far below one reply timeout (80 ms) even on a loaded machine; the proof that the wire
    // was not touched is the device's log below.
    assert!(
        t0.elapsed() < Duration::from_millis(60),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(dev.drain_seen().len(), 0, "had {before} before");
    assert!(err.is_unreachable());
}

#[tokio::test]
async fn unlock_actuates_once_and_reports_the_count() {
    let (bus, dev) = start(115_200, vec![], Duration::ZERO, |_| {});
    let out = bus.unlock(UNIT).await.unwrap();
    assert!(out.actuated && !out.reply_lost);
    assert_eq!((out.count_before, out.unlock_count), (0, 1));
    assert_eq!(dev.model.lock().unwrap().actuations, 1);
}

#[tokio::test]
async fn lost_unlock_reply_is_resolved_by_read_back_without_a_second_actuation() {
    // Script: count read answered, the write applied but its reply lost.
    let (bus, mut dev) = start(
        115_200,
        vec![Act::Answer, Act::ApplySilently],
        Duration::ZERO,
        |_| {},
    );
    let out = bus.unlock(UNIT).await.unwrap();
    assert!(out.actuated && out.reply_lost, "{out:?}");
    assert_eq!(out.unlock_count, 1);
    assert_eq!(dev.model.lock().unwrap().actuations, 1);
    let writes = dev
        .drain_seen()
        .into_iter()
        .filter(|(_, r)| matches!(r, Request::WriteSingleCoil { .. }))
        .count();
    assert_eq!(writes, 1, "the UNLOCK write must not be repeated");
    assert_eq!(bus.counters().unlock_reply_lost, 1);
}

#[tokio::test]
async fn lost_unlock_request_is_sent_again_because_the_count_proves_it_never_arrived() {
    let (bus, mut dev) = start(
        115_200,
        vec![Act::Answer, Act::Ignore],
        Duration::ZERO,
        |_| {},
    );
    let out = bus.unlock(UNIT).await.unwrap();
    assert!(out.actuated && out.reply_lost, "{out:?}");
    assert_eq!(dev.model.lock().unwrap().actuations, 1);
    let writes = dev
        .drain_seen()
        .into_iter()
        .filter(|(_, r)| matches!(r, Request::WriteSingleCoil { .. }))
        .count();
    assert_eq!(writes, 2);
}

#[tokio::test]
async fn jammed_latch_is_reported_not_actuated() {
    let (bus, dev) = start(115_200, vec![], Duration::ZERO, |_| {});
    dev.model.lock().unwrap().fault = true;
    let out = bus.unlock(UNIT).await.unwrap();
    assert!(!out.actuated && out.state.inputs.fault, "{out:?}");
}

#[tokio::test]
async fn unlock_overtakes_queued_firmware_writes() {
    // Every reply takes 50 ms so the bulk lane has a backlog when the unlock arrives, and
    // the unlock is queued long before the frame in flight is answered.
    let (bus, mut dev) = start(115_200, vec![], Duration::from_millis(50), |c| {
        c.request_timeout = Duration::from_millis(300);
    });
    let mut bulk = Vec::new();
    for i in 0..6u16 {
        let b = bus.clone();
        bulk.push(tokio::spawn(async move {
            b.request(
                UNIT,
                Request::WriteMultipleRegisters {
                    addr: holding::FW_CHUNK_OFFSET,
                    values: vec![0, i, 1, 0],
                },
                Priority::Bulk,
            )
            .await
        }));
    }
    // Wait until the first bulk frame is on the wire.
    let first = tokio::time::timeout(Duration::from_secs(2), dev.seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(first.1, Request::WriteMultipleRegisters { .. }));
    let out = bus.unlock(UNIT).await.unwrap();
    assert!(out.actuated);
    for b in bulk {
        b.await.unwrap().unwrap();
    }
    let order: Vec<Request> = dev.drain_seen().into_iter().map(|(_, r)| r).collect();
    // At most one more bulk frame (the one in flight when the unlock was queued) may come
    // before the unlock's first request, the UNLOCK_COUNT read.
    let pos = order
        .iter()
        .position(|r| {
            matches!(
                r,
                Request::ReadInputRegisters {
                    addr: input::UNLOCK_COUNT,
                    ..
                }
            )
        })
        .unwrap();
    assert!(
        pos <= 1,
        "unlock started after {pos} more bulk frames: {order:?}"
    );
}

#[tokio::test]
async fn stale_bytes_from_a_late_reply_are_not_taken_as_the_next_answer() {
    // The first reply comes 150 ms after the request, long after the driver gave up (80 ms).
    let (bus, _dev) = start(
        115_200,
        vec![Act::Late(Duration::from_millis(150))],
        Duration::ZERO,
        |c| c.read_retries = 0,
    );
    let err = bus.settings(UNIT).await.unwrap_err();
    assert!(matches!(err, BusError::NoReply { .. }), "{err}");
    // Let the late settings reply land on the line, then ask for identity: the late frame
    // must be thrown away, not decoded as the answer.
    tokio::time::sleep(Duration::from_millis(120)).await;
    let id = bus.identity(UNIT).await.unwrap();
    assert_eq!(id.serial, "SN-TEST");
    assert!(bus.counters().stale_bytes >= 13, "{:?}", bus.counters());
    assert_eq!(bus.counters().faults(), 0);
}

#[tokio::test]
async fn close_ends_the_task_and_later_calls_fail_closed() {
    let (bus, _dev) = start(115_200, vec![], Duration::ZERO, |_| {});
    bus.identity(UNIT).await.unwrap();
    bus.close().await;
    assert!(matches!(bus.identity(UNIT).await, Err(BusError::Closed)));
}

#[tokio::test]
async fn bad_address_is_refused() {
    let (bus, _dev) = start(115_200, vec![], Duration::ZERO, |_| {});
    assert!(matches!(
        bus.unlock(0).await,
        Err(BusError::BadAddress { addr: 0 })
    ));
    assert!(matches!(
        bus.identity(248).await,
        Err(BusError::BadAddress { addr: 248 })
    ));
}

#[tokio::test]
async fn probes_of_an_absent_lock_are_short_and_do_not_count_against_health() {
    let (bus, _dev) = start(115_200, vec![], Duration::ZERO, |c| {
        c.request_timeout = Duration::from_secs(2);
        c.probe_timeout = Duration::from_millis(30);
    });
    let t0 = Instant::now();
    let err = bus
        .probe(
            9,
            Request::ReadInputRegisters {
                addr: input::DEVICE_TYPE,
                count: 1,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            BusError::NoReply {
                addr: 9,
                attempts: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(bus.health(9).consecutive_failures, 0);
    // The lock that is there still answers at once.
    assert_eq!(bus.identity(UNIT).await.unwrap().serial, "SN-TEST");
}

#[tokio::test]
async fn an_unlock_goes_before_the_retry_of_a_lower_lane_read() {
    // The bulk read's first attempt goes unanswered (80 ms timeout); an unlock queued during
    // that wait must be served before the retry.
    let (bus, mut dev) = start(115_200, vec![Act::Ignore], Duration::ZERO, |_| {});
    let b = bus.clone();
    let bulk = tokio::spawn(async move {
        b.request(
            UNIT,
            Request::ReadInputRegisters {
                addr: input::FW_STATE,
                count: 5,
            },
            Priority::Bulk,
        )
        .await
    });
    let first = tokio::time::timeout(Duration::from_secs(2), dev.seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        first.1,
        Request::ReadInputRegisters {
            addr: input::FW_STATE,
            ..
        }
    ));
    let out = bus.unlock(UNIT).await.unwrap();
    assert!(out.actuated);
    let r = bulk.await.unwrap().unwrap();
    assert!(
        matches!(r, Response::Registers(ref v) if v.len() == 5),
        "{r:?}"
    );
    let order: Vec<Request> = dev.drain_seen().into_iter().map(|(_, r)| r).collect();
    assert!(
        matches!(
            order.first(),
            Some(Request::ReadInputRegisters {
                addr: input::UNLOCK_COUNT,
                ..
            })
        ),
        "the retry went before the unlock: {order:?}"
    );
    assert!(
        matches!(
            order.last(),
            Some(Request::ReadInputRegisters {
                addr: input::FW_STATE,
                ..
            })
        ),
        "{order:?}"
    );
    assert_eq!(bus.counters().retries, 1);
}
