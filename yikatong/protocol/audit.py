"""The audit-hash rule, the one both the device's chain and central's chain are built on.

A record's hash is ``sha256(prev_hash + "\\n" + canonical_json(record))`` where the record is
``{action, actor, detail, seq, ts}``: ``seq`` an integer from 1, ``ts`` the wire timestamp
string (:func:`yikatong.protocol.envelope.format_ts`, UTC, milliseconds), ``detail`` a JSON
object. The first record links to :data:`GENESIS_HASH`. Central recomputes every shipped
device hash from the ``audit`` event's body alone, so this rule is part of the contract
(docs/protocol.md, "audit").
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

from yikatong.protocol.envelope import canonical_json

__all__ = ["GENESIS_HASH", "audit_hash", "audit_hash_text"]

#: ``prev_hash`` of the first record of every chain.
GENESIS_HASH: Final = "0" * 64


def audit_hash(  # noqa: PLR0917 - the hashed fields, in order
    seq: int, ts: str, actor: str, action: str, detail: dict[str, Any], prev_hash: str
) -> str:
    """The chained hash of one record."""
    return audit_hash_text(seq, ts, actor, action, canonical_json(detail).decode(), prev_hash)


def audit_hash_text(  # noqa: PLR0917 - the hashed fields, in order
    seq: int, ts: str, actor: str, action: str, detail_json: str, prev_hash: str
) -> str:
    """:func:`audit_hash` with ``detail`` already in canonical JSON (stored that way).

    Byte-identical to ``canonical_json`` of the whole record (keys sorted, no spaces), without
    decoding and re-encoding the detail on a hot path.
    """
    def s(v: str) -> str:
        return canonical_json(v).decode()

    body = (f'{{"action":{s(action)},"actor":{s(actor)},"detail":{detail_json},'
            f'"seq":{int(seq)},"ts":{s(ts)}}}')
    return hashlib.sha256(prev_hash.encode() + b"\n" + body.encode()).hexdigest()
