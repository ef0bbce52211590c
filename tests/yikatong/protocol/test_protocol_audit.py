"""The one audit-hash rule: both encodings agree, and both chains use it."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from central.store import open_store
from edge.fleet.audit import AuditLog
from yikatong.protocol.audit import GENESIS_HASH, audit_hash, audit_hash_text
from yikatong.protocol.envelope import canonical_json, format_ts

_text = st.text(max_size=12)
_details = st.dictionaries(_text, st.one_of(_text, st.integers(-10**9, 10**9), st.booleans(),
                                            st.none()), max_size=5)


@given(seq=st.integers(1, 10**9), actor=_text, action=_text, detail=_details)
def test_text_form_is_byte_identical_to_the_record_form(
    seq: int, actor: str, action: str, detail: dict[str, Any]
) -> None:
    ts = "2026-12-04T08:30:00.123Z"
    record = {"seq": seq, "ts": ts, "actor": actor, "action": action, "detail": detail}
    expected = hashlib.sha256(GENESIS_HASH.encode() + b"\n" + canonical_json(record)).hexdigest()
    assert audit_hash(seq, ts, actor, action, detail, GENESIS_HASH) == expected
    assert audit_hash_text(seq, ts, actor, action, canonical_json(detail).decode(),
                           GENESIS_HASH) == expected


def test_device_and_central_chains_hash_the_same_record_alike(tmp_path: Path) -> None:
    now = datetime(2026, 12, 4, 8, 30, 0, 123000, tzinfo=UTC)
    detail = {"job": "j1", "copies": 1}
    class Clock:
        def now(self) -> datetime:
            return now

    device = AuditLog(tmp_path / "dev.db", clock=Clock()).record("edge", "print.done", detail)
    store = open_store(tmp_path / "central.db")
    try:
        entry = store.audit(now, "edge", "print.done", detail)
    finally:
        store.close()
    rule = audit_hash(1, format_ts(now), "edge", "print.done", detail, GENESIS_HASH)
    assert entry.hash == rule
    assert device.hash == rule
