"""A device's ``boot_seq`` is a protocol Count (up to 2**53 - 1, docs/protocol.md "State"):
central stores the whole of it on both engines (PostgreSQL's INTEGER is 32-bit: migration
0005 widens the column). The fleet simulator's devices count boots in epoch milliseconds."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from pg_support import BOTH_ENGINES

from central.store import open_store
from yikatong.protocol.messages import MAX_SAFE_INT

pytestmark = BOTH_ENGINES

T0 = datetime(2026, 3, 1, 9, 0, 0, tzinfo=UTC)


def test_births_and_wills_keep_a_boot_seq_beyond_32_bits(
        tmp_path: Path, central_db: Callable[[Path], Path | str]) -> None:
    store = open_store(central_db(tmp_path))
    try:
        store.add_device("kiosk-001", "kiosk", T0)
        epoch_ms = 1_780_000_000_000
        assert store.apply_state("kiosk-001", online=True, boot_seq=epoch_ms, version="1.0",
                                 now=T0)
        d = store.device("kiosk-001")
        assert d is not None and d.online and d.last_boot_seq == epoch_ms
        # the Will of an earlier boot is still told apart from this one's
        assert not store.apply_state("kiosk-001", online=False, boot_seq=epoch_ms - 1,
                                     version=None, now=T0)
        assert store.apply_state("kiosk-001", online=False, boot_seq=MAX_SAFE_INT,
                                 version=None, now=T0)
        d = store.device("kiosk-001")
        assert d is not None and not d.online and d.last_boot_seq == MAX_SAFE_INT
    finally:
        store.close()
