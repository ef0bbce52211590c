"""Benchmark: ``CardSession.read_identity()`` vs raw pyscard transmits of the same APDUs.

Starts a private pcscd with vpcd (needs root or CAP_SYS_ADMIN for ``unshare -m``), puts the
card and SAM simulators in the two slots, records the APDUs one ``read_identity()`` sends,
then times N reads through our stack against N raw ``SCardTransmit`` replays of the same
list (the card's challenge is fixed so the replayed EXTERNAL AUTHENTICATE stays valid).
Both sides connect to the card once per read; the SAM is opened once, as in the daemon.

    .venv/bin/python bench/card_read.py [-n 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from smartcard import scard as s  # importing does not contact pcscd; calls do

from edge.devices.card.session import CardSession, InProcessTransport, PyscardTransport, SamSession
from edge.devices.card.sim.cardos import HealthCardSim
from edge.devices.card.sim.pcscd import PcscDaemon, free_port_pair
from edge.devices.card.sim.sam import SamSim
from edge.devices.card.sim.vpcd import VirtualCardSlot

PIN = "123456"


class Recording:
    """Transport wrapper that records every APDU sent."""

    def __init__(self, inner: PyscardTransport, log: list[tuple[str, bytes]], side: str) -> None:
        self.inner, self.log, self.side = inner, log, side

    @property
    def atr(self) -> bytes:
        return self.inner.atr

    @property
    def reader(self) -> str | None:
        return self.inner.reader

    def transmit(self, apdu: bytes) -> bytes:
        self.log.append((self.side, apdu))
        return self.inner.transmit(apdu)

    def close(self) -> None:
        self.inner.close()


def wait_present(reader: str, timeout: float = 5.0) -> None:
    hr, ctx = s.SCardEstablishContext(s.SCARD_SCOPE_USER)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            hr, res = s.SCardGetStatusChange(ctx, 0, [(reader, s.SCARD_STATE_UNAWARE)])
            if hr == s.SCARD_S_SUCCESS and res[0][1] & s.SCARD_STATE_PRESENT:
                return
            time.sleep(0.02)
    finally:
        s.SCardReleaseContext(ctx)
    raise SystemExit(f"{reader}: no card after {timeout}s")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=200, help="reads per variant")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        daemon = PcscDaemon(Path(tmp), free_port_pair())
        daemon.start()
        os.environ.update(daemon.env)  # before pyscard's first call
        patient, sam_slot = VirtualCardSlot(daemon.patient_port), VirtualCardSlot(daemon.sam_port)
        try:
            card = HealthCardSim.from_holder(rng=lambda n: bytes(range(n)))
            patient.insert(card)
            sam_slot.insert(SamSim(PIN))
            wait_present(daemon.patient_reader)
            wait_present(daemon.sam_reader)
            log: list[tuple[str, bytes]] = []
            sam = SamSession(Recording(PyscardTransport(daemon.sam_reader), log, "sam"), PIN)
            sam.open()
            log.clear()
            tr = Recording(PyscardTransport(daemon.patient_reader), log, "card")
            session = CardSession(tr, sam)
            session.read_identity()
            tr.close()
            apdus = list(log)

            ours: list[float] = []
            for _ in range(args.n):
                t = time.perf_counter()
                transport = PyscardTransport(daemon.patient_reader)
                CardSession(transport, sam).read_identity()
                transport.close()
                ours.append(time.perf_counter() - t)

            sam.close()  # our SAM session holds the SAM exclusively
            hr, ctx = s.SCardEstablishContext(s.SCARD_SCOPE_USER)
            proto = s.SCARD_PROTOCOL_T0 | s.SCARD_PROTOCOL_T1
            hr, hsam, psam = s.SCardConnect(ctx, daemon.sam_reader, s.SCARD_SHARE_SHARED, proto)
            if hr != s.SCARD_S_SUCCESS:
                raise SystemExit(f"SAM connect failed: {hr:#x}")
            for setup in ("0020000003" + PIN, "00A4000002DF01"):  # once, like SamSession.open
                s.SCardTransmit(hsam, psam, list(bytes.fromhex(setup)))
            raw: list[float] = []
            for _ in range(args.n):
                t = time.perf_counter()
                hr, hcard, pcard = s.SCardConnect(ctx, daemon.patient_reader,
                                                  s.SCARD_SHARE_EXCLUSIVE, proto)
                for side, apdu in apdus:
                    h, p = (hcard, pcard) if side == "card" else (hsam, psam)
                    hr, resp = s.SCardTransmit(h, p, list(apdu))
                    if hr != s.SCARD_S_SUCCESS or len(resp) < 2 or resp[-2] not in (0x90, 0x61):
                        raise SystemExit(f"raw replay failed: {hr:#x} {bytes(resp).hex()}")
                s.SCardDisconnect(hcard, s.SCARD_RESET_CARD)
                raw.append(time.perf_counter() - t)
            s.SCardDisconnect(hsam, s.SCARD_LEAVE_CARD)
            s.SCardReleaseContext(ctx)

            inproc: list[float] = []
            sim_sam = SamSession(InProcessTransport(SamSim(PIN)), PIN)
            sim_sam.open()
            for _ in range(args.n):
                t = time.perf_counter()
                CardSession(InProcessTransport(card), sim_sam).read_identity()
                inproc.append(time.perf_counter() - t)
        finally:
            patient.remove()
            sam_slot.remove()
            daemon.stop()

    n_card = sum(1 for side, _ in apdus if side == "card")
    med = statistics.median
    print(f"APDUs per read_identity: {len(apdus)} (card {n_card}, SAM {len(apdus) - n_card}; "
          "SAM PIN/DF01 once per SAM session, not counted)")
    print(f"read_identity over pcscd+vpcd: median {med(ours) * 1e3:.2f} ms "
          f"(p95 {sorted(ours)[int(0.95 * len(ours))] * 1e3:.2f} ms), n={args.n}")
    print(f"raw SCardTransmit, same APDUs: median {med(raw) * 1e3:.2f} ms")
    print(f"ratio ours/raw: {med(ours) / med(raw):.2f}")
    print(f"in-process (no pcscd), protocol+sim cost: median {med(inproc) * 1e3:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
