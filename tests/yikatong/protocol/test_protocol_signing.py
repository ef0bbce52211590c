"""Ed25519 signing: RFC 8032 vector, checked-in signed envelope, keys, replay guard."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

from yikatong.protocol.envelope import Envelope, decode, encode, new_envelope
from yikatong.protocol.errors import BadKey, BadSignature, BadTopic, Expired, SequenceReplay
from yikatong.protocol.signing import (
    SeqGuard,
    b64url_decode,
    b64url_encode,
    key_id,
    private_key_from_hex,
    private_key_from_pem,
    private_key_to_hex,
    private_key_to_pem,
    public_key_from_hex,
    public_key_from_pem,
    public_key_to_hex,
    public_key_to_pem,
    sign,
    verify,
    verify_any,
    verify_command,
)

FIXTURES = Path(__file__).parent / "fixtures"
VECTOR = json.loads((FIXTURES / "ed25519_rfc8032_test1.json").read_text())
NOW = datetime(2024, 5, 1, 8, 30, 0, 123000, tzinfo=UTC)
KEY = private_key_from_hex(VECTOR["secret_key"])
PUB = public_key_from_hex(VECTOR["public_key"])
OTHER = private_key_from_hex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")


def signed_fixture() -> bytes:
    return (FIXTURES / "envelope_cmd_signed.json").read_bytes()


def test_rfc8032_test1_through_key_helpers() -> None:
    assert public_key_to_hex(KEY.public_key()) == VECTOR["public_key"]
    assert private_key_to_hex(KEY) == VECTOR["secret_key"]
    message = bytes.fromhex(VECTOR["message"])
    assert KEY.sign(message).hex() == VECTOR["signature"]
    PUB.verify(bytes.fromhex(VECTOR["signature"]), message)


def test_signing_the_fixture_envelope_reproduces_checked_in_bytes() -> None:
    signed = decode(signed_fixture())
    unsigned = signed.model_copy(update={"sig": None})
    assert encode(sign(unsigned, KEY)) == signed_fixture()


def test_checked_in_signature_verifies() -> None:
    verify(decode(signed_fixture()), PUB)


def test_tampered_body_fails() -> None:
    data = signed_fixture().replace("测试打印".encode(), "恶意命令".encode())
    with pytest.raises(BadSignature) as ei:
        verify(decode(data), PUB)
    assert ei.value.reason == "mismatch"
    assert ei.value.reply_code == "unauthorized"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b'"seq":42', b'"seq":43'),
        (b'"dev":"kiosk-0001"', b'"dev":"kiosk-0002"'),
        (b'"exp":"2024-05-01T08:40', b'"exp":"2024-05-01T09:40'),
    ],
)
def test_tampered_envelope_fields_fail(old: bytes, new: bytes) -> None:
    data = signed_fixture().replace(old, new)
    assert data != signed_fixture()
    with pytest.raises(BadSignature):
        verify(decode(data), PUB)


def test_wrong_key_fails() -> None:
    with pytest.raises(BadSignature, match="does not verify"):
        verify(decode(signed_fixture()), OTHER.public_key())


def test_missing_and_malformed_signatures() -> None:
    env = decode(signed_fixture())
    with pytest.raises(BadSignature) as ei:
        verify(env.model_copy(update={"sig": None}), PUB)
    assert ei.value.reason == "missing"
    assert env.sig is not None
    # Flip the last character's unused low bits: decodes to the same bytes, not canonical.
    last = env.sig[-1]
    alt = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = alt[alt.index(last) ^ 1]
    with pytest.raises(BadSignature) as ei:
        verify(env.model_copy(update={"sig": env.sig[:-1] + twin}), PUB)
    assert ei.value.reason == "malformed"


def test_signature_survives_non_canonical_transport() -> None:
    pretty = json.dumps(json.loads(signed_fixture()), indent=1, ensure_ascii=True).encode()
    verify(decode(pretty), PUB)


def test_b64url() -> None:
    for n in range(0, 70):
        data = bytes(range(n))
        text = b64url_encode(data)
        assert "=" not in text and "+" not in text and "/" not in text
        assert b64url_decode(text) == data
    for bad in ("a", "a===", "ab+/", "ab=c"):
        with pytest.raises(ValueError):
            b64url_decode(bad)


def test_verify_any_supports_key_rotation() -> None:
    env = decode(signed_fixture())
    assert verify_any(env, [OTHER.public_key(), PUB]) is PUB
    with pytest.raises(BadSignature, match=r"does not verify"):
        verify_any(env, [OTHER.public_key()])
    with pytest.raises(BadSignature) as ei:
        verify_any(env, [])
    assert ei.value.reason == "no_keys"


# --------------------------------------------------------------------------- key helpers


def test_pem_round_trips_plain_and_encrypted() -> None:
    assert (
        private_key_to_hex(private_key_from_pem(private_key_to_pem(KEY))) == (VECTOR["secret_key"])
    )
    enc = private_key_to_pem(KEY, password=b"s3cret")
    assert b"ENCRYPTED" in enc
    assert private_key_to_hex(private_key_from_pem(enc, b"s3cret")) == VECTOR["secret_key"]
    with pytest.raises(BadKey):
        private_key_from_pem(enc, b"wrong")
    with pytest.raises(BadKey):
        private_key_from_pem(enc)
    assert public_key_to_hex(public_key_from_pem(public_key_to_pem(PUB))) == VECTOR["public_key"]


def test_pem_of_another_algorithm_is_refused() -> None:
    ec = generate_private_key(SECP256R1())
    pem = ec.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(BadKey, match="not Ed25519"):
        private_key_from_pem(pem)
    pub = ec.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(BadKey, match="not Ed25519"):
        public_key_from_pem(pub)
    with pytest.raises(BadKey):
        public_key_from_pem(b"-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----\n")


@pytest.mark.parametrize("bad", ["", "zz" * 32, "00" * 31, "00" * 33])
def test_bad_hex_keys(bad: str) -> None:
    with pytest.raises(BadKey):
        private_key_from_hex(bad)
    with pytest.raises(BadKey):
        public_key_from_hex(bad)


def test_key_id_is_stable_fingerprint() -> None:
    assert key_id(PUB) == key_id(public_key_from_hex(VECTOR["public_key"]))
    assert key_id(PUB) != key_id(OTHER.public_key())
    assert len(key_id(PUB)) == 16


# --------------------------------------------------------------------------- replay guard


def cmd(seq: int | None, *, exp_in: timedelta | None = timedelta(minutes=5)) -> Envelope:
    env = new_envelope(
        "cmd.reboot",
        "kiosk-0001",
        {},
        now=NOW,
        seq=seq,
        exp=NOW + exp_in if exp_in is not None else None,
    )
    return sign(env, KEY)


def test_seq_guard_accepts_increasing_only() -> None:
    guard = SeqGuard()
    assert guard.accept(cmd(5), NOW) == 5
    assert guard.last_seq == 5
    with pytest.raises(SequenceReplay) as ei:
        guard.accept(cmd(5), NOW)
    assert (ei.value.seq, ei.value.last_seq) == (5, 5)
    with pytest.raises(SequenceReplay):
        guard.accept(cmd(4), NOW)
    assert guard.accept(cmd(9), NOW) == 9  # gaps are fine
    assert guard.last_seq == 9


def test_seq_guard_resumes_from_persisted_value() -> None:
    guard = SeqGuard(last_seq=100)
    with pytest.raises(SequenceReplay):
        guard.check(cmd(100), NOW)
    assert guard.check(cmd(101), NOW) == 101
    assert guard.last_seq == 100  # check() does not move the guard


def test_seq_guard_refuses_missing_seq_and_expired() -> None:
    guard = SeqGuard()
    with pytest.raises(SequenceReplay, match="missing"):
        guard.accept(cmd(None), NOW)
    with pytest.raises(Expired):
        guard.accept(cmd(1), NOW + timedelta(minutes=6))
    assert guard.last_seq is None  # a refused message does not move the guard
    assert guard.accept(cmd(1, exp_in=None), NOW + timedelta(days=1)) == 1


def test_verify_command_order_of_checks() -> None:
    guard = SeqGuard(last_seq=10)
    good = cmd(11)
    # An unsigned (or forged) message with a huge seq must not move the guard.
    forged = good.model_copy(update={"seq": 1_000_000})
    with pytest.raises(BadSignature):
        verify_command(forged, PUB, guard, dev="kiosk-0001", now=NOW)
    assert guard.last_seq == 10
    with pytest.raises(BadTopic, match="another device"):
        verify_command(good, PUB, guard, dev="kiosk-0002", now=NOW)
    assert verify_command(good, [OTHER.public_key(), PUB], guard, dev="kiosk-0001", now=NOW) == 11
    with pytest.raises(SequenceReplay):
        verify_command(good, PUB, guard, dev="kiosk-0001", now=NOW)
