//! How `dmr-tech` prints: short aligned text for people by default, one JSON document on
//! stdout with `--json` (progress bars go to stderr and only when it is a terminal).

use dmr_protocol::firmware::FirmwareHeader;
use dmr_protocol::registers::Settings;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use super::flash::{FlashReport, Phase, Progress};
use super::{Found, Status};
use crate::bus::{BusCounters, LockState, UnlockOutcome};

/// The output mode.
#[derive(Clone, Copy, Debug)]
pub struct Out {
    pub json: bool,
}

fn yes(b: bool, y: &'static str, n: &'static str) -> &'static str {
    if b { y } else { n }
}

/// A progress bar for one lock's transfer, hidden for JSON and non-terminals.
#[derive(Debug)]
pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    pub fn update(&self, p: Progress) {
        self.bar.set_position(u64::from(p.done));
        if p.phase != Phase::Transfer {
            self.bar
                .set_message(format!("{:?}", p.phase).to_lowercase());
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Out {
    fn print(&self, text: String, value: serde_json::Value) {
        if self.json {
            println!("{value}");
        } else {
            println!("{text}");
        }
    }

    pub fn progress_bar(&self, addr: u8, total: u64) -> Bar {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if self.json {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        let style = ProgressStyle::with_template(&format!(
            "lock {addr:>3} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}} ETA {{eta}} {{msg}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        Bar { bar }
    }

    pub fn done(&self, text: &str, value: serde_json::Value) {
        self.print(text.to_owned(), json!({"ok": true, "result": value}));
    }

    pub fn scan(&self, found: &[Found]) {
        let mut text = format!(
            "{:>4}  {:<16} {:<10} {:<4} {:<20} {}",
            "ADDR", "SERIAL", "FIRMWARE", "SLOT", "FW STATE", "DOOR/LATCH"
        );
        for f in found {
            let door = match (f.door_closed, f.latch_locked) {
                (Some(d), Some(l)) => format!(
                    "{}/{}",
                    yes(d, "closed", "open"),
                    yes(l, "locked", "released")
                ),
                _ => "?".into(),
            };
            text.push_str(&format!(
                "\n{:>4}  {:<16} {:<10} {:<4} {:<20} {}",
                f.addr, f.serial, f.fw, f.slot, f.fw_state, door
            ));
        }
        text.push_str(&format!("\n{} lock(s) found", found.len()));
        self.print(text, json!({"ok": true, "locks": found}));
    }

    pub fn status(&self, all: &[Status], counters: &BusCounters) {
        let mut text = String::new();
        for s in all {
            text.push_str(&format!(
                "lock {} (serial {})\n  firmware   {} slot {}, update {} ({} bytes received, error: {})\n  door       {}, latch {}{}\n  alarms     tamper {}, forced open {}, fault {}; last error: {}\n  counters   {} unlocks, supply {} mV\n  settings   pulse {} ms, auto-relock {} s, address {}, {} baud\n",
                s.addr, s.serial, s.fw, s.active_slot, s.fw_state, s.fw_received, s.fw_error,
                yes(s.door_closed, "closed", "OPEN"), yes(s.latch_locked, "locked", "released"),
                yes(s.unlocked, " (unlock pulse running)", ""),
                yes(s.tamper, "YES", "no"), yes(s.forced_open, "YES", "no"), yes(s.fault, "YES", "no"),
                s.last_error, s.unlock_count, s.supply_mv,
                s.unlock_pulse_ms, s.auto_relock_s, s.unit_address, s.baud,
            ));
        }
        text.push_str(&format!(
            "bus: {} requests, {} replies, {} timeouts, {} CRC errors, {} wrong-unit, {} truncated",
            counters.requests,
            counters.replies,
            counters.timeouts,
            counters.crc_errors,
            counters.wrong_unit,
            counters.truncated
        ));
        self.print(
            text,
            json!({"ok": true, "locks": all, "bus": {
                "requests": counters.requests, "replies": counters.replies,
                "timeouts": counters.timeouts, "crc_errors": counters.crc_errors,
                "wrong_unit": counters.wrong_unit, "truncated": counters.truncated,
                "garbled": counters.garbled, "retries": counters.retries}}),
        );
    }

    pub fn unlock(&self, addr: u8, o: &UnlockOutcome) {
        let text = if o.actuated {
            format!(
                "lock {addr} unlocked (unlock count {} -> {}){}",
                o.count_before,
                o.unlock_count,
                yes(
                    o.reply_lost,
                    "; the reply was lost, confirmed by reading back",
                    ""
                )
            )
        } else if o.state.inputs.fault {
            format!(
                "lock {addr} did NOT open: the latch is jammed (FAULT is set); check the mechanism"
            )
        } else {
            format!("lock {addr} did NOT open: the unlock count did not change")
        };
        self.print(
            text,
            json!({"ok": o.actuated, "addr": addr, "actuated": o.actuated,
                "count_before": o.count_before, "unlock_count": o.unlock_count,
                "reply_lost": o.reply_lost, "fault": o.state.inputs.fault}),
        );
    }

    pub fn state_line(&self, addr: u8, st: &LockState) {
        let i = &st.inputs;
        let text = format!(
            "lock {addr}: door {}, latch {}, tamper {}, forced open {}",
            yes(i.door_closed, "closed", "open"),
            yes(i.latch_locked, "locked", "released"),
            yes(i.tamper, "STILL SET (the cause is still there)", "clear"),
            yes(i.forced_open, "STILL SET", "clear"),
        );
        self.print(
            text,
            json!({"ok": !(i.tamper || i.forced_open), "addr": addr, "door_closed": i.door_closed,
                "latch_locked": i.latch_locked, "tamper": i.tamper, "forced_open": i.forced_open}),
        );
    }

    pub fn settings(&self, addr: u8, s: Option<&Settings>, reboot_needed: bool) {
        let mut text = match s {
            Some(s) => format!(
                "lock {addr}: pulse {} ms, auto-relock {} s, address {}, baud {}",
                s.unlock_pulse_ms,
                s.auto_relock_s,
                s.unit_address,
                s.baud.bits_per_second()
            ),
            None => format!(
                "lock {addr}: settings written and the lock rebooted; it now uses the new baud rate"
            ),
        };
        if reboot_needed {
            text.push_str(
                "\nthe baud change takes effect after a reboot (run again with --reboot)",
            );
        }
        let v = s.map(|s| {
            json!({"unlock_pulse_ms": s.unlock_pulse_ms, "auto_relock_s": s.auto_relock_s,
                "unit_address": s.unit_address, "baud": s.baud.bits_per_second()})
        });
        self.print(
            text,
            json!({"ok": true, "addr": addr, "settings": v, "reboot_needed": reboot_needed}),
        );
    }

    pub fn flash_ok(&self, r: &FlashReport) {
        if !self.json {
            println!(
                "lock {}: firmware {} -> {} ({} bytes{}, {:.0} B/s, {:.1} s){}",
                r.addr,
                r.from,
                r.to,
                r.bytes,
                if r.resumed_from > 0 {
                    format!(", resumed at {}", r.resumed_from)
                } else {
                    String::new()
                },
                r.bytes_per_s,
                r.total_s,
                yes(
                    r.confirmed,
                    ", confirmed",
                    ", NOT confirmed: it rolls back at the next reboot"
                )
            );
        }
    }

    pub fn flash_err(&self, addr: u8, e: &anyhow::Error) {
        if !self.json {
            eprintln!("lock {addr}: flash FAILED: {e:#}");
        }
    }

    pub fn flash_summary(&self, h: &FirmwareHeader, results: &[Result<FlashReport, (u8, String)>]) {
        let ok = results.iter().filter(|r| r.is_ok()).count();
        if self.json {
            let items: Vec<_> = results
                .iter()
                .map(|r| match r {
                    Ok(rep) => json!({"ok": true, "report": rep}),
                    Err((addr, e)) => json!({"ok": false, "addr": addr, "error": e}),
                })
                .collect();
            println!(
                "{}",
                json!({"ok": ok == results.len(), "version": h.version.to_string(), "locks": items})
            );
        } else if results.len() > 1 {
            println!("{ok} of {} lock(s) flashed to {}", results.len(), h.version);
        }
    }

    pub fn inspect(&self, path: &str, h: &FirmwareHeader, size: usize, problem: Option<String>) {
        let text = format!(
            "{path}: firmware {} for hardware type {}, payload {} bytes (file {} bytes), vendor key {}, sha256 {}{}",
            h.version,
            h.hardware,
            h.payload_len,
            size,
            h.key_id,
            h.payload_sha256
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
            problem
                .as_deref()
                .map(|p| format!("\nPROBLEM: {p}"))
                .unwrap_or_default()
        );
        self.print(
            text,
            json!({"ok": problem.is_none(), "version": h.version.to_string(), "hardware": h.hardware,
                "payload_len": h.payload_len, "file_len": size, "key_id": h.key_id,
                "problem": problem}),
        );
    }
}
