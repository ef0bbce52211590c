"""Sending one APDU over a ``CardTransport``, for the card and the SAM sessions alike.

The operation deadline is checked before each command, the APDUs are counted per side,
6Cxx is resent once with the right Le, 61xx is followed with GET RESPONSE (at most
``MAX_GET_RESPONSES``) and a failing status word becomes its typed error
(docs/healthcard.md). Sends go to the transport; the status-word tables and APDU builders
stay in ``protocol/``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from edge.devices.card import errors as E
from edge.devices.card.protocol import apdu as A
from edge.devices.card.protocol.status import error_for
from edge.devices.card.transport import CardTransport

__all__ = ["MAX_GET_RESPONSES", "ApduCounter", "exchange_rest", "send_apdu"]


@dataclass
class ApduCounter:
    """APDUs sent to the card and to the SAM during one operation, and its deadline."""

    card: int = 0
    sam: int = 0
    started: float = 0.0
    deadline: float = float("inf")


# Sending a command: check the operation deadline, transmit, count, and return a plain
# 9000 answer at once; everything else (61xx / 6Cxx chaining, the typed error for a failing
# SW) goes through ``exchange_rest``. That first part is ``send_apdu`` and is written out
# again in ``CardSession._x_data`` rather than shared: it runs for every APDU, and one
# keyword-heavy call layer less per APDU is measurable over pcscd (≈0.3 µs warm,
# where each warm µs costs 4-9 µs between PC/SC waits: docs/performance.md "Card read").


#: GET RESPONSEs followed after one command. Our longest answer is a 128-byte READ BINARY
#: chunk or a 16-byte SAM result (one 61xx each); a card still saying 61xx after this many
#: is broken, and following it for ever would hold the card lock for ever.
MAX_GET_RESPONSES = 16

#: GET RESPONSE APDUs by Le (one per T=0 SAM answer on the read path), built once.
_GET_RESPONSE: dict[int, bytes] = {}


def send_apdu(transport: CardTransport, cmd: A.Command | bytes, *, action: str,
              c: ApduCounter, side: Literal["card", "sam"], file: str | None, check: bool,
              monotonic: Callable[[], float]) -> A.Response:
    """Send one APDU to the card or the SAM (see "Sending a command" above)."""
    if monotonic() > c.deadline:
        raise E.CardTimeout("Operation took too long", reader=transport.reader)
    apdu = cmd if isinstance(cmd, bytes) else cmd.to_bytes()
    raw = transport.transmit(apdu)
    if side == "card":
        c.card += 1
    else:
        c.sam += 1
    if raw[-2:] == b"\x90\x00":  # the common case, without the chaining machinery
        return A.Response(raw[:-2], 0x90, 0x00)
    return exchange_rest(transport, apdu, raw, action=action, counter=c, side=side,
                          file=file, check=check, monotonic=monotonic)


def exchange_rest(transport: CardTransport, apdu: bytes, raw: bytes, *, action: str,
                  counter: ApduCounter, side: Literal["card", "sam"], file: str | None,
                  check: bool, monotonic: Callable[[], float] = time.monotonic
                  ) -> A.Response:
    """The answer ``raw`` to ``apdu`` was not a plain 9000: follow 6Cxx / 61xx, check the SW.

    Works on the raw answers and builds one Response at the end (a T=0 SAM answers 61xx
    to every 80DE of the read path).
    """
    def send(cmd: bytes) -> bytes:
        if monotonic() > counter.deadline:
            raise E.CardTimeout(f"Operation took too long ({action}: response chaining)",
                                reader=transport.reader)
        answer = transport.transmit(cmd)
        if side == "card":
            counter.card += 1
        else:
            counter.sam += 1
        if len(answer) < 2:
            A.Response.parse(answer)  # raises the typed "shorter than a status word" error
        return answer

    if len(raw) < 2:
        A.Response.parse(raw)  # raises, as above
    data, sw1, sw2 = bytes(raw[:-2]), raw[-2], raw[-1]
    if sw1 == 0x6C:  # wrong Le: resend once with the exact length (not followed again)
        cmd = A.Command.parse(apdu)
        if cmd.le is not None:
            cmd = A.Command(cmd.cla, cmd.ins, cmd.p1, cmd.p2, cmd.data, sw2 or 256)
            raw = send(cmd.to_bytes())
            data, sw1, sw2 = bytes(raw[:-2]), raw[-2], raw[-1]
    fetched = 0
    while sw1 == 0x61:
        if fetched == MAX_GET_RESPONSES:
            raise E.CardCommandError(
                f"{action}: still {sw1:02X}{sw2:02X} after {fetched} GET RESPONSE",
                "卡片响应异常，请重新插卡。", reader=transport.reader, sw1=sw1, sw2=sw2)
        get = _GET_RESPONSE.get(sw2)
        if get is None:
            get = _GET_RESPONSE[sw2] = A.get_response(sw2).to_bytes()
        raw = send(get)
        fetched += 1
        data += raw[:-2]
        sw1, sw2 = raw[-2], raw[-1]
    resp = A.Response(data, sw1, sw2)
    if check and not resp.ok:
        raise error_for(sw1, sw2, action=action, file=file, reader=transport.reader)
    return resp

