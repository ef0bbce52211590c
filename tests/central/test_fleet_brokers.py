"""What each credential can reach, on the real brokers (docs/fleet-trust.md "Two brokers"):
the claim credential only its own two enrollment topics and never the device broker; a
device certificate only its own device topics; revoked and expired certificates nothing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from fleet_support import FleetRig, RawClient, make_csr, rig_fixture  # noqa: F401

from central.fleet.brokers import render_enroll_acl


def observer(rig: FleetRig, *, enroll: bool) -> RawClient:
    """A client with one of central's accounts, to see what actually got through."""
    if enroll:
        user, password = rig.fleet.enroll_broker.central_account()
        # The enrollment broker does not bind client id to username: any free id will do.
        return rig.track(RawClient("test-observer", port=rig.enroll_port, username=user,
                                   password=password, cafile=rig.chain))
    login = rig.registry.central_credentials("observer")
    return rig.track(RawClient("observer", port=rig.plain_port, username=login.username,
                               password=login.password))


async def payloads(c: RawClient, n: int) -> list[bytes]:
    """The next ``n`` payloads ``c`` gets that are not central's config messages."""
    out: list[bytes] = []
    while len(out) < n:
        msg = await asyncio.to_thread(c.get, 5)
        assert msg is not None, f"only {out}"
        if not msg.topic.endswith("/down/config"):
            out.append(bytes(msg.payload))
    return out


def test_the_enrollment_acl_gives_claim_its_own_two_topics_and_nothing_else() -> None:
    acl = render_enroll_acl("central-enroll-Ab12Cd34")
    lines = [ln for ln in acl.splitlines() if ln and not ln.startswith("#")]
    assert lines == ["pattern write ykt/v1/enroll/%c/csr", "pattern read ykt/v1/enroll/%c/cert",
                     "user central-enroll-Ab12Cd34", "topic readwrite ykt/v1/enroll/#"]


def test_the_shipped_enrollment_examples_match_the_renderers() -> None:
    root = Path(__file__).resolve().parents[2] / "config" / "mosquitto"
    assert (root / "enroll-acl.example").read_text() == render_enroll_acl(
        "central-enroll-Q2xv9TzL0pWaK7mN")
    conf = (root / "enroll-mosquitto.conf.example").read_text()
    assert "use_username_as_clientid false" in conf and "require_certificate false" in conf
    assert "allow_anonymous false" in conf and "persistence false" in conf
    assert "crlfile" in (root / "mosquitto.conf.example").read_text()


