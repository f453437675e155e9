#!/usr/bin/env python3
"""Conformance vectors for dmr-wechatpay, made by an independent implementation.

The Rust crate signs, verifies and decrypts WeChat Pay API v3 messages; this script does the
same things with the `cryptography` package so the Rust tests can check that both agree byte
for byte. It writes `vectors.json` next to itself.

Keys are throwaway test keys. When `vectors.json` already exists its keys are reused, so
re-running the script reproduces the same file (RSA PKCS#1 v1.5 signatures and AES-GCM with a
fixed nonce are deterministic). Pass `--fresh-keys` to make new ones.

    python3 -m venv /work/main/target/wxvenv
    /work/main/target/wxvenv/bin/pip install cryptography
    /work/main/target/wxvenv/bin/python cloud/wechatpay/tests/vectors/generate.py
"""

import base64
import datetime
import hashlib
import json
import random
import secrets
import string
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

OUT = Path(__file__).with_name("vectors.json")

MCHID = "1900009191"
APPID = "wxd678efh567hg6787"
# All vectors pretend to happen at this instant; tests pass it as "now".
TIMESTAMP = 1764150000
# Non-secret randomness inside the vectors (nonces); seeded in main().
RNG = random.Random()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def pem_private(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def pem_public(key) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM,
        serialization.PublicFormat.SubjectPublicKeyInfo,
    ).decode("ascii")


def load_private(pem: str):
    return serialization.load_pem_private_key(pem.encode("ascii"), password=None)


def rsa_sign(key, message: str) -> str:
    sig = key.sign(message.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
    return b64(sig)


def random_alnum(n: int, rng=secrets.SystemRandom()) -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(rng.choice(alphabet) for _ in range(n))


def make_keys():
    merchant = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    platform = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    wxpub = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    # A positive serial of exactly 40 hex digits, like the serials WeChat Pay issues.
    serial = secrets.randbits(159) | (1 << 158)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test WeChat Pay Platform"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Tenpay.com Root CA (test)"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(platform.public_key())
        .serial_number(serial)
        .not_valid_before(datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc))
        .not_valid_after(datetime.datetime(2036, 1, 1, tzinfo=datetime.timezone.utc))
        .sign(platform, hashes.SHA256())
    )
    return {
        "mchid": MCHID,
        "appid": APPID,
        "merchant_serial_no": "%040X" % (secrets.randbits(159) | (1 << 158)),
        "merchant_private_key_pem": pem_private(merchant),
        "merchant_public_key_pem": pem_public(merchant.public_key()),
        "platform_private_key_pem": pem_private(platform),
        "platform_certificate_pem": cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        "platform_serial_no": "%X" % serial,
        "wechatpay_public_key_id": "PUB_KEY_ID_01" + "".join(secrets.choice(string.digits) for _ in range(30)),
        "wechatpay_private_key_pem": pem_private(wxpub),
        "wechatpay_public_key_pem": pem_public(wxpub.public_key()),
        "api_v3_key": random_alnum(32),
    }


def request_vectors(keys):
    merchant = load_private(keys["merchant_private_key_pem"])
    cases = [
        (
            "POST",
            "/v3/pay/transactions/jsapi",
            json.dumps(
                {
                    "appid": APPID,
                    "mchid": MCHID,
                    "description": "都美人 门锁开锁 1次",
                    "out_trade_no": "DMR20261126000001",
                    "notify_url": "https://pay.example.invalid/wechatpay/notify",
                    "amount": {"total": 100, "currency": "CNY"},
                    "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
                },
                ensure_ascii=False,
                separators=(",", ":"),
            ),
        ),
        ("GET", "/v3/pay/transactions/out-trade-no/DMR20261126000001?mchid=1900009191", ""),
        (
            "POST",
            "/v3/refund/domestic/refunds",
            json.dumps(
                {
                    "out_trade_no": "DMR20261126000001",
                    "out_refund_no": "RF20261126000001",
                    "reason": "门锁未打开",
                    "amount": {"refund": 100, "total": 100, "currency": "CNY"},
                },
                ensure_ascii=False,
                separators=(",", ":"),
            ),
        ),
        ("GET", "/v3/bill/tradebill?bill_date=2026-11-25&bill_type=ALL", ""),
    ]
    out = []
    for i, (method, url, body) in enumerate(cases):
        timestamp = TIMESTAMP + i
        nonce = "%032X" % RNG.getrandbits(128)
        message = f"{method}\n{url}\n{timestamp}\n{nonce}\n{body}\n"
        signature = rsa_sign(merchant, message)
        authorization = (
            "WECHATPAY2-SHA256-RSA2048 "
            f'mchid="{MCHID}",nonce_str="{nonce}",signature="{signature}",'
            f'timestamp="{timestamp}",serial_no="{keys["merchant_serial_no"]}"'
        )
        out.append(
            {
                "method": method,
                "url": url,
                "timestamp": timestamp,
                "nonce": nonce,
                "body": body,
                "message": message,
                "signature": signature,
                "authorization": authorization,
            }
        )
    return out


