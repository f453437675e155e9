#!/usr/bin/env python3
"""An independent Modbus master for testing dmr-lock-sim: pymodbus 3.16.1, with the
register map and the firmware transfer written out here from PROTOCOL.md section 4, not
taken from the Rust code.

Usage: modbus_peer.py (--serial PATH | --tcp HOST:PORT) --unit N COMMAND [options]
Commands print one JSON object on the last line of stdout; the Rust tests assert on it.
Exit status 0 means the script ran, not that the simulator behaved; 3 means pymodbus is
missing or the wrong version.
"""

import argparse
import json
import sys
import time

try:
    import pymodbus
    from pymodbus.client import ModbusSerialClient, ModbusTcpClient
except ImportError as e:  # pragma: no cover - reported to the Rust test
    print(json.dumps({"error": f"pymodbus not importable: {e}"}))
    sys.exit(3)

WANT_VERSION = "3.16.1"

# PROTOCOL.md section 4, written out independently.
IR_IDENTITY, IR_IDENTITY_N = 0x0000, 16
IR_FW, IR_FW_N = 0x0020, 5
HR_FW_CTRL, HR_FW_TOTAL = 0x0100, 0x0101
HR_CHUNK = 0x0110
BEGIN, VERIFY, ACTIVATE, ABORT, CONFIRM = 1, 2, 3, 4, 5


def connect(args):
    if args.serial:
        c = ModbusSerialClient(port=args.serial, baudrate=args.baud, bytesize=8, parity="N",
                               stopbits=1, timeout=args.timeout, retries=0)
    else:
        host, port = args.tcp.rsplit(":", 1)
        c = ModbusTcpClient(host, port=int(port), timeout=args.timeout, retries=0)
    if not c.connect():
        print(json.dumps({"error": "cannot connect"}))
        sys.exit(2)
    return c


def call(fn, *a, **kw):
    """('ok', response) | ('exception', code) | ('timeout', message)."""
    try:
        r = fn(*a, **kw)
    except Exception as e:  # pymodbus raises ModbusIOException on no answer
        return ("timeout", f"{type(e).__name__}: {e}")
    if r.isError():
        code = getattr(r, "exception_code", None)
        if code is None:
            return ("timeout", str(r))
        return ("exception", int(code))
    return ("ok", r)


def outcome(res):
    kind, v = res
    if kind == "ok":
        return "ok"
    if kind == "exception":
        return f"exception_{v:02d}"
    return "timeout"


def identity(c, unit):
    kind, r = call(c.read_input_registers, IR_IDENTITY, count=IR_IDENTITY_N, device_id=unit)
    if kind != "ok":
        return {"identity": outcome((kind, r))}
    regs = r.registers
    raw = b"".join(x.to_bytes(2, "big") for x in regs[8:16])
    serial = raw.split(b"\0", 1)[0].decode("ascii", "replace")
    kind, f = call(c.read_input_registers, IR_FW, count=IR_FW_N, device_id=unit)
    fw = f.registers if kind == "ok" else None
    return {
        "identity": "ok",
        "device_type": regs[0],
        "fw_version": f"{regs[1] >> 8}.{regs[1] & 0xFF}.{regs[2]}",
        "unlock_count": (regs[3] << 16) | regs[4],
        "supply_mv": regs[5],
        "last_error": regs[6],
        "serial": serial,
        "fw_state": fw[0] if fw else None,
        "fw_received": ((fw[1] << 16) | fw[2]) if fw else None,
        "fw_error": fw[3] if fw else None,
        "active_slot": fw[4] if fw else None,
    }


def bits(c, unit):
    kind, r = call(c.read_discrete_inputs, 0, count=5, device_id=unit)
    if kind != "ok":
        return outcome((kind, r))
    b = r.bits[:5]
    return {"door_closed": b[0], "latch_locked": b[1], "tamper": b[2], "fault": b[3],
            "forced_open": b[4]}


def cmd_unlock(c, args):
    w = call(c.write_coil, 0, True, device_id=args.unit)
    after = bits(c, args.unit)
    kind, r = call(c.read_coils, 0, count=3, device_id=args.unit)
    coil = r.bits[0] if kind == "ok" else None
    return {"write": outcome(w), "after": after, "unlock_coil": coil}


def cmd_exceptions(c, args):
    u = args.unit
    return {
        "report_device_id": outcome(call(c.report_device_id, device_id=u)),
        "read_past_identity": outcome(call(c.read_input_registers, 0x0F, count=2, device_id=u)),
        "read_gap": outcome(call(c.read_holding_registers, 0x0004, count=1, device_id=u)),
        "coil_3": outcome(call(c.write_coil, 3, True, device_id=u)),
        "pulse_too_short": outcome(call(c.write_register, 0x0000, 99, device_id=u)),
        "address_zero": outcome(call(c.write_register, 0x0002, 0, device_id=u)),
        "bad_fw_ctrl": outcome(call(c.write_register, HR_FW_CTRL, 9, device_id=u)),
        "verify_when_idle": outcome(call(c.write_register, HR_FW_CTRL, VERIFY, device_id=u)),
        "pulse_ok": outcome(call(c.write_register, 0x0000, 3000, device_id=u)),
    }