async def test_the_claim_credential_reaches_only_its_own_enrollment_topics(
        rig: FleetRig) -> None:
    conf = rig.fleet.enroll_broker.mosquitto.config_path.read_text()  # type: ignore[union-attr]
    assert "use_username_as_clientid false" in conf and "require_certificate false" in conf
    seen = observer(rig, enroll=True)
    assert await asyncio.to_thread(seen.connect)
    assert await asyncio.to_thread(seen.subscribe, "ykt/v1/enroll/#") == 1

    claim = rig.claim("SN-ACL-A")
    assert await asyncio.to_thread(claim.connect)
    # It may subscribe to anything (Mosquitto 2.0 grants the SUBSCRIBE and checks read
    # access per message), but it only ever gets its own answer topic.
    for topic in ("ykt/v1/enroll/SN-ACL-A/cert", "#", "ykt/v1/#", "ykt/v1/enroll/+/cert",
                  "ykt/v1/enroll/SN-ACL-B/cert", "ykt/v1/enroll/+/csr",
                  "ykt/v1/dev/kiosk-001/down/#", "$SYS/#"):
        await asyncio.to_thread(claim.subscribe, topic)

    # Publishing: only its own csr topic gets through (Mosquitto acks refused ones too).
    for topic in ("ykt/v1/dev/kiosk-001/up/req", "ykt/v1/enroll/SN-ACL-B/csr",
                  "ykt/v1/enroll/SN-ACL-A/cert", "ykt/v1/enroll/SN-ACL-B/cert"):
        await asyncio.to_thread(claim.publish, topic, b"forged")
    await asyncio.to_thread(claim.publish, "ykt/v1/enroll/SN-ACL-A/csr", b"mine")
    got = await asyncio.to_thread(seen.get, 5)
    assert got is not None and (got.topic, got.payload) == ("ykt/v1/enroll/SN-ACL-A/csr",
                                                            b"mine")
    assert await asyncio.to_thread(seen.get, 0.5) is None  # none of the forged ones

    # Of everything central sends, only its own answer reaches it.
    for topic in ("ykt/v1/enroll/SN-ACL-B/cert", "ykt/v1/enroll/SN-ACL-B/csr",
                  "ykt/v1/enroll/SN-ACL-A/csr", "ykt/v1/enroll/SN-ACL-A/cert"):
        await asyncio.to_thread(seen.publish, topic, topic.encode())
    mine = await asyncio.to_thread(claim.get, 5)
    assert mine is not None and mine.payload == b"ykt/v1/enroll/SN-ACL-A/cert"
    assert await asyncio.to_thread(claim.get, 0.5) is None

    # A wrong password is refused.
    wrong = rig.claim("SN-ACL-C", password="not-the-password")
    assert not await asyncio.to_thread(wrong.connect)


async def test_the_claim_credential_cannot_reach_the_device_broker(rig: FleetRig) -> None:
    password = rig.fleet.claim_bundle()["claim_password"]
    plain = rig.track(RawClient("SN-X-1", port=rig.plain_port, username="claim",
                                password=password))
    assert not await asyncio.to_thread(plain.connect)
    assert plain.connack in (5, 135)  # not authorized: no such account on that broker
    tls = rig.track(RawClient("SN-X-1", port=rig.tls_port, username="claim",
                              password=password, cafile=rig.chain))
    assert not await asyncio.to_thread(tls.connect)  # no client certificate: no TLS session


async def test_a_device_certificate_reaches_only_its_own_topics(rig: FleetRig) -> None:
    a_id = await rig.enroll("SN-DEV-A", "kiosk-a01")
    b_id = await rig.enroll("SN-DEV-B", "kiosk-b01")
    seen = observer(rig, enroll=False)
    assert await asyncio.to_thread(seen.connect)
    assert await asyncio.to_thread(seen.subscribe, "ykt/v1/dev/+/up/#") == 1
    b = await rig.online(b_id)
    a = await rig.online(a_id)

    # A cannot read B's commands, config or replies ...
    await asyncio.to_thread(a.subscribe, "ykt/v1/dev/kiosk-b01/down/#")
    await asyncio.to_thread(a.subscribe, "ykt/v1/dev/+/down/cmd")
    for kind in ("cmd", "resp"):
        await asyncio.to_thread(seen.publish, f"ykt/v1/dev/kiosk-b01/down/{kind}", b"for B")
    assert await payloads(b, 2) == [b"for B", b"for B"]
    while (extra := await asyncio.to_thread(a.get, 0.5)) is not None:
        assert extra.topic.startswith("ykt/v1/dev/kiosk-a01/"), extra.topic
    # ... nor speak as B; its own topics work.
    await asyncio.to_thread(a.publish, "ykt/v1/dev/kiosk-b01/up/req", b"as B")
    await asyncio.to_thread(a.publish, "ykt/v1/dev/kiosk-b01/up/result", b"as B")
    await asyncio.to_thread(a.publish, "ykt/v1/dev/kiosk-b01/state", b"as B")
    await asyncio.to_thread(a.publish, "ykt/v1/dev/kiosk-a01/up/event", b"as A")
    got = await asyncio.to_thread(seen.get, 5)
    assert got is not None and got.topic == "ykt/v1/dev/kiosk-a01/up/event"
    assert await asyncio.to_thread(seen.get, 0.5) is None

    # A connecting with B's client id is still A (the certificate names it): B stays on.
    thief = rig.device(a_id, client_id="kiosk-b01")
    assert await asyncio.to_thread(thief.connect)
    await asyncio.sleep(0.5)
    assert b.connected.is_set() and not b.disconnected.is_set()
    await asyncio.to_thread(thief.subscribe, "ykt/v1/dev/kiosk-b01/down/#")
    await asyncio.to_thread(seen.publish, "ykt/v1/dev/kiosk-b01/down/cmd", b"for B again")
    assert await payloads(b, 1) == [b"for B again"]
    assert await asyncio.to_thread(thief.get, 0.5) is None
    log = rig.broker.mosquitto.log_path.read_text()
    assert "as kiosk-a01" in log