def jsapi_vector(keys):
    merchant = load_private(keys["merchant_private_key_pem"])
    timestamp = str(TIMESTAMP)
    nonce = "%032X" % RNG.getrandbits(128)
    package = "prepay_id=wx201410272009395522657a690389285100"
    message = f"{APPID}\n{timestamp}\n{nonce}\n{package}\n"
    return {
        "app_id": APPID,
        "time_stamp": timestamp,
        "nonce_str": nonce,
        "package": package,
        "message": message,
        "pay_sign": rsa_sign(merchant, message),
    }


def signer_for(keys, signer):
    if signer == "certificate":
        return load_private(keys["platform_private_key_pem"]), keys["platform_serial_no"]
    return load_private(keys["wechatpay_private_key_pem"]), keys["wechatpay_public_key_id"]


def response_vectors(keys):
    bodies = [
        ("certificate", '{"prepay_id":"wx26112600000000000000000000000001"}'),
        ("public_key", '{"prepay_id":"wx26112600000000000000000000000002"}'),
        ("public_key", ""),
        ("certificate", '{"code":"ORDER_NOT_EXIST","message":"订单不存在"}'),
    ]
    out = []
    for i, (signer, body) in enumerate(bodies):
        key, serial = signer_for(keys, signer)
        timestamp = TIMESTAMP + 10 + i
        nonce = "%032x" % RNG.getrandbits(128)
        message = f"{timestamp}\n{nonce}\n{body}\n"
        out.append(
            {
                "signer": signer,
                "serial": serial,
                "timestamp": str(timestamp),
                "nonce": nonce,
                "body": body,
                "signature": rsa_sign(key, message),
            }
        )
    return out


def encrypt_resource(keys, plaintext: str, associated_data: str, original_type: str):
    nonce = random_alnum(12, RNG)
    aead = AESGCM(keys["api_v3_key"].encode("ascii"))
    ciphertext = aead.encrypt(nonce.encode("ascii"), plaintext.encode("utf-8"), associated_data.encode("utf-8"))
    return {
        "original_type": original_type,
        "algorithm": "AEAD_AES_256_GCM",
        "ciphertext": b64(ciphertext),
        "associated_data": associated_data,
        "nonce": nonce,
    }


def notification_vectors(keys):
    transaction = {
        "mchid": MCHID,
        "appid": APPID,
        "out_trade_no": "DMR20261126000001",
        "transaction_id": "4200002926202611260000000001",
        "trade_type": "JSAPI",
        "trade_state": "SUCCESS",
        "trade_state_desc": "支付成功",
        "bank_type": "OTHERS",
        "attach": "",
        "success_time": "2026-11-26T10:34:56+08:00",
        "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
        "amount": {"total": 100, "payer_total": 90, "currency": "CNY", "payer_currency": "CNY"},
    }
    refund = {
        "mchid": MCHID,
        "out_trade_no": "DMR20261126000001",
        "transaction_id": "4200002926202611260000000001",
        "out_refund_no": "RF20261126000001",
        "refund_id": "50300002926202611260000000001",
        "refund_status": "SUCCESS",
        "success_time": "2026-11-26T11:00:00+08:00",
        "user_received_account": "支付用户零钱",
        "amount": {"total": 100, "refund": 100, "payer_total": 90, "payer_refund": 90},
    }
    cases = [
        ("public_key", "TRANSACTION.SUCCESS", "transaction", "transaction", transaction, "支付成功"),
        ("certificate", "REFUND.SUCCESS", "refund", "refund", refund, "退款成功"),
    ]
    out = []
    for i, (signer, event_type, original_type, aad, plain_obj, summary) in enumerate(cases):
        plaintext = json.dumps(plain_obj, ensure_ascii=False, separators=(",", ":"))
        envelope = {
            "id": "EV-2026112600000%d" % i,
            "create_time": "2026-11-26T10:35:00+08:00",
            "resource_type": "encrypt-resource",
            "event_type": event_type,
            "summary": summary,
            "resource": encrypt_resource(keys, plaintext, aad, original_type),
        }
        body = json.dumps(envelope, ensure_ascii=False, separators=(",", ":"))
        key, serial = signer_for(keys, signer)
        timestamp = TIMESTAMP + 20 + i
        nonce = "%032x" % RNG.getrandbits(128)
        out.append(
            {
                "signer": signer,
                "event_type": event_type,
                "headers": {
                    "Wechatpay-Serial": serial,
                    "Wechatpay-Timestamp": str(timestamp),
                    "Wechatpay-Nonce": nonce,
                    "Wechatpay-Signature": rsa_sign(key, f"{timestamp}\n{nonce}\n{body}\n"),
                },
                "body": body,
                "plaintext": plaintext,
            }
        )
    return out


