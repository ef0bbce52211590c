"""The printer transport interface and its implementations (USB, serial, network, CUPS, memory).

Every transport does only ``open/close/write/read`` (as python-escpos's printer classes do
``open/close/_raw/_read``); the real ones wrap python-escpos and translate its errors once,
here, into ``PrinterOffline``. They are blocking: the driver calls them in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from edge.devices.printer.config import PrinterConfig
from edge.devices.printer.errors import PrinterConfigError, PrinterOffline
from edge.devices.printer.escpos.status import status_reply
from edge.devices.printer.sim.decoder import (
    EscPosDecoder,
    JobDone,
    SequencedQuery,
    StatusQuery,
)

__all__ = [
    "CupsTransport",
    "MemoryTransport",
    "NetworkTransport",
    "PrinterTransport",
    "SerialTransport",
    "UsbTransport",
    "open_transport",
]


@runtime_checkable
class PrinterTransport(Protocol):
    """What the driver needs from a link to a printer."""

    bidirectional: bool  # False when status cannot be read (CUPS queues)

    def open(self) -> None:
        """Connect; raises PrinterOffline."""

    def close(self) -> None:
        """Disconnect; never raises."""

    def write(self, data: bytes) -> None:
        """Send bytes; raises PrinterOffline when the link is gone."""

    def read(self, n: int, timeout: float) -> bytes:
        """Up to ``n`` bytes, or b"" when nothing arrives within ``timeout`` seconds."""


def _escpos_printer_module() -> Any:
    import escpos.printer

    return escpos.printer


class NetworkTransport:
    """Raw TCP (port 9100, "JetDirect"): a plain socket.

    python-escpos's ``Network`` adds nothing here but its import, which pulls in Pillow,
    qrcode, python-barcode, pyusb and a YAML capability database (≈ 8 MB of the daemon's idle
    memory, docs/performance.md "Footprint"); we only ever used its socket. The other
    transports (USB, serial, CUPS) stay on python-escpos.
    """

    bidirectional = True

    def __init__(self, host: str, port: int = 9100, timeout: float = 5.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._sock_: socket.socket | None = None

    def open(self) -> None:
        """Connect the socket."""
        self.close()
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            raise PrinterOffline(f"{self.host}:{self.port}: {exc}") from exc
        self._sock_ = sock

    def _sock(self) -> socket.socket:
        if self._sock_ is None:
            raise PrinterOffline(f"{self.host}:{self.port}: not connected", reason="not_connected")
        return self._sock_

    def close(self) -> None:
        """Close the socket."""
        sock, self._sock_ = self._sock_, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def write(self, data: bytes) -> None:
        """Send all bytes."""
        sock = self._sock()
        try:
            sock.settimeout(self.timeout)
            sock.sendall(data)
        except OSError as exc:
            self.close()
            raise PrinterOffline(
                f"{self.host}:{self.port}: {exc}", reason="connection_lost"
            ) from exc

    def read(self, n: int, timeout: float) -> bytes:
        """Receive up to n bytes within timeout."""
        sock = self._sock()
        try:
            sock.settimeout(timeout)
            data = sock.recv(n)
        except TimeoutError:
            return b""
        except OSError as exc:
            self.close()
            raise PrinterOffline(
                f"{self.host}:{self.port}: {exc}", reason="connection_lost"
            ) from exc
        if not data:  # orderly close by the printer: it went away (power cycle)
            self.close()
            raise PrinterOffline(f"{self.host}:{self.port}: closed", reason="connection_lost")
        return data


class SerialTransport:
    """RS-232 / USB-serial through python-escpos's ``Serial`` (pyserial)."""

    bidirectional = True

    def __init__(self, device: str, baudrate: int = 9600, timeout: float = 5.0) -> None:
        self.device, self.baudrate, self.timeout = device, baudrate, timeout
        self._printer: Any = None

    def open(self) -> None:
        """Open the port (hardware flow control off: most receipt printers wire only TX/RX/GND
        or RTS/CTS, and DSR/DTR handshaking blocks writes forever on those cables)."""
        self.close()
        printer = _escpos_printer_module().Serial(
            self.device, baudrate=self.baudrate, timeout=self.timeout, dsrdtr=False
        )
        try:
            printer.open()
        except Exception as exc:
            raise PrinterOffline(f"{self.device}: {exc}") from exc
        if not printer._device:
            raise PrinterOffline(f"{self.device}: not found")
        self._printer = printer

    def close(self) -> None:
        """Close the port."""
        if self._printer is not None:
            # pyserial raises its own types on a vanished device; closing must not raise.
            with contextlib.suppress(Exception):
                self._printer.close()
            self._printer = None

    def _port(self) -> Any:
        if self._printer is None:
            raise PrinterOffline(f"{self.device}: not open", reason="not_connected")
        return self._printer._device

    def write(self, data: bytes) -> None:
        """Write all bytes."""
        port = self._port()
        try:
            port.write(data)
            port.flush()
        except Exception as exc:
            self.close()
            raise PrinterOffline(f"{self.device}: {exc}", reason="connection_lost") from exc

    def read(self, n: int, timeout: float) -> bytes:
        """Read up to n bytes within timeout."""
        port = self._port()
        try:
            port.timeout = timeout
            data: bytes = port.read(n)
        except Exception as exc:
            self.close()
            raise PrinterOffline(f"{self.device}: {exc}", reason="connection_lost") from exc
        return data


