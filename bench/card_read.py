"""Benchmark: ``CardSession.read_identity()`` vs raw pyscard transmits of the same APDUs.

Starts a private pcscd with vpcd (needs root or CAP_SYS_ADMIN for ``unshare -m``), puts the
card and SAM simulators in the two slots, records the APDUs one ``read_identity()`` sends,
then times our stack against raw ``SCardTransmit`` replays of exactly that list (the card's
challenge is fixed so the replayed EXTERNAL AUTHENTICATE stays valid). Both sides run in
the same process against the same pcscd, interleaved (ours, raw, raw, ours, …) so drift
hits both alike, and use the same PC/SC context and SAM handle:

* ``connected`` — the card is already connected: ``read_identity()`` (hot list included,
  as in the daemon) vs the raw APDU list on the very same card handle;
* ``per card`` — connect + read + disconnect (reset): ``PyscardTransport`` + read + close
  vs ``SCardConnect`` + the APDU list + ``SCardDisconnect``.

The SAM PIN VERIFY and SELECT DF01 happen once per SAM session (as in the daemon), outside
both. After timing, the card simulator's command log is checked: every timed run, ours and
raw, sent exactly the recorded APDUs. Timings are printed, never asserted, and the
"Card read" section of docs/performance.md is rewritten with them (``--no-write``: print
only). ``--runs`` repeats the timed comparison (same pcscd, same cards) to show the spread.

    .venv/bin/python bench/card_read.py [-n 300] [--runs 3] [--no-write] [--notes TEXT]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from smartcard import scard as s  # importing does not contact pcscd; calls do

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, write_section
from edge.devices.card.card_session import CardSession
from edge.devices.card.hotlist import HotList
from edge.devices.card.protocol.security import AuthScheme
from edge.devices.card.sam_session import SamSession
from edge.devices.card.sim.cardos import HealthCardSim
from edge.devices.card.sim.pcscd import PcscDaemon, free_port_pair
from edge.devices.card.sim.sam import SamSim
from edge.devices.card.sim.vpcd import VirtualCardSlot
from edge.devices.card.transport import (
    CardTransport,
    InProcessTransport,
    PcscContext,
    PyscardTransport,
)

PIN = "123456"
HOTLIST_SIZE = 10_000
WARMUP = 20


class Recording:
    """Transport wrapper that records every APDU sent (used once, outside the timing)."""

    def __init__(self, inner: CardTransport, log: list[tuple[str, bytes]], side: str) -> None:
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


def in_process_counts() -> list[tuple[str, int, int]]:
    """(variant, card APDUs, SAM APDUs) of one read_identity for each SAM setting."""
    out = []
    for sam_auth in ("combined", "split"):
        for t0 in (True, False):
            ss = SamSession(InProcessTransport(SamSim(PIN, t0=t0)), PIN)
            ss.open()
            session = CardSession(InProcessTransport(HealthCardSim.from_holder()), ss,
                                  AuthScheme(sam_auth=sam_auth))
            session.read_identity()
            out.append((f"{sam_auth}, T={'0' if t0 else '1'} SAM",
                        session.last_apdus["card"], session.last_apdus["sam"]))
    return out


def interleaved(n: int, ours: Callable[[], None], raw: Callable[[], None]
                ) -> tuple[list[int], list[int]]:
    """n timed runs of each, in ABBA order, after a short warm-up (ns per run)."""
    for _ in range(WARMUP):
        ours()
        raw()
    t_ours: list[int] = []
    t_raw: list[int] = []
    clock = time.perf_counter_ns
    gc.collect()
    for i in range(n):
        pair = ((ours, t_ours), (raw, t_raw)) if i % 2 == 0 else ((raw, t_raw), (ours, t_ours))
        for fn, acc in pair:
            t = clock()
            fn()
            acc.append(clock() - t)
    return t_ours, t_raw


def p95(values: list[int]) -> float:
    return sorted(values)[int(0.95 * (len(values) - 1))]


def row(run: int, name: str, t_ours: list[int], t_raw: list[int]) -> tuple[str, float]:
    """One table row, and the median paired ratio."""
    med = statistics.median
    paired = statistics.median(o / r for o, r in zip(t_ours, t_raw, strict=True))
    return (f"| {run} | {name} | {med(t_ours) / 1e6:.3f} | {p95(t_ours) / 1e6:.3f} | "
            f"{med(t_raw) / 1e6:.3f} | {p95(t_raw) / 1e6:.3f} | "
            f"{med(t_ours) / med(t_raw):.3f} | {paired:.3f} |"), paired


TABLE_HEAD = ("| run | variant | ours median | ours p95 | raw median | raw p95 | "
              "ratio of medians | median paired ratio |\n|---|---|---|---|---|---|---|---|")

METHOD = """\
Method: one process, one private pcscd, the card and SAM simulators behind vpcd. One
`read_identity()` is recorded (card challenge fixed, so the replayed EXTERNAL AUTHENTICATE
stays valid); the raw side replays exactly those APDUs with `SCardTransmit`, pre-built as
pyscard lists, checking only the result code and SW1. Both sides use the same PC/SC context
and the same SAM handle; in *connected* they also share the card handle, in *per card* each
does its own connect (exclusive) and disconnect (reset) — so both include, or both exclude,
connection setup. Ours includes the hot-list check (10 000 entries, as in the daemon).
Runs are interleaved ABBA after 20 warm-up pairs; medians and p95 over n runs per side, and
the median of the per-pair ratios. After timing, the card simulator's command log is checked
to hold exactly the recorded APDUs for every run of both sides. Nothing is asserted on time.
This section is written by the benchmark itself."""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=300, help="timed runs per variant and side")
    ap.add_argument("--runs", type=int, default=3, help="timed comparisons in a row")
    ap.add_argument("--no-write", action="store_true", help="do not touch performance.md")
    ap.add_argument("--notes", default="", help="a paragraph appended to the section")
    args = ap.parse_args()
    started = dt.datetime.now().astimezone()
    with tempfile.TemporaryDirectory() as tmp:
        daemon = PcscDaemon(Path(tmp), free_port_pair())
        daemon.start()
        os.environ.update(daemon.env)  # before pyscard's first call
        patient, sam_slot = VirtualCardSlot(daemon.patient_port), VirtualCardSlot(daemon.sam_port)
        hot = HotList(Path(tmp) / "hotlist.sqlite")
        hot.apply_delta(1, added=[f"H{i:017d}" for i in range(HOTLIST_SIZE)])
        ctx = PcscContext()
        try:
            card = HealthCardSim.from_holder(rng=lambda n: bytes(range(n)))
            sam_sim = SamSim(PIN)
            patient.insert(card)
            sam_slot.insert(sam_sim)
            wait_present(daemon.patient_reader)
            wait_present(daemon.sam_reader)
            sam_tr = PyscardTransport(daemon.sam_reader, context=ctx)
            log: list[tuple[str, bytes]] = []
            sam = SamSession(Recording(sam_tr, log, "sam"), PIN)
            sam.open()
            log.clear()
            tr = PyscardTransport(daemon.patient_reader, context=ctx)
            session = CardSession(Recording(tr, log, "card"), sam, hotlist=hot)
            session.read_identity()
            apdus = list(log)
            sam.transport = sam_tr  # no recording during the timing
            card_apdus = [a for side, a in apdus if side == "card"]
            n_card, n_sam = len(card_apdus), len(apdus) - len(card_apdus)
            # Raw replay: the APDUs as pyscard lists, prepared before timing (raw's best case).
            hsam, psam = sam_tr.pcsc_handle  # the same SAM handle for both sides
            plan = [(side == "card", list(a)) for side, a in apdus]
            ok_sw1 = (0x90, 0x61)

            def replay(hcard: int, pcard: int) -> None:
                for is_card, apdu in plan:
                    hr, resp = s.SCardTransmit(hcard, pcard, apdu) if is_card else \
                        s.SCardTransmit(hsam, psam, apdu)
                    if hr != s.SCARD_S_SUCCESS or len(resp) < 2 or resp[-2] not in ok_sw1:
                        raise SystemExit(f"raw replay failed: {hr:#x} {bytes(resp).hex()}")

            # --- connected: the same card handle for both sides -------------------------
            def ours_connected() -> None:
                CardSession(tr, sam, hotlist=hot).read_identity()

            def raw_connected() -> None:
                replay(*tr.pcsc_handle)

            # --- per card: connect + read + disconnect ----------------------------------
            protocols = s.SCARD_PROTOCOL_T0 | s.SCARD_PROTOCOL_T1

            def ours_per_card() -> None:
                transport = PyscardTransport(daemon.patient_reader, context=ctx)
                try:
                    CardSession(transport, sam, hotlist=hot).read_identity()
                finally:
                    transport.close()

            def raw_per_card() -> None:
                hr, hctx = ctx.acquire()
                hr, hcard, pcard = s.SCardConnect(hctx, daemon.patient_reader,
                                                  s.SCARD_SHARE_EXCLUSIVE, protocols)
                if hr != s.SCARD_S_SUCCESS:
                    raise SystemExit(f"connect failed: {hr:#x}")
                replay(hcard, pcard)
                s.SCardDisconnect(hcard, s.SCARD_RESET_CARD)

            start_cmds = len(card.commands)
            timed: list[tuple[int, str, tuple[list[int], list[int]]]] = []
            for run in range(1, args.runs + 1):
                if run > 1:  # the connected variant needs its card handle back
                    tr = PyscardTransport(daemon.patient_reader, context=ctx)
                timed.append((run, "connected (read only)",
                              interleaved(args.n, ours_connected, raw_connected)))
                tr.close()  # per card connects exclusively itself
                timed.append((run, "per card (connect + read + disconnect)",
                              interleaved(args.n, ours_per_card, raw_per_card)))

            # Honesty check: every run (both sides, warm-up included) sent the same APDUs.
            sent = card.commands[start_cmds:]
            runs = args.runs * 2 * 2 * (args.n + WARMUP)
            expected = card_apdus * runs
            if sent != expected:
                raise SystemExit(f"APDU mismatch: {len(sent)} card APDUs sent, "
                                 f"{len(expected)} expected")
            sam_tr.close()

            inproc: list[int] = []
            sim_sam = SamSession(InProcessTransport(SamSim(PIN)), PIN)
            sim_sam.open()
            sim_card = HealthCardSim.from_holder(rng=lambda n: bytes(range(n)))
            for _ in range(args.n):
                t = time.perf_counter_ns()
                CardSession(InProcessTransport(sim_card), sim_sam, hotlist=hot).read_identity()
                inproc.append(time.perf_counter_ns() - t)
        finally:
            ctx.close()
            hot.close()
            patient.remove()
            sam_slot.remove()
            daemon.stop()

    sam_heads = ", ".join(a[:3].hex().upper() for side, a in apdus if side == "sam")
    rows = [row(run, name, *t) for run, name, t in timed]
    ratios = sorted(r for _, r in rows)
    counts = "\n".join(f"| {v} | {c} | {m} | {'**' if c + m == n_card + n_sam else ''}"
                       f"{c + m}{'**' if c + m == n_card + n_sam else ''} |"
                       for v, c, m in in_process_counts())
    body = f"""\
