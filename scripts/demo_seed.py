#!/usr/bin/env python3
"""Seeds the demo through the cloud's public API, as an operator would in the console.

Creates a demo merchant (6% commission), its owner and staff logins, a venue, one gateway
with four locks on bus addresses 1-4 (each with two price plans), and a one-time enrollment
code naming that gateway. Everything goes through the HTTP API, so the demo exercises the
same validation and tenancy rules as real use.

Usage: demo_seed.py BASE_URL ADMIN_PASSWORD_FILE OUT_JSON
The result (ids, logins, lock QR links, the enrollment code) is written to OUT_JSON. When
OUT_JSON already exists the demo was seeded before and nothing is done, so a second
`scripts/run.sh` keeps its data. Standard library only.
"""

import json
import os
import secrets
import sys
import urllib.error
import urllib.request


def call(base, method, path, body=None, token=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            raw = resp.read()
            return json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")
        sys.exit(f"demo seed: {method} {path} answered {err.code}: {detail}")


def login(base, username, password):
    out = call(base, "POST", "/api/v1/auth/login", {"login": username, "password": password})
    return out["access_token"]


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    base, password_file, out_path = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]
    if os.path.exists(out_path):
        return
    with open(password_file, encoding="utf-8") as f:
        admin_password = f.read().strip()
    admin = login(base, "admin", admin_password)

    merchant = call(base, "POST", "/api/v1/merchants",
                    {"name": "杜美人演示商户", "contact_phone": "13800000000", "commission_bp": 600},
                    admin)
    owner_password = secrets.token_urlsafe(9)
    staff_password = secrets.token_urlsafe(9)
    for username, role, name, password in (
        ("demo-owner", "merchant_owner", "演示店主", owner_password),
        ("demo-staff", "merchant_staff", "演示店员", staff_password),
    ):
        call(base, "POST", "/api/v1/users",
             {"username": username, "password": password, "display_name": name,
              "role": role, "merchant_id": merchant["id"]}, admin)

    owner = login(base, "demo-owner", owner_password)
    venue = call(base, "POST", "/api/v1/venues",
                 {"name": "杜美人·静安店", "address": "上海市静安区南京西路 1 号"}, owner)
    gateway = call(base, "POST", "/api/v1/gateways",
                   {"venue_id": venue["id"], "name": "前台网关"}, owner)
    locks = []
    for addr in range(1, 5):
        lock = call(base, "POST", "/api/v1/locks", {
            "gateway_id": gateway["id"],
            "device_code": f"DEMO-{addr:04d}",
            "bus_address": addr,
            "name": f"{addr} 号柜",
            "price_plans": [
                {"name": "1 小时", "duration_minutes": 60, "price_fen": 300},
                {"name": "3 小时", "duration_minutes": 180, "price_fen": 800},
            ],
        }, owner)
        locks.append({"id": lock["id"], "addr": addr, "name": lock["name"],
                      "qr_code": lock["qr_code"], "qr_payload": lock["qr_payload"]})
    code = call(base, "POST", "/api/v1/enrollment-codes",
                {"venue_id": venue["id"], "gateway_id": gateway["id"], "ttl_minutes": 60}, owner)

    result = {
        "merchant_id": merchant["id"], "venue_id": venue["id"], "gateway_id": gateway["id"],
        "logins": {"demo-owner": owner_password, "demo-staff": staff_password},
        "locks": locks, "enrollment_code": code["code"],
    }
    tmp = out_path + ".tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w",
              encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False, indent=2)
    os.replace(tmp, out_path)


if __name__ == "__main__":
    main()