class UsbTransport:
    """USB printer class device through python-escpos's ``Usb`` (needs pyusb + libusb).

    "Resource busy" after a restart: the kernel's ``usblp`` driver (or a previous process
    that died holding the interface) still owns interface 0. python-escpos detaches the
    kernel driver on open; if the claim still fails with EBUSY we release our handles,
    wait and retry ``attempts`` times, then report ``reason="usb_busy"``. The permanent fix
    on a kiosk is a udev rule giving the ykt user the device and blacklisting usblp
    (``/etc/modprobe.d/ykt-printer.conf: blacklist usblp``) — see docs/receipts/README.md.
    """

    bidirectional = True

    def __init__(
        self,
        vendor_id: int,
        product_id: int,
        *,
        in_ep: int = 0x82,
        out_ep: int = 0x01,
        timeout: float = 5.0,
        attempts: int = 3,
        delay: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        usb_util: Any = None,
    ) -> None:
        self.vendor_id, self.product_id = vendor_id, product_id
        self.in_ep, self.out_ep, self.timeout = in_ep, out_ep, timeout
        self.attempts, self.delay, self._sleep = attempts, delay, sleep
        self._usb_util = usb_util  # pyusb's usb.util unless a test hands in a fake
        self._printer: Any = None

    def _name(self) -> str:
        return f"USB {self.vendor_id:04x}:{self.product_id:04x}"

    def open(self) -> None:
        """Find, detach the kernel driver and claim; retries while the device is busy."""
        self.close()
        try:
            import usb.core
            import usb.util
        except ImportError as exc:
            raise PrinterOffline(
                f"{self._name()}: pyusb is not installed", reason="no_pyusb"
            ) from exc
        util = self._usb_util or usb.util
        last: Exception | None = None
        for attempt in range(self.attempts + 1):
            printer = _escpos_printer_module().Usb(
                self.vendor_id, self.product_id, timeout=int(self.timeout * 1000),
                in_ep=self.in_ep, out_ep=self.out_ep,
            )
            try:
                printer.open()
                if not printer._device:
                    raise PrinterOffline(f"{self._name()}: not found")
                # Claim now, so a busy interface shows up here and not in the first write.
                util.claim_interface(printer._device, 0)
                self._printer = printer
                return
            except PrinterOffline:
                raise
            except Exception as exc:
                # python-escpos wraps a USBError from set_configuration (EBUSY while usblp
                # still holds the device) in DeviceNotFoundError: look at the chain.
                if _usb_errno(exc, usb.core.USBError) != errno.EBUSY:
                    raise PrinterOffline(f"{self._name()}: {exc}") from exc
                last = exc
                if printer._device:
                    with contextlib.suppress(Exception):
                        util.dispose_resources(printer._device)
                if attempt < self.attempts:
                    self._sleep(self.delay * (attempt + 1))
        raise PrinterOffline(f"{self._name()}: {last}", reason="usb_busy") from last

    def close(self) -> None:
        """Release the interface and libusb handles."""
        if self._printer is not None:
            with contextlib.suppress(Exception):
                self._printer.close()
            self._printer = None

    def write(self, data: bytes) -> None:
        """Bulk-out write."""
        if self._printer is None:
            raise PrinterOffline(f"{self._name()}: not open", reason="not_connected")
        try:
            self._printer._raw(data)
        except Exception as exc:
            self.close()
            raise PrinterOffline(f"{self._name()}: {exc}", reason="connection_lost") from exc

    def read(self, n: int, timeout: float) -> bytes:
        """Bulk-in read; a libusb timeout is an empty answer."""
        if self._printer is None:
            raise PrinterOffline(f"{self._name()}: not open", reason="not_connected")
        import usb.core

        try:
            data = self._printer._device.read(self.in_ep, n, int(timeout * 1000))
        except usb.core.USBTimeoutError:
            return b""
        except Exception as exc:
            self.close()
            raise PrinterOffline(f"{self._name()}: {exc}", reason="connection_lost") from exc
        return bytes(data)


