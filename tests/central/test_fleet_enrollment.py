"""Enrollment by claim (docs/fleet-trust.md), end to end over two real Mosquittos: a device
with the claim credential asks with its CSR, gets a pairing code, is approved by a
technician and then connects to the device broker with mutual TLS as itself."""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from fleet_support import FleetRig, RawClient, csr_envelope, make_csr, rig_fixture  # noqa: F401
from pg_support import BOTH_ENGINES
from support import wait_until_async

from central.fleet import FleetError
from yikatong.protocol.envelope import Envelope
from yikatong.protocol.fleet import PAIRING_CODE_RE, ConfigDesired, EnrollStatus
from yikatong.protocol.signing import public_key_from_pem, verify

# The store-level guarantees (seqs, versions, states) on both engines.
pytestmark = BOTH_ENGINES


async def ask(rig: FleetRig, serial: str, csr: str, *, client: RawClient | None = None,
              **facts: object) -> tuple[Envelope, RawClient]:
    """Send ``enroll.csr`` as ``serial`` with the claim credential; return the answer."""
    c = client or rig.claim(serial)
    if client is None:
        assert await asyncio.to_thread(c.connect)
        assert await asyncio.to_thread(c.subscribe, f"ykt/v1/enroll/{serial}/cert") == 1
    await asyncio.to_thread(c.publish, f"ykt/v1/enroll/{serial}/csr",
                            csr_envelope(serial, csr, **facts))
    answer = await asyncio.to_thread(c.get_env, 10)
    assert answer is not None, "no answer from central"
    EnrollStatus.model_validate(answer.body)
    return answer, c


