"""A virtual card slot: connects a simulated card to a ``vpcd`` reader over TCP.

vpcd protocol (vsmartcard): the virtual card is the TCP *client*; each message is a
2-byte big-endian length and a payload. A 1-byte payload is a control (00 power off,
01 power on, 02 reset, 04 get ATR — answered with the ATR); anything else is a command
APDU answered with the response APDU. Connected means inserted; closing means removed.

pcscd polls a vpcd reader every 400 ms and only compares the card's presence with its
previous poll: a card removed and re-inserted between two polls is never reported (the
reader stays "empty"). A hand cannot do that either, so ``insert`` keeps the slot empty
for at least ``min_absent_s`` (0.5 s) after the previous card left.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from typing import Protocol

from edge.devices.card.errors import VpcdConnectError

__all__ = ["MIN_ABSENT_S", "SimCard", "VirtualCardSlot"]

#: Shortest time a slot stays empty between two cards (see the module docstring).
MIN_ABSENT_S = 0.5

_POWER_OFF, _POWER_ON, _RESET, _GET_ATR = 0, 1, 2, 4


class SimCard(Protocol):
    """What a slot needs from a simulated card."""

    atr: bytes

    def process_apdu(self, apdu: bytes) -> bytes:
        """Answer one command APDU with a response APDU (data + SW1 SW2)."""
        ...


class _Disconnect(Exception):
    """The card asked to drop the connection (simulated removal mid-command)."""


class VirtualCardSlot:
    """One vpcd slot; ``insert(card)`` connects a card, ``remove()`` disconnects it."""

    def __init__(self, port: int, host: str = "127.0.0.1", *,
                 connect_timeout: float = 5.0, min_absent_s: float = MIN_ABSENT_S) -> None:
        self.port = port
        self.min_absent_s = min_absent_s
        self._left_at = 0.0  # monotonic time the last card left the slot
        self.host = host
        self.connect_timeout = connect_timeout
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._card: SimCard | None = None
        self._lock = threading.Lock()
        self.apdu_count = 0

    @property
    def is_inserted(self) -> bool:
        """True while a card is connected to vpcd."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def card(self) -> SimCard | None:
        """The inserted card, if any."""
        return self._card if self.is_inserted else None

    def insert(self, card: SimCard) -> None:
        """Connect ``card`` to vpcd, retrying while vpcd is not listening yet."""
        self.remove()
        self.wait_removed()
        wait = self._left_at + self.min_absent_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        deadline = time.monotonic() + self.connect_timeout
        last: OSError | None = None
        while True:
            try:
                sock = socket.create_connection((self.host, self.port), timeout=1.0)
                break
            except OSError as exc:
                last = exc
                if time.monotonic() >= deadline:
                    raise VpcdConnectError(
                        f"vpcd not reachable at {self.host}:{self.port}: {last}",
                        "虚拟读卡器未就绪。") from exc
                time.sleep(0.05)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._sock = sock
            self._card = card
            self.apdu_count = 0
            self._thread = threading.Thread(target=self._serve, args=(sock, card),
                                            name=f"vpcd-slot-{self.port}", daemon=True)
            self._thread.start()

    def remove(self, timeout: float = 2.0) -> None:
        """Disconnect the card (pulls it out of the reader); no-op when empty."""
        with self._lock:
            sock, thread = self._sock, self._thread
            self._sock = None
            self._thread = None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
            self._left_at = time.monotonic()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def wait_removed(self, timeout: float = 5.0) -> bool:
        """Wait until the connection ended (by remove() or by vpcd going away)."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    # --- serving ----------------------------------------------------------------------
    @staticmethod
    def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
            # vpcd writes the length and the payload separately; without quick ACKs
            # Nagle + delayed ACK add ~40 ms to every APDU.
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        return bytes(buf)

    def _serve(self, sock: socket.socket, card: SimCard) -> None:
        try:
            while True:
                head = self._recv_exact(sock, 2)
                if head is None:
                    return
                (length,) = struct.unpack(">H", head)
                payload = self._recv_exact(sock, length) if length else b""
                if payload is None:
                    return
                if len(payload) == 1:
                    reply = self._control(card, payload[0])
                    if reply is None:
                        continue
                else:
                    self.apdu_count += 1
                    try:
                        reply = card.process_apdu(payload)
                    except _Disconnect:
                        return
                    if reply == b"":
                        # A card that returns nothing has been "pulled" mid-command.
                        return
                sock.sendall(struct.pack(">H", len(reply)) + reply)
        except OSError:
            return
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            self._left_at = time.monotonic()
            with self._lock:
                if self._sock is sock:
                    self._sock = None

    @staticmethod
    def _control(card: SimCard, code: int) -> bytes | None:
        if code == _GET_ATR:
            return card.atr
        if code in (_POWER_OFF, _POWER_ON, _RESET):
            hook = getattr(card, "power_event", None)
            if callable(hook):
                hook(code)
            return None
        return None
