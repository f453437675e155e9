#!/usr/bin/env python3
"""WeChat Pay API v3 notifications made by an independent implementation, for the cloud tests.

The cloud's wechatpay notification route must accept what WeChat Pay sends and refuse
everything else. Its Rust code (dmr-wechatpay) must not be the only judge of what WeChat Pay
sends, so the API tests build their notifications here, with the Python `cryptography`
package: the resource JSON is encrypted with AEAD_AES_256_GCM under the API v3 key, the
envelope is serialised, and `TIMESTAMP\\nNONCE\\nBODY\\n` is signed with RSA PKCS#1 v1.5 /
SHA-256 by the "platform" key, exactly as WeChat Pay documents it.

Input (stdin, JSON):
    {"api_v3_key": "...", "signers": {"<serial or PUB_KEY_ID_>": "<PKCS#8 private key PEM>"},
     "items": [{"id", "event_type", "original_type", "resource": {...}, "timestamp": int,
                "serial": "...", "tamper": null | "ciphertext" | "tag" | "nonce" |
                "associated_data" | "body_after_signing" | "signature" | "signtest"}]}
Output (stdout, JSON): [{"headers": {...}, "body": "..."}] in the same order.

Tampering with the resource (ciphertext, tag, nonce, associated_data) happens BEFORE signing,
so the signature is valid and only the AEAD check can catch it; `body_after_signing` and
`signature` break the signature instead; `signtest` is WeChat Pay's signature-test probe.
Test keys only (the crate's conformance vectors); run by cloud/tests/api/wechatpay.rs.
"""

import base64
import json
import secrets
import string
import sys

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def alnum(n: int) -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(n))


def flip_char(text: str) -> str:
    """The same text with its first character changed (still valid for its alphabet)."""
    first = "B" if text[0] != "B" else "C"
    return first + text[1:]


def make(item, api_v3_key: bytes, signers):
    tamper = item.get("tamper")
    plaintext = json.dumps(item["resource"], ensure_ascii=False, separators=(",", ":")).encode()
    nonce = alnum(12)
    associated_data = item.get("original_type", "transaction")
    sealed = bytearray(AESGCM(api_v3_key).encrypt(nonce.encode(), plaintext, associated_data.encode()))
    if tamper == "ciphertext":
        sealed[0] ^= 0x01
    elif tamper == "tag":
        sealed[-1] ^= 0x01
    if tamper == "nonce":
        nonce = flip_char(nonce)
    elif tamper == "associated_data":
        associated_data = associated_data + "x"
    envelope = {
        "id": item["id"],
        "create_time": "2026-11-26T10:35:00+08:00",
        "resource_type": "encrypt-resource",
        "event_type": item["event_type"],
        "summary": "支付成功" if item["event_type"].startswith("TRANSACTION") else "退款状态变更",
        "resource": {
            "original_type": item.get("original_type", "transaction"),
            "algorithm": "AEAD_AES_256_GCM",
            "ciphertext": b64(bytes(sealed)),
            "associated_data": associated_data,
            "nonce": nonce,
        },
    }
    body = json.dumps(envelope, ensure_ascii=False, separators=(",", ":"))
    timestamp = str(item["timestamp"])
    header_nonce = alnum(32)
    key = serialization.load_pem_private_key(signers[item["serial"]].encode(), password=None)
    message = f"{timestamp}\n{header_nonce}\n{body}\n"
    if tamper == "signature":
        message = f"{timestamp}\n{header_nonce}\n{body} \n"
    signature = b64(key.sign(message.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256()))
    if tamper == "signtest":
        signature = "WECHATPAY/SIGNTEST/" + signature
    if tamper == "body_after_signing":
        body = body.replace("encrypt-resource", "encrypt-resourcf")
    headers = {
        "Wechatpay-Serial": item["serial"],
        "Wechatpay-Timestamp": timestamp,
        "Wechatpay-Nonce": header_nonce,
        "Wechatpay-Signature": signature,
        "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
        "Content-Type": "application/json",
    }
    return {"headers": headers, "body": body}


def main() -> None:
    spec = json.load(sys.stdin)
    key = spec["api_v3_key"].encode("utf-8")
    out = [make(item, key, spec["signers"]) for item in spec["items"]]
    json.dump(out, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
