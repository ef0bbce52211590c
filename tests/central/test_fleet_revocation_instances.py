"""Several central instances with one fleet CA: a revocation reaches every instance's CRL.

Each instance holds a copy of the same CA (docs/scaling.md: copied before the others start)
and records only the certificates it issued itself; the store's certificate table is what
they share. A certificate instance B issued (a renewal answered there) and instance A
revoked must be on both CRLs — otherwise the broker B's CRL guards lets the device in.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from fleet_support import make_csr
from pg_support import BOTH_ENGINES

from central.fleet.service import FleetService
from central.fleet.settings import FleetSection
from central.registry import Registry
from central.store import open_store
from yikatong.site.demo import free_port

pytestmark = BOTH_ENGINES

T0 = datetime(2026, 5, 4, 8, 30, tzinfo=UTC)
DEV = "kiosk-001"


class _Publisher:
    connected = True

    async def publish(self, topic: str, payload: bytes) -> None:
        return None


def _crl_serials(fleet: FleetService) -> set[int]:
    pem = fleet.ca.crl_file.read_bytes()
    first = pem[: pem.index(b"-----END X509 CRL-----") + len(b"-----END X509 CRL-----")]
    return {r.serial_number for r in x509.load_pem_x509_crl(first)}


@pytest.fixture
def two(tmp_path: Path, central_db) -> Iterator[list[FleetService]]:
    target = central_db(tmp_path)
    out, stores = [], []
    for k in range(2):
        if k == 1:  # the same CA on the second instance, as the guide says to set it up
            shutil.copytree(tmp_path / "ca-0", tmp_path / "ca-1")
        section = FleetSection(enroll_port=free_port(), ca_dir=tmp_path / f"ca-{k}")
        store = open_store(target)
        stores.append(store)
        out.append(FleetService(store, Registry(store, tmp_path / f"broker-{k}",
                                                legacy_passwords=False),
                                section, data_dir=tmp_path / f"data-{k}",
                                publisher=_Publisher(), clock=lambda: T0))
    stores[0].add_device(DEV, "kiosk", T0)
    yield out
    for s in stores:
        s.close()


async def test_a_certificate_issued_on_b_and_revoked_on_a_is_on_both_crls(two) -> None:
    a, b = two
    csr, _key = make_csr(DEV)
    issued = b.ca.issue_device(csr.encode(), DEV, now=T0)  # a renewal answered by B
    b.tables.FleetCert.create(serial=str(issued.serial), dev=DEV,
                              not_after=issued.not_after.timestamp(),
                              issued_at=T0.timestamp(), source="renew")
    assert a.ca.active_serials(DEV) == []  # A's copy never saw it issued

    await a.revoke(DEV, actor="admin:test")

    assert issued.serial in _crl_serials(a)
    assert issued.serial not in _crl_serials(b)  # until B's next sync (every second)
    assert b.sync_revocations() == 1
    assert issued.serial in _crl_serials(b)
    assert b.sync_revocations() == 0  # nothing new: one COUNT, no CRL rewrite
    row = b.tables.FleetCert.get(b.tables.FleetCert.serial == str(issued.serial))
    assert row.revoked_at is not None