def fw_status(c, unit):
    kind, r = call(c.read_input_registers, IR_FW, count=IR_FW_N, device_id=unit)
    if kind != "ok":
        return None
    s = r.registers
    return {"state": s[0], "received": (s[1] << 16) | s[2], "error": s[3], "slot": s[4]}


def chunk_regs(offset, data):
    regs = [offset >> 16, offset & 0xFFFF, len(data)]
    padded = data + (b"\0" if len(data) % 2 else b"")
    regs += [int.from_bytes(padded[i:i + 2], "big") for i in range(0, len(padded), 2)]
    return regs


def cmd_flash(c, args):
    u = args.unit
    image = open(args.image, "rb").read()
    out = {"size": len(image)}
    st = fw_status(c, u)
    out["status_before"] = st
    if args.resume and st and st["state"] == 1:
        offset = st["received"]
        out["resumed_from"] = offset
    else:
        n = len(image)
        out["total"] = outcome(call(c.write_registers, HR_FW_TOTAL, [n >> 16, n & 0xFFFF],
                                    device_id=u))
        out["begin"] = outcome(call(c.write_register, HR_FW_CTRL, BEGIN, device_id=u))
        offset = 0
    chunks = 0
    while offset < len(image):
        if args.stop_after is not None and offset >= args.stop_after:
            out["stopped_at"] = offset
            return out
        data = image[offset:offset + args.chunk]
        res = call(c.write_registers, HR_CHUNK, chunk_regs(offset, data), device_id=u)
        if res[0] != "ok":
            out["chunk_failed_at"] = offset
            out["chunk_outcome"] = outcome(res)
            return out
        offset += len(data)
        chunks += 1
    out["chunks"] = chunks
    # Sending the last chunk again is accepted unchanged (PROTOCOL.md section 4).
    last = (len(image) - 1) // args.chunk * args.chunk
    out["repeat_last"] = outcome(call(c.write_registers, HR_CHUNK,
                                      chunk_regs(last, image[last:last + args.chunk]),
                                      device_id=u))
    out["out_of_order"] = outcome(call(c.write_registers, HR_CHUNK,
                                       chunk_regs(0, image[:args.chunk]), device_id=u))
    out["after_transfer"] = fw_status(c, u)
    out["verify"] = outcome(call(c.write_register, HR_FW_CTRL, VERIFY, device_id=u))
    out["during_verify_state"] = (fw_status(c, u) or {}).get("state")
    out["abort_during_verify"] = outcome(call(c.write_register, HR_FW_CTRL, ABORT,
                                              device_id=u))
    deadline = time.monotonic() + 5
    st = fw_status(c, u)
    while st and st["state"] == 2 and time.monotonic() < deadline:
        time.sleep(0.02)
        st = fw_status(c, u)
    out["after_verify"] = st
    if not st or st["state"] != 3 or args.no_activate:
        return out
    out["activate"] = outcome(call(c.write_register, HR_FW_CTRL, ACTIVATE, device_id=u))
    silent = 0
    deadline = time.monotonic() + 10
    ident = {"identity": "timeout"}
    while time.monotonic() < deadline:
        ident = identity(c, u)
        if ident.get("identity") == "ok":
            break
        silent += 1
    out["silent_polls_after_activate"] = silent
    out["after_activate"] = ident
    if args.no_confirm:
        return out
    out["confirm"] = outcome(call(c.write_register, HR_FW_CTRL, CONFIRM, device_id=u))
    out["after_confirm"] = fw_status(c, u)
    return out


def cmd_version(_c, _args):
    return {"pymodbus": pymodbus.__version__}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--serial")
    p.add_argument("--tcp")
    p.add_argument("--baud", type=int, default=9600)
    p.add_argument("--unit", type=int, default=1)
    p.add_argument("--timeout", type=float, default=0.5)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("version")
    sub.add_parser("identity")
    sub.add_parser("unlock")
    sub.add_parser("bits")
    sub.add_parser("exceptions")
    f = sub.add_parser("flash")
    f.add_argument("--image", required=True)
    f.add_argument("--chunk", type=int, default=200)
    f.add_argument("--stop-after", type=int)
    f.add_argument("--resume", action="store_true")
    f.add_argument("--no-activate", action="store_true")
    f.add_argument("--no-confirm", action="store_true")
    args = p.parse_args()
    if pymodbus.__version__ != WANT_VERSION:
        print(json.dumps({"error": f"pymodbus {pymodbus.__version__}, want {WANT_VERSION}"}))
        sys.exit(3)
    if args.cmd == "version":
        print(json.dumps(cmd_version(None, args)))
        return
    c = connect(args)
    try:
        if args.cmd == "identity":
            res = identity(c, args.unit)
        elif args.cmd == "bits":
            res = {"bits": bits(c, args.unit)}
        else:
            res = {"unlock": cmd_unlock, "exceptions": cmd_exceptions,
                   "flash": cmd_flash}[args.cmd](c, args)
    finally:
        c.close()
    print(json.dumps(res))


if __name__ == "__main__":
    main()
