"""Test issuer keys shared by the card simulator and the SAM simulator.

A real SAM holds the issuer's master keys and the terminal never sees them; the simulators
need the same keys on both sides, so they derive them deterministically from a seed. These
are test keys only — nothing in product code uses them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["KEY_REFS", "IssuerKeys"]

#: Key references (docs/healthcard.md): read 04 (DDF1) / 84 (DFs); update 05, 85, 86, 87.
KEY_REFS = (0x04, 0x05, 0x84, 0x85, 0x86, 0x87)


@dataclass(frozen=True, slots=True)
class IssuerKeys:
    """Master keys by key reference."""

    masters: Mapping[int, bytes] = field(default_factory=dict)

    @classmethod
    def for_tests(cls, seed: str = "yikatong-sim-issuer") -> IssuerKeys:
        """Deterministic test master keys derived from ``seed``."""
        return cls({ref: hashlib.sha256(f"{seed}/{ref:02X}".encode()).digest()[:16]
                    for ref in KEY_REFS})