async def test_revoked_and_expired_certificates_are_refused(rig: FleetRig) -> None:
    ident = await rig.enroll("SN-REV-1", "kiosk-r01")
    await rig.online(ident)
    detail = await rig.fleet.revoke("kiosk-r01", actor="admin-zhao")
    assert detail["cert"]["revoked"] and not detail["enabled"]
    assert rig.fleet.ca.is_revoked(int(ident.serial))
    assert await rig.refused(ident)
    [audit] = rig.audits("fleet.revoke")
    assert audit["actor"] == "admin-zhao" and audit["serials"] == ident.serial

    # A certificate of the fleet CA that has run out: refused as well.
    csr, key = make_csr("kiosk-e01")
    past = datetime.now(UTC) - timedelta(days=30)
    issued = rig.fleet.ca.issue_device(csr.encode(), "kiosk-e01", now=past, days=1)
    old = rig.write_identity("kiosk-e01", key, issued.pem.decode(),
                             rig.fleet.ca.chain_file.read_text())
    c = rig.device(old)
    assert not await asyncio.to_thread(c.connect)
    # The same key with a current certificate gets in (so it was the date).
    fresh = rig.fleet.ca.issue_device(csr.encode(), "kiosk-e01")
    ok = rig.write_identity("kiosk-e01", key, fresh.pem.decode(),
                            rig.fleet.ca.chain_file.read_text())
    good = rig.device(ok)
    assert await asyncio.to_thread(good.connect)


async def test_rotating_the_issuing_ca_keeps_every_device_and_revocation_working(
        rig: FleetRig) -> None:
    before = await rig.enroll("SN-CA-1", "kiosk-c01")
    old_issuer = rig.fleet.ca.issuing
    view = await rig.fleet.rotate_ca(actor="admin-zhao")
    assert view["issuing"]["serial"] != str(old_issuer.serial_number)
    assert [c["serial"] for c in view["retired"]] == [str(old_issuer.serial_number)]
    # The brokers' server certificate comes from the new issuing CA, both brokers reloaded:
    # a device enrolled now gets a certificate of the new CA and connects with it.
    after = await rig.enroll("SN-CA-2", "kiosk-c02")
    cert = x509.load_pem_x509_certificate(after.cert.read_bytes())
    cert.verify_directly_issued_by(rig.fleet.ca.issuing)
    await rig.online(after)
    # A device holding a certificate of the old CA (and the old chain) still gets in.
    c = rig.device(before)
    assert await asyncio.to_thread(c.connect), "the old CA's certificate was refused"
    await asyncio.to_thread(c.close)
    # ... and the retired CA still revokes: its CRL is signed and read.
    await rig.fleet.revoke("kiosk-c01", actor="admin-zhao")
    assert await rig.refused(before)
    again = rig.device(after, client_id="kiosk-c02")
    assert await asyncio.to_thread(again.connect)
    [audit] = rig.audits("fleet.ca_rotate")
    assert audit["actor"] == "admin-zhao" and audit["old_issuing"] == str(
        old_issuer.serial_number)
