"""The private pcscd's virtual reader ports are reachable on loopback only."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from edge.devices.card.sim.cardos import HealthCardSim
from edge.devices.card.sim.pcscd import PcscDaemon, group_members, listening_sockets
from edge.devices.card.sim.vpcd import VirtualCardSlot

pytestmark = pytest.mark.stack


def _port_listeners(pcscd: PcscDaemon) -> set[tuple[str, int]]:
    return {s for s in listening_sockets() if s[1] in (pcscd.patient_port, pcscd.sam_port)}


def _other_addresses() -> list[str]:
    """This host's non-loopback addresses (``hostname -I``)."""
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5,
                             check=False)
    except OSError:
        return []
    return [a for a in out.stdout.split() if not a.startswith(("127.", "::1"))]


def test_both_ports_listen_on_127_0_0_1_only(pcscd: PcscDaemon) -> None:
    assert _port_listeners(pcscd) == {("127.0.0.1", pcscd.patient_port),
                                      ("127.0.0.1", pcscd.sam_port)}
    # vpcd's own wildcard listeners exist, but in pcscd's private network namespace.
    pid = pcscd.pid
    assert pid is not None
    assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    inside = listening_sockets(f"/proc/{pid}/net")
    assert {("0.0.0.0", pcscd.patient_port), ("0.0.0.0", pcscd.sam_port)} <= inside


def test_other_interfaces_cannot_reach_the_readers(pcscd: PcscDaemon) -> None:
    addresses = _other_addresses()
    if not addresses:
        pytest.skip("this host has no non-loopback address")
    for address in addresses:
        for port in (pcscd.patient_port, pcscd.sam_port):
            with pytest.raises(OSError):
                socket.create_connection((address, port), timeout=2).close()


class _AtrSpy:
    """A card that records when vpcd asks for its ATR (pcscd polls presence that way)."""

    def __init__(self, card: HealthCardSim) -> None:
        self._card = card
        self.asked = threading.Event()

    @property
    def atr(self) -> bytes:
        self.asked.set()
        return self._card.atr

    def process_apdu(self, apdu: bytes) -> bytes:
        return self._card.process_apdu(apdu)


def _insert_and_see_vpcd_answer(pcscd: PcscDaemon) -> None:
    card = _AtrSpy(HealthCardSim.from_holder(
        name="张三", sex="1", ethnicity="01", birth_date="19800101",
        id_number="110101198001011234", card_number="H11010119800101001"))
    slot = VirtualCardSlot(pcscd.patient_port)
    try:
        slot.insert(card)
        # vpcd, inside the namespace, reached the card through both relays.
        assert card.asked.wait(10)
    finally:
        slot.remove()


def test_a_card_still_goes_in_from_the_host_also_after_a_restart(pcscd: PcscDaemon) -> None:
    _insert_and_see_vpcd_answer(pcscd)
    pcscd.restart()
    assert _port_listeners(pcscd) == {("127.0.0.1", pcscd.patient_port),
                                      ("127.0.0.1", pcscd.sam_port)}
    _insert_and_see_vpcd_answer(pcscd)


def test_stop_leaves_no_relay_or_listener_behind(tmp_path: Path) -> None:
    from edge.devices.card.sim.pcscd import free_port_pair

    daemon = PcscDaemon(tmp_path / "p", free_port_pair())
    daemon.start()
    pgid = daemon.pid
    daemon.stop()
    assert _port_listeners(daemon) == set()
    assert pgid is not None and group_members(pgid) == set()


def test_listening_sockets_reads_v4_and_v6_addresses(tmp_path: Path) -> None:
    header = "  sl  local_address rem_address   st\n"
    (tmp_path / "tcp").write_text(
        header
        + "   0: 0100007F:C37D 00000000:0000 0A 00000000:00000000\n"
        + "   1: 00000000:C37E 00000000:0000 0A 00000000:00000000\n"
        + "   2: 0100007F:C37F 0100007F:1234 01 00000000:00000000\n")  # established: not listed
    (tmp_path / "tcp6").write_text(
        header
        + "   0: 00000000000000000000000001000000:C380 00000000:0000 0A 0\n"
        + "   1: 00000000000000000000000000000000:C381 00000000:0000 0A 0\n")
    assert listening_sockets(tmp_path) == {("127.0.0.1", 0xC37D), ("0.0.0.0", 0xC37E),
                                           ("::1", 0xC380), ("::", 0xC381)}