async def test_a_device_enrolls_by_claim_and_then_connects_as_itself(rig: FleetRig) -> None:
    serial = "10000000abcdef01"
    csr, key = make_csr(serial)
    pending, c = await ask(rig, serial, csr, sam_terminal="0123456789AB")
    body = pending.body
    assert body["status"] == "pending" and re.fullmatch(PAIRING_CODE_RE, body["code"])
    signing_pub = public_key_from_pem(rig.fleet.signer.public_pem)
    verify(pending, signing_pub)  # answers are signed by central too
    [listed] = rig.fleet.enrollments("pending")
    assert listed["code"] == body["code"] and listed["serial"] == serial
    assert listed["facts"]["sam_terminal"] == "0123456789AB" and not listed["duplicate"]
    assert listed["reenroll_of"] is None and listed["expires_at"].endswith("Z")

    done = await rig.fleet.approve(body["code"].lower(), device_id="kiosk-003", role="kiosk",
                                   site="门诊楼", actor="tech-wang")
    assert done["status"] == "approved" and done["device_id"] == "kiosk-003"
    assert done["decided_by"] == "tech-wang" and done["decided_at"] is not None
    approved = await asyncio.to_thread(c.get_env, 10)
    assert approved is not None
    a = approved.body
    assert a["status"] == "approved" and a["device_id"] == "kiosk-003"
    assert (a["role"], a["site"]) == ("kiosk", "门诊楼")
    # The certificate names the device (not the serial) and chains to the fleet CA.
    cert = x509.load_pem_x509_certificate(a["cert"].encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "kiosk-003"
    cert.verify_directly_issued_by(rig.fleet.ca.issuing)
    assert a["chain"] == rig.fleet.ca.chain_file.read_text()
    # The first config is signed by central's key, for this device, with a seq and exp.
    cfg = Envelope.model_validate(a["config"])
    verify(cfg, signing_pub)
    assert cfg.type == "config.desired" and cfg.dev == "kiosk-003" and cfg.seq and cfg.exp
    assert ConfigDesired.model_validate(cfg.body).version == 1

    # Registered, with site and serial; no password was ever written for it.
    ident = rig.write_identity("kiosk-003", key, a["cert"], a["chain"])
    assert "kiosk-003" not in rig.registry.password_file.read_text()
    d = rig.fleet.device_detail("kiosk-003")
    assert (d["role"], d["site"], d["serial"], d["enabled"]) == ("kiosk", "门诊楼", serial, True)
    assert d["cert"] == {"serial": ident.serial, "not_after": d["cert"]["not_after"],
                         "revoked": False}
    assert d["desired"]["version"] == 1 and not d["in_sync"]

    # It leaves the enrollment broker and connects to the device broker as itself.
    dev = await rig.online(ident)
    retained = await rig.next_on(dev, "/down/config")
    assert retained.id == cfg.id  # the same signed config, retained on its topic
    assert rig.store.device("kiosk-003").online  # type: ignore[union-attr]
    [audit] = rig.audits("fleet.enroll_approve")
    assert audit["actor"] == "tech-wang" and audit["dev"] == "kiosk-003"
    # The claim bundle is what a device image needs.
    bundle = rig.fleet.claim_bundle()
    assert bundle["ca_pem"] == a["chain"] and bundle["enroll_port"] == rig.enroll_port
    assert bundle["signing_pub_pem"] == rig.fleet.signer.public_pem.decode()
    for name in ("claim.password", "signing.key"):
        assert stat.S_IMODE(os.stat(rig.workdir / "fleet" / name).st_mode) == 0o600


async def test_same_key_is_the_same_request_and_a_second_key_marks_both_duplicate(
        rig: FleetRig) -> None:
    serial = "SN-DUP-0001"
    csr, _ = make_csr(serial)
    first, c = await ask(rig, serial, csr)
    again, _ = await ask(rig, serial, csr, client=c)
    assert again.body["code"] == first.body["code"]
    assert again.body["request_id"] == first.body["request_id"]
    assert len(rig.fleet.enrollments()) == 1 and not rig.fleet.enrollments()[0]["duplicate"]
    # A clone (another key, same serial) asks: both are shown as duplicate.
    clone_csr, _ = make_csr(serial)
    clone, _ = await ask(rig, serial, clone_csr, client=c)
    assert clone.body["code"] != first.body["code"]
    both = rig.fleet.enrollments("pending")
    assert len(both) == 2 and all(e["duplicate"] for e in both)
    # Approving one closes the other.
    await rig.fleet.approve(first.body["code"], device_id="kiosk-010", role="kiosk",
                            site="急诊楼", actor="tech-li")
    by_code = {e["code"]: e for e in rig.fleet.enrollments()}
    assert by_code[first.body["code"]]["status"] == "approved"
    assert by_code[clone.body["code"]]["status"] == "rejected"
    with pytest.raises(FleetError) as e:
        await rig.fleet.approve(clone.body["code"], device_id="kiosk-011", role="kiosk",
                                site="急诊楼", actor="tech-li")
    assert (e.value.status, e.value.code) == (409, "already_decided")


async def test_rejected_and_expired_requests(rig: FleetRig) -> None:
    serial = "SN-REJ-0001"
    csr, _ = make_csr(serial)
    pending, c = await ask(rig, serial, csr)
    await asyncio.to_thread(c.get_env, 0.2)
    done = await rig.fleet.reject(pending.body["code"], reason="unknown hardware",
                                  actor="tech-wang")
    assert done["status"] == "rejected" and done["reason"] == "unknown hardware"
    told = await asyncio.to_thread(c.get_env, 10)
    assert told is not None and told.body["status"] == "rejected"
    # Asking again with the same key gets the same answer.
    again, _ = await ask(rig, serial, csr, client=c)
    assert again.body["status"] == "rejected"
    assert rig.audits("fleet.enroll_reject")[0]["actor"] == "tech-wang"

    # Another device's request runs out.
    serial2 = "SN-EXP-0002"
    csr2, _ = make_csr(serial2)
    old, c2 = await ask(rig, serial2, csr2)
    rig.clock.advance(rig.fleet.section.enroll_ttl_s + 1)
    assert rig.fleet.enrollments("expired")[0]["code"] == old.body["code"]
    with pytest.raises(FleetError) as e:
        await rig.fleet.approve(old.body["code"], device_id="kiosk-020", role="kiosk",
                                site="门诊楼", actor="tech-wang")
    assert (e.value.status, e.value.code) == (409, "already_decided")
    expired, _ = await ask(rig, serial2, csr2, client=c2)
    assert expired.body["status"] == "expired"
    # Told once; asking again starts a new request with a new code.
    fresh, _ = await ask(rig, serial2, csr2, client=c2)
    assert fresh.body["status"] == "pending" and fresh.body["code"] != old.body["code"]


async def test_re_enrollment_of_a_serial_keeps_its_name_and_revokes_the_old_certificate(
        rig: FleetRig) -> None:
    serial = "SN-RE-0001"
    first = await rig.enroll(serial, "kiosk-030")
    # The device was re-imaged: a new key, the same serial.
    csr, key = make_csr(serial)
    pending, c = await ask(rig, serial, csr)
    [req] = rig.fleet.enrollments("pending")
    assert req["reenroll_of"] == "kiosk-030"
    # Another serial may not take the name ...
    other_csr, _ = make_csr("SN-OTHER-01")
    other, _ = await ask(rig, "SN-OTHER-01", other_csr)
    with pytest.raises(FleetError) as e:
        await rig.fleet.approve(other.body["code"], device_id="kiosk-030", role="kiosk",
                                site="门诊楼", actor="tech-wang")
    assert (e.value.status, e.value.code) == (409, "name_taken")
    # ... the same serial may.
    await rig.fleet.approve(pending.body["code"], device_id="kiosk-030", role="kiosk",
                            site="门诊楼", actor="tech-wang")
    answer = await asyncio.to_thread(c.get_env, 10)
    assert answer is not None and answer.body["status"] == "approved"
    second = rig.write_identity("kiosk-030", key, answer.body["cert"], answer.body["chain"])
    assert rig.fleet.ca.is_revoked(int(first.serial))
    assert not rig.fleet.ca.is_revoked(int(second.serial))
    assert rig.fleet.device_detail("kiosk-030")["cert"]["serial"] == second.serial
    await rig.online(second)
    # The old certificate no longer gets in (the broker re-read the CRL).
    assert await rig.refused(first)


async def test_bad_names_codes_and_requests_are_refused(rig: FleetRig) -> None:
    serial = "SN-BAD-0001"
    csr, _ = make_csr(serial)
    pending, c = await ask(rig, serial, csr)
    code = pending.body["code"]
    for dev, why in (("Kiosk_1", "invalid_device_id"), ("central", "invalid_device_id"),
                     ("-x1", "invalid_device_id")):
        with pytest.raises(FleetError) as e:
            await rig.fleet.approve(code, device_id=dev, role="kiosk", site="A",
                                    actor="tech")
        assert (e.value.status, e.value.code) == (422, why)
    with pytest.raises(FleetError) as e:
        await rig.fleet.approve(code, device_id="kiosk-040", role="robot", site="A",
                                actor="tech")
    assert e.value.status == 422
    with pytest.raises(FleetError) as e:
        await rig.fleet.approve("ZZZZ-ZZZZ", device_id="kiosk-040", role="kiosk", site="A",
                                actor="tech")
    assert (e.value.status, e.value.code) == (404, "unknown_code")
    with pytest.raises(FleetError) as e:
        await rig.fleet.approve("not a code", device_id="kiosk-040", role="kiosk", site="A",
                                actor="tech")
    assert e.value.status == 404
    assert rig.fleet.enrollments("pending")[0]["status"] == "pending"  # nothing changed
    with pytest.raises(FleetError) as e:
        rig.fleet.enrollments("weird")
    assert e.value.status == 422

    # A CSR naming another serial, or an RSA key: refused, nothing recorded.
    wrong_cn, _ = make_csr("SN-SOMEONE-ELSE")
    answer, _ = await ask(rig, serial, wrong_cn, client=c)
    assert answer.body["status"] == "rejected" and "serial" in answer.body["message"]
    rsa_csr, _ = make_csr(serial, rsa.generate_private_key(65537, 2048))
    answer, _ = await ask(rig, serial, rsa_csr, client=c)
    assert answer.body["status"] == "rejected" and "P-256" in answer.body["message"]
    # Garbage gets no answer at all.
    await asyncio.to_thread(c.publish, f"ykt/v1/enroll/{serial}/csr", b"{not json")
    assert await asyncio.to_thread(c.get, 0.5) is None
    assert len(rig.fleet.enrollments()) == 1
    await wait_until_async(lambda: rig.fleet.stats["enroll_invalid"] >= 3, 5)
    assert json.dumps(rig.fleet.enrollments())  # JSON-able


async def test_a_message_for_another_serial_in_the_body_is_ignored(rig: FleetRig) -> None:
    c = rig.claim("SN-TOPIC-01")
    assert await asyncio.to_thread(c.connect)
    # The body says another serial than the topic (and the client id): dropped.
    payload = csr_envelope("SN-TOPIC-02", make_csr("SN-TOPIC-02")[0])
    await asyncio.to_thread(c.publish, "ykt/v1/enroll/SN-TOPIC-01/csr", payload)
    await wait_until_async(lambda: rig.fleet.stats["enroll_invalid"] >= 1, 5)
    assert rig.fleet.enrollments() == []


async def test_open_requests_are_capped_so_a_leaked_claim_cannot_flood_the_list(
        rig: FleetRig) -> None:
    rig.fleet.section = rig.fleet.section.model_copy(update={"max_open_enrollments": 2})
    csr1, _ = make_csr("SN-CAP-0001")
    first, c1 = await ask(rig, "SN-CAP-0001", csr1)
    await ask(rig, "SN-CAP-0002", make_csr("SN-CAP-0002")[0])
    # The third invented serial gets no answer and no row; it would ask again later.
    third = rig.claim("SN-CAP-0003")
    assert await asyncio.to_thread(third.connect)
    assert await asyncio.to_thread(third.subscribe, "ykt/v1/enroll/SN-CAP-0003/cert") == 1
    csr3, _ = make_csr("SN-CAP-0003")
    await asyncio.to_thread(third.publish, "ykt/v1/enroll/SN-CAP-0003/csr",
                            csr_envelope("SN-CAP-0003", csr3))
    assert await asyncio.to_thread(third.get_env, 3) is None
    assert rig.fleet.stats["enroll_capped"] == 1
    assert len(rig.fleet.enrollments("pending")) == 2
    # A device already waiting still gets its code when it asks again.
    again, _ = await ask(rig, "SN-CAP-0001", csr1, client=c1)
    assert again.body["code"] == first.body["code"]
    # Once a technician decides one, the next request is taken.
    await rig.fleet.reject(first.body["code"], reason="not ours", actor="tech")
    await asyncio.to_thread(third.publish, "ykt/v1/enroll/SN-CAP-0003/csr",
                            csr_envelope("SN-CAP-0003", csr3))
    answer = await asyncio.to_thread(third.get_env, 10)
    assert answer is not None and answer.body["status"] == "pending"


async def test_an_approved_device_asking_again_gets_its_certificate_and_a_fresh_config(
        rig: FleetRig) -> None:
    """A power cut after it recorded the config's seq but before it wrote its identity, or a
    device switched off past the config's exp: the stored approval with a re-signed config."""
    serial = "SN-AGAIN-001"
    csr, _ = make_csr(serial)
    pending, c = await ask(rig, serial, csr)
    await rig.fleet.approve(pending.body["code"], device_id="kiosk-031", role="kiosk",
                            site="门诊楼", actor="tech-wang")
    first = await asyncio.to_thread(c.get_env, 10)
    assert first is not None and first.body["status"] == "approved"
    rig.clock.advance(rig.fleet.section.config_exp_s + 60)  # off for longer than exp
    again, _ = await ask(rig, serial, csr, client=c)
    assert again.body["status"] == "approved"
    assert again.body["cert"] == first.body["cert"]
    old_cfg, new_cfg = first.body["config"], again.body["config"]
    assert new_cfg["seq"] > old_cfg["seq"] and new_cfg["exp"] > old_cfg["exp"]
    assert new_cfg["body"] == old_cfg["body"]  # the same settings, signed anew
    verify(Envelope.model_validate(new_cfg), public_key_from_pem(rig.fleet.signer.public_pem))