def aead_vectors(keys):
    out = []
    for plaintext, aad in [("hello 都美人", "transaction"), ("", ""), ('{"a":1}', "refund")]:
        res = encrypt_resource(keys, plaintext, aad, "test")
        out.append({"nonce": res["nonce"], "associated_data": aad, "ciphertext": res["ciphertext"], "plaintext": plaintext})
    return out


def yuan(fen: int) -> str:
    return "%d.%02d" % (fen // 100, fen % 100)


def bill_vector():
    header = (
        "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,"
        "付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,"
        "退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注"
    )
    rows = [
        # time, txid, out_trade_no, openid, type, state, settlement, refund_id, out_refund_no, refund, refund_state, fee, order, req_refund
        ("2026-11-25 09:00:01", "4200002926202611250000000001", "DMR20261125000001", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
         "JSAPI", "SUCCESS", 100, "0", "0", 0, "", 1, 100, 0),
        ("2026-11-25 12:30:00", "4200002926202611250000000002", "DMR20261125000002", "oUpF8uN1",
         "NATIVE", "SUCCESS", 123456, "0", "0", 0, "", 741, 123456, 0),
        ("2026-11-25 18:45:10", "4200002926202611250000000001", "DMR20261125000001", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
         "JSAPI", "REFUND", 0, "50300002926202611250000000001", "RF20261125000001", 100, "SUCCESS", -1, 0, 100),
    ]
    lines = [header]
    expected = []
    for (t, txid, otn, openid, ttype, state, settle, rid, orn, refund, rstate, fee, order, req_refund) in rows:
        fee_text = ("-" if fee < 0 else "") + yuan(abs(fee))
        fields = [
            t, APPID, MCHID, "0", "", txid, otn, openid, ttype, state,
            "OTHERS", "CNY", yuan(settle), "0.00", rid, orn, yuan(refund), "0.00",
            "ORIGINAL" if refund else "", rstate, "都美人开锁", "", fee_text, "0.60%", yuan(order), yuan(req_refund), "",
        ]
        lines.append(",".join("`" + f for f in fields))
        expected.append(
            {
                "trade_time": t,
                "appid": APPID,
                "mchid": MCHID,
                "transaction_id": txid,
                "out_trade_no": otn,
                "openid": openid,
                "trade_type": ttype,
                "trade_state": state,
                "settlement_total_fen": settle,
                "refund_id": rid,
                "out_refund_no": orn,
                "refund_fen": refund,
                "refund_status": rstate,
                "fee_fen": fee,
                "order_total_fen": order,
                "requested_refund_fen": req_refund,
            }
        )
    lines.append("总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额")
    total_settle = sum(r[6] for r in rows)
    total_refund = sum(r[9] for r in rows)
    total_fee = sum(r[11] for r in rows)
    total_order = sum(r[12] for r in rows)
    total_req = sum(r[13] for r in rows)
    summary = [str(len(rows)), yuan(total_settle), yuan(total_refund), "0.00", yuan(total_fee), yuan(total_order), yuan(total_req)]
    lines.append(",".join("`" + f for f in summary))
    text = "\r\n".join(lines) + "\r\n"
    return {
        "text": text,
        "sha1": hashlib.sha1(text.encode("utf-8")).hexdigest(),
        "rows": expected,
        "summary": {
            "total_count": len(rows),
            "settlement_total_fen": total_settle,
            "refund_total_fen": total_refund,
            "fee_total_fen": total_fee,
            "order_total_fen": total_order,
            "requested_refund_total_fen": total_req,
        },
    }


def certificates_vector(keys):
    """The body of GET /v3/certificates: the platform certificate encrypted with the API v3 key."""
    resource = encrypt_resource(keys, keys["platform_certificate_pem"], "certificate", "certificate")
    del resource["original_type"]
    body = {
        "data": [
            {
                "serial_no": keys["platform_serial_no"],
                "effective_time": "2024-01-01T08:00:00+08:00",
                "expire_time": "2036-01-01T08:00:00+08:00",
                "encrypt_certificate": resource,
            }
        ]
    }
    return {"body": json.dumps(body, separators=(",", ":"))}


def main():
    fresh = "--fresh-keys" in sys.argv[1:]
    if OUT.exists() and not fresh:
        keys = json.loads(OUT.read_text(encoding="utf-8"))["keys"]
    else:
        keys = make_keys()
    # Nonces in the vectors come from a generator seeded by the keys, so a re-run with the
    # same keys writes a byte-identical file.
    RNG.seed(hashlib.sha256(keys["api_v3_key"].encode("ascii")).digest())
    vectors = {
        "comment": "Made by generate.py with the Python cryptography package; throwaway test keys only.",
        "now": TIMESTAMP,
        "keys": keys,
        "requests": request_vectors(keys),
        "jsapi": jsapi_vector(keys),
        "responses": response_vectors(keys),
        "notifications": notification_vectors(keys),
        "aead": aead_vectors(keys),
        "bill": bill_vector(),
        "certificates": certificates_vector(keys),
    }
    OUT.write_text(json.dumps(vectors, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
