"""``/payments``: charges, status, reversal and refunds."""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import APIRouter, Path, Query

from central.platform.sim.api.runner import ERRORS, IdempotencyKey, OpRunner
from central.platform.sim.schemas import (
    PaymentCreateRequest,
    PaymentOut,
    PaymentsOut,
    RefundOut,
    RefundRequest,
)

PaymentId = Annotated[str, Path(max_length=40)]
#: The pay.create Idempotency-Key, same limits as the header.
PaymentKey = Annotated[str, Path(min_length=1, max_length=128)]


def build_router(runner: OpRunner) -> APIRouter:
    """Routes of the payments resource."""
    router = APIRouter(prefix="/payments", tags=["payments"], responses=ERRORS)
    svc = runner.service

    @router.post("", response_model=PaymentOut, operation_id="pay_create")
    async def create(req: PaymentCreateRequest, key: IdempotencyKey = None) -> object:
        """Pay by prepaid balance, cash, or a scanned WeChat/Alipay code (micropay)."""
        fingerprint = req.model_dump(mode="json")
        if req.auth_code:
            # The idempotency record keeps only a digest: payment codes are never stored.
            fingerprint["auth_code"] = hashlib.sha256(req.auth_code.encode()).hexdigest()
        return await runner.run("pay.create", lambda: svc.pay_create(req), key=key,
                                fingerprint=fingerprint)

    @router.get("", response_model=PaymentsOut, operation_id="pay_list")
    async def payments(patient_id: Annotated[str, Query(min_length=1, max_length=32)]) -> object:
        """List a patient's payments, newest first, with refunded and refundable amounts."""
        return await runner.run("pay.list", lambda: svc.pay_list(patient_id))

    @router.get("/{payment_id}", response_model=PaymentOut, operation_id="pay_status")
    async def status(payment_id: PaymentId) -> object:
        """The current state of a payment (wallet payments resolve over time)."""
        return await runner.run("pay.status", lambda: svc.pay_status(payment_id))

    @router.post("/{payment_id}/reverse", response_model=PaymentOut, operation_id="pay_reverse")
    async def reverse(payment_id: PaymentId, key: IdempotencyKey = None) -> object:
        """Reverse a pending/unknown payment, or an approved one not yet settled."""
        return await runner.run("pay.reverse", lambda: svc.pay_reverse(payment_id), key=key,
                                fingerprint={"payment_id": payment_id})

    @router.get("/by-key/{key}", response_model=PaymentOut, operation_id="pay_status_by_key")
    async def status_by_key(key: PaymentKey) -> object:
        """The payment created under this Idempotency-Key (the merchant's order number).

        404 ``not_found``: no payment was ever taken under the key.
        """
        return await runner.run("pay.status_by_key", lambda: svc.pay_status_by_key(key))

    @router.post("/by-key/{key}/reverse", response_model=PaymentOut,
                 operation_id="pay_reverse_by_key")
    async def reverse_by_key(key: PaymentKey, idem: IdempotencyKey = None) -> object:
        """Reverse the payment created under this key; an unseen key is closed for good.

        404 ``not_found``: nothing was taken, and a later pay.create with the key is
        refused with ``payment_closed``.
        """
        return await runner.run("pay.reverse_by_key", lambda: svc.pay_reverse_by_key(key),
                                key=idem, fingerprint={"key": key})

    @router.post("/{payment_id}/refunds", response_model=RefundOut, operation_id="pay_refund")
    async def refund(payment_id: PaymentId, req: RefundRequest,
                     key: IdempotencyKey = None) -> object:
        """Refund (part of) an approved bills or top-up payment."""
        return await runner.run(
            "pay.refund", lambda: svc.pay_refund(payment_id, req), key=key,
            fingerprint={"payment_id": payment_id, **req.model_dump(mode="json")})

    return router
