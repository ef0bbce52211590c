"""``device.cert_renew`` and ``device.log_bundle``: requests central answers itself, through
the forwarder's normal path (dedup by request id, stored reply), for kiosks and desks."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import os
import stat
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from fleet_support import FleetRig, RawClient, make_csr, rig_fixture  # noqa: F401
from pg_support import BOTH_ENGINES
from support import wait_until_async

from central.platform.errors import PlatformRejected
from yikatong.protocol.envelope import encode, new_envelope

# The store-level guarantees (seqs, versions, states) on both engines.
pytestmark = BOTH_ENGINES


async def cmd_result(rig: FleetRig, c: RawClient, dev: str, cid: str, state: str) -> None:
    await rig.send(c, dev, "result", "cmd.result", {"command_id": cid, "state": state})


def error_code(reply: dict[str, Any]) -> str:
    return "ok" if reply["status"] == "ok" else str(reply["error"]["code"])


async def test_cert_rotate_renews_and_revokes_the_old_certificate_once_confirmed(
        rig: FleetRig) -> None:
    old = await rig.enroll("SN-REN-1", "kiosk-n01")
    c = await rig.online(old)
    sent = await rig.fleet.send_command("kiosk-n01", "cert.rotate", {}, actor="tech")
    cid = sent["command_id"]
    await rig.next_on(c, "/down/cmd")
    await cmd_result(rig, c, "kiosk-n01", cid, "in_progress")

    # A CSR naming another device is refused (and stored as the final answer).
    foreign, _ = make_csr("kiosk-n99")
    reply = await rig.request(c, "kiosk-n01", "device.cert_renew",
                              {"csr": foreign, "command_id": cid})
    assert error_code(reply) == "rejected" and "bad_csr" in reply["error"]["message"]

    csr, key = make_csr("kiosk-n01")
    now = datetime.now(UTC)
    env = new_envelope("device.cert_renew", "kiosk-n01", {"csr": csr, "command_id": cid},
                       now=now, exp=now + timedelta(minutes=5))
    await asyncio.to_thread(c.publish, "ykt/v1/dev/kiosk-n01/up/req", encode(env))
    first = await rig.next_on(c, "/down/resp")
    assert first.corr == env.id and first.body["status"] == "ok"
    result = first.body["result"]
    cert = x509.load_pem_x509_certificate(result["cert"].encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "kiosk-n01"
    cert.verify_directly_issued_by(rig.fleet.ca.issuing)
    assert result["chain"] == rig.fleet.ca.chain_file.read_text()
    assert result["not_after"].endswith("Z")
    # The same request again (a lost reply): the same certificate, nothing issued anew.
    await asyncio.to_thread(c.publish, "ykt/v1/dev/kiosk-n01/up/req", encode(env))
    again = await rig.next_on(c, "/down/resp")
    assert again.body == first.body

    new = rig.write_identity("kiosk-n01", key, result["cert"], result["chain"])
    # Until the device confirms, the old certificate still works (never left without one).
    assert not rig.fleet.ca.is_revoked(int(old.serial))
    assert rig.fleet.device_detail("kiosk-n01")["cert"]["serial"] == new.serial
    await asyncio.to_thread(c.close)
    c2 = await rig.online(new, boot_seq=2)
    assert not rig.fleet.ca.is_revoked(int(old.serial))  # a birth is not the confirmation
    await cmd_result(rig, c2, "kiosk-n01", cid, "succeeded")
    await wait_until_async(lambda: rig.fleet.ca.is_revoked(int(old.serial)), 10)
    assert await rig.refused(old)
    assert not rig.fleet.ca.is_revoked(int(new.serial))
    assert rig.audits("fleet.cert_renew")[0]["command_id"] == cid
    assert rig.audits("fleet.cert_renew_confirmed")[0]["cert_serial"] == new.serial


async def test_central_not_the_device_decides_when_a_certificate_is_renewed(
        rig: FleetRig) -> None:
    old = await rig.enroll("SN-REN-2", "cashier-n02", role="cashier")
    c = await rig.online(old)
    csr, _ = make_csr("cashier-n02")
    # A (stolen) device asking for a fresh certificate on its own is refused.
    reply = await rig.request(c, "cashier-n02", "device.cert_renew", {"csr": csr})
    assert error_code(reply) == "rejected" and "unknown_command" in reply["error"]["message"]
    assert rig.audits("fleet.cert_renew") == []
    # Far from expiry nothing is sent; 20 days before it, central sends cert.rotate once.
    assert await rig.fleet.renew_due() == []
    rig.clock.advance((rig.fleet.section.cert_days - 20) * 86_400)
    assert await rig.fleet.renew_due() == ["cashier-n02"]
    cmd = await rig.next_on(c, "/down/cmd")
    assert cmd.body["name"] == "cert.rotate"
    assert await rig.fleet.renew_due() == []  # the rotation is open: not sent twice
    [sent] = rig.fleet.commands("cashier-n02")
    assert sent["created_by"] == "central" and sent["state"] == "queued"
    assert sent["command_id"] == cmd.body["command_id"]  # answered as in the test above


async def test_a_log_bundle_is_kept_for_its_logs_collect_command(rig: FleetRig) -> None:
    c = await rig.online(await rig.enroll("SN-LOG-1", "kiosk-l01"))
    other = await rig.online(await rig.enroll("SN-LOG-2", "kiosk-l02"))
    sent = await rig.fleet.send_command("kiosk-l01", "logs.collect", {"lines": 200},
                                        actor="tech")
    cid = sent["command_id"]
    text = "".join(f"2026-12-01T08:00:{i % 60:02d}Z info edge: line {i}\n" for i in range(200))
    data = gzip.compress(text.encode())
    bundle = {"command_id": cid, "lines": 200, "gzip_b64": base64.b64encode(data).decode()}

    # Another device cannot upload for this command; a bundle must be gzip.
    reply = await rig.request(other, "kiosk-l02", "device.log_bundle", bundle)
    assert error_code(reply) == "rejected" and "unknown_command" in reply["error"]["message"]
    reply = await rig.request(c, "kiosk-l01", "device.log_bundle",
                              {**bundle, "gzip_b64": base64.b64encode(b"plain").decode()})
    assert error_code(reply) == "rejected" and "bad_bundle" in reply["error"]["message"]
    reboot = await rig.fleet.send_command("kiosk-l01", "reboot", {}, actor="tech")
    reply = await rig.request(c, "kiosk-l01", "device.log_bundle",
                              {**bundle, "command_id": reboot["command_id"]})
    assert error_code(reply) == "rejected"
    assert rig.fleet.log_bundle_path(cid) is None

    reply = await rig.request(c, "kiosk-l01", "device.log_bundle", bundle)
    assert error_code(reply) == "ok"
    digest = hashlib.sha256(data).hexdigest()
    assert reply["result"] == {"size": len(data), "sha256": digest}
    path = rig.workdir / "fleet" / "logs" / "kiosk-l01" / f"{cid}.log.gz"
    assert path.read_bytes() == data and rig.fleet.log_bundle_path(cid) == path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert gzip.decompress(path.read_bytes()).decode() == text
    out = rig.fleet.command(cid)["output"]  # type: ignore[index]
    assert out["bundle_size"] == len(data) and out["bundle_sha256"] == digest
    assert rig.audits("fleet.log_bundle")[0]["sha256"] == digest
    # One bundle per command: the same again is answered the same, another never replaces it.
    reply = await rig.request(c, "kiosk-l01", "device.log_bundle", bundle)
    assert error_code(reply) == "ok" and reply["result"]["sha256"] == digest
    forged = gzip.compress(b"2026-12-01T08:00:00Z info edge: nothing happened\n")
    reply = await rig.request(c, "kiosk-l01", "device.log_bundle", {
        **bundle, "gzip_b64": base64.b64encode(forged).decode()})
    assert error_code(reply) == "rejected" and "already_uploaded" in reply["error"]["message"]
    assert path.read_bytes() == data
    # Once the command is over, nothing more is taken for it.
    await rig.send(c, "kiosk-l01", "result", "cmd.result", {"command_id": cid,
                                                           "state": "succeeded"})
    await wait_until_async(lambda: rig.fleet.command(cid)["state"] == "succeeded", 10)
    reply = await rig.request(c, "kiosk-l01", "device.log_bundle", bundle)
    assert error_code(reply) == "rejected" and "command_closed" in reply["error"]["message"]


async def test_a_rotation_gives_one_certificate_and_its_id_cannot_be_replayed(
        rig: FleetRig) -> None:
    """A stolen device holding the id of a cert.rotate cannot mint more certificates."""
    c = await rig.online(await rig.enroll("SN-REP-1", "kiosk-p01"))
    sent = await rig.fleet.send_command("kiosk-p01", "cert.rotate", {}, actor="tech")
    cid = sent["command_id"]
    csr, _ = make_csr("kiosk-p01")
    first = await rig.request(c, "kiosk-p01", "device.cert_renew",
                              {"csr": csr, "command_id": cid})
    assert error_code(first) == "ok"
    # The same key again (a new request id: its reply was lost): the same certificate.
    again = await rig.request(c, "kiosk-p01", "device.cert_renew",
                              {"csr": csr, "command_id": cid})
    assert error_code(again) == "ok" and again["result"]["cert"] == first["result"]["cert"]
    # Another key for the same command: refused.
    clone, _ = make_csr("kiosk-p01")
    reply = await rig.request(c, "kiosk-p01", "device.cert_renew",
                              {"csr": clone, "command_id": cid})
    assert error_code(reply) == "rejected" and "already_renewed" in reply["error"]["message"]
    # After the rotation is over (or past its exp) its id is worth nothing.
    await rig.send(c, "kiosk-p01", "result", "cmd.result", {"command_id": cid,
                                                           "state": "failed"})
    await wait_until_async(lambda: rig.fleet.command(cid)["state"] == "failed", 10)
    reply = await rig.request(c, "kiosk-p01", "device.cert_renew",
                              {"csr": clone, "command_id": cid})
    assert error_code(reply) == "rejected" and "command_closed" in reply["error"]["message"]
    assert len(rig.audits("fleet.cert_renew")) == 1
    # A device disabled (revoked) while its renewal waits in the writer gets nothing, even
    # for an open rotation: the check is inside the write, not only at the forwarder's door.
    open_cmd = await rig.fleet.send_command("kiosk-p01", "cert.rotate", {}, actor="tech")
    await rig.fleet.disable("kiosk-p01", actor="tech")
    now = datetime.now(UTC)
    env = new_envelope("device.cert_renew", "kiosk-p01",
                       {"csr": clone, "command_id": open_cmd["command_id"]}, now=now,
                       exp=now + timedelta(minutes=5))
    with pytest.raises(PlatformRejected, match="device_disabled"):
        await rig.store.write(lambda: rig.fleet.cert_renew_in_tx(env))


async def test_without_fleet_trust_the_requests_are_refused(rig: FleetRig) -> None:
    c = await rig.online(await rig.enroll("SN-OFF-1", "kiosk-o01"))
    rig.guard._local.clear()  # as if [fleet] were not configured
    csr, _ = make_csr("kiosk-o01")
    reply = await rig.request(c, "kiosk-o01", "device.cert_renew", {"csr": csr})
    assert error_code(reply) == "rejected" and "not_enabled" in reply["error"]["message"]


async def test_a_renewal_confirmed_while_central_was_down_is_finished_at_start(
        rig: FleetRig) -> None:
    old = await rig.enroll("SN-LEFT-1", "kiosk-x01")
    c = await rig.online(old)
    sent = await rig.fleet.send_command("kiosk-x01", "cert.rotate", {}, actor="tech")
    cid = sent["command_id"]
    csr, _ = make_csr("kiosk-x01")
    assert error_code(await rig.request(c, "kiosk-x01", "device.cert_renew",
                                        {"csr": csr, "command_id": cid})) == "ok"
    # Central stopped between recording "succeeded" and revoking the old certificate.
    K = rig.fleet.tables.FleetCommand
    await rig.store.write(lambda: K.update(state="succeeded").where(
        K.command_id == cid).execute())
    assert not rig.fleet.ca.is_revoked(int(old.serial))
    assert await rig.fleet.confirm_left_renewals() == 1
    assert rig.fleet.ca.is_revoked(int(old.serial))
    assert await rig.fleet.confirm_left_renewals() == 0  # done once