`bench/card_read.py` (root; starts its own pcscd + vpcd). Measured {started:%Y-%m-%d %H:%M %Z}
on {machine()}, pcsc-lite with vpcd.
n = {args.n} timed runs per side, {args.runs} consecutive runs; other engineers' test suites
may have been running on the same machine.

APDUs per `read_identity()` (the SAM's 0015 read, PIN tries query and VERIFY, 0016 read and
SELECT DF01 are sent once per SAM session and not counted; everything else to card and SAM
is). This run, default scheme: **{n_card + n_sam}** (card {n_card}, SAM {n_sam}: {sam_heads}).

| SAM setting (`card.auth.sam_auth`), SAM protocol | card | SAM | total |
|---|---|---|---|
{counts}

Time, ours vs raw `SCardTransmit` of the same APDU list (ms):

{TABLE_HEAD}
{chr(10).join(r for r, _ in rows)}

Median paired ratio over all rows: **{statistics.median(ratios):.3f}** (range
{ratios[0]:.3f}–{ratios[-1]:.3f}). In process (no pcscd; protocol code + both simulators):
median {statistics.median(inproc) / 1e6:.3f} ms per `read_identity()`.

{METHOD}"""
    if args.notes:
        body += "\n\n" + args.notes
    print(body)
    if not args.no_write:
        write_section("Card read", body)
        print("\ndocs/performance.md: section Card read written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