def _usb_errno(exc: BaseException | None, usb_error: type[BaseException]) -> int | None:
    """The errno of the first pyusb USBError in ``exc``'s cause/context chain, if any."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, usb_error):
            return getattr(exc, "errno", None)
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


class CupsTransport:
    """A raw CUPS queue through python-escpos's ``CupsPrinter`` (pycups). One-way: CUPS
    gives no DLE EOT replies, so ``bidirectional`` is False and status reads as unknown."""

    bidirectional = False

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self._printer: Any = None

    def open(self) -> None:
        """Start a CUPS job for the queue."""
        self.close()
        try:
            printer = _escpos_printer_module().CupsPrinter(self.queue)
            printer.open(job_name="ykt")
        except Exception as exc:  # RuntimeError without pycups, DeviceNotFoundError
            raise PrinterOffline(f"CUPS queue {self.queue}: {exc}") from exc
        self._printer = printer

    def close(self) -> None:
        """Submit what was written as one raw job."""
        if self._printer is not None:
            printer, self._printer = self._printer, None
            try:
                printer.close()
            except Exception as exc:
                raise PrinterOffline(f"CUPS queue {self.queue}: {exc}") from exc

    def write(self, data: bytes) -> None:
        """Append to the pending CUPS job."""
        if self._printer is None:
            self.open()
        self._printer._raw(data)

    def read(self, n: int, timeout: float) -> bytes:
        """CUPS queues cannot be read."""
        return b""


class MemoryTransport:
    """In-memory printer for tests: records every byte and answers like a printer would.

    Status replies follow the scripted state (``paper_out``, ``near_end``, ``cover_open``,
    ``cutter_error``); ``answer=False`` makes it silent (unplugged printer);
    ``paper_out_after_jobs`` runs the roll out after that many cuts; ``fail_open`` makes
    ``open()`` fail (printer powered off).
    """

    bidirectional = True

    def __init__(self) -> None:
        self.written = bytearray()
        self.is_open = False
        self.opens = 0
        self.paper_out = False
        self.near_end = False
        self.cover_open = False
        self.cutter_error = False
        self.answer = True
        self.fail_open = False
        self.paper_out_after_jobs: int | None = None
        self.jobs_printed = 0
        self._replies = bytearray()
        self._decoder = EscPosDecoder()
        self._cond = threading.Condition()

    def open(self) -> None:
        """Connect (fails when ``fail_open``)."""
        if self.fail_open:
            raise PrinterOffline("memory printer switched off")
        self.is_open = True
        self.opens += 1

    def close(self) -> None:
        """Disconnect."""
        self.is_open = False

    def write(self, data: bytes) -> None:
        """Record the bytes and queue the replies a printer would send."""
        if not self.is_open:
            raise PrinterOffline("memory printer not open", reason="not_connected")
        self.written += data
        for event in self._decoder.feed(data):
            if isinstance(event, JobDone):
                self.jobs_printed += 1
                if self.paper_out_after_jobs is not None and (
                    self.jobs_printed >= self.paper_out_after_jobs
                ):
                    self.paper_out = True
            if not self.answer:
                continue
            if isinstance(event, StatusQuery):
                self._reply(
                    status_reply(
                        event.n, paper_out=self.paper_out, near_end=self.near_end,
                        cover_open=self.cover_open, cutter_error=self.cutter_error,
                    )
                )
            elif isinstance(event, SequencedQuery) and not (
                self.paper_out or self.cover_open or self.cutter_error
            ):
                self._reply(0x03 if self.near_end else 0x00)

    def _reply(self, value: int) -> None:
        with self._cond:
            self._replies.append(value)
            self._cond.notify_all()

    def read(self, n: int, timeout: float) -> bytes:
        """Queued replies, waiting up to ``timeout`` for the first."""
        if not self.is_open:
            raise PrinterOffline("memory printer not open", reason="not_connected")
        with self._cond:
            self._cond.wait_for(lambda: bool(self._replies), timeout=timeout)
            out = bytes(self._replies[:n])
            del self._replies[:n]
            return out


def open_transport(cfg: PrinterConfig) -> PrinterTransport:
    """Build the transport the config names and open it; raises PrinterOffline."""
    transport: PrinterTransport
    if not cfg.enabled:
        raise PrinterConfigError("enabled", "the printer is disabled in the config")
    if cfg.kind == "network":
        assert cfg.host is not None  # guaranteed by PrinterConfig validation
        transport = NetworkTransport(cfg.host, cfg.port, cfg.connect_timeout_s)
    elif cfg.kind == "serial":
        assert cfg.device is not None
        transport = SerialTransport(cfg.device, cfg.baudrate, cfg.connect_timeout_s)
    elif cfg.kind == "usb":
        assert cfg.vendor_id is not None and cfg.product_id is not None
        transport = UsbTransport(
            cfg.vendor_id, cfg.product_id, in_ep=cfg.usb_in_ep, out_ep=cfg.usb_out_ep,
            timeout=cfg.connect_timeout_s, attempts=cfg.reconnect_attempts,
            delay=cfg.reconnect_delay_s,
        )
    elif cfg.kind == "cups":
        assert cfg.queue is not None
        transport = CupsTransport(cfg.queue)
    else:
        transport = MemoryTransport()
    transport.open()
    return transport
