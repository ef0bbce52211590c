"""Virtual ESC/POS network printer: a real TCP server (port 9100 style) for tests and demos.

It decodes what it receives with the pure decoder, splits jobs at cuts, keeps them in
``.jobs``, optionally saves a PNG per job, answers DLE EOT status queries as soon as they
arrive and GS r 1 once everything before it has "printed", and can be switched into faults:
paper out / near end, cover open, a slow link, a dropped connection, or a roll that runs
out after a number of printed lines.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from edge.devices.printer.escpos.profiles import PrinterProfile, get_profile
from edge.devices.printer.escpos.status import status_reply
from edge.devices.printer.sim.decoder import (
    DecodedJob,
    EscPosDecoder,
    Feed,
    JobDone,
    PrintedLine,
    PrintedQr,
    SequencedQuery,
    StatusQuery,
)

__all__ = ["Faults", "VirtualPrinter"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Faults:
    """The fault switches of the virtual printer."""

    paper_out: bool = False
    near_end: bool = False
    cover_open: bool = False
    cutter_error: bool = False
    slow_bps: int | None = None  # receive at most this many bytes per second
    drop_after_bytes: int | None = None  # close the next connection after N bytes (one-shot)
    # Hang up on the first printed line of the next job, on whichever connection carries it
    # (one-shot). Unlike drop_after_bytes this also hits a driver's long-lived connection.
    drop_next_job: bool = False
    paper_lines_left: int | None = None  # the roll ends after N more printed lines

    @property
    def stopped(self) -> bool:
        """Whether the mechanism is stopped (nothing prints, GS r is not answered)."""
        return self.paper_out or self.cover_open or self.cutter_error


class VirtualPrinter:
    """A TCP ESC/POS printer on its own thread: ``start()``, ``stop()``, ``.port``, ``.jobs``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        out_dir: str | Path | None = None,
        profile: str | PrinterProfile = "xprinter_xp80",
    ) -> None:
        self.host = host
        self._requested_port = port
        self.port = 0
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.profile = get_profile(profile) if isinstance(profile, str) else profile
        self._faults = Faults()
        self._lock = threading.Condition()
        self._file_lock = threading.Lock()
        self._jobs: list[DecodedJob] = []
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._conn_threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self.bytes_received = 0
        self.connections = 0

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> VirtualPrinter:
        """Bind, listen and serve on a background thread; returns self."""
        if self._thread is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._requested_port))
        sock.listen(4)
        self._sock = sock
        self.port = sock.getsockname()[1]
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._serve, name="virtual-printer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every connection (like switching the printer off)."""
        self._stopping.set()
        if self._sock is not None:
            self._sock.close()
        for t in [self._thread, *self._conn_threads]:
            if t is not None:
                t.join(timeout=5)
        self._thread = None
        self._sock = None
        self._conn_threads.clear()

    def __enter__(self) -> VirtualPrinter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults and results ---------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        """The current fault switches."""
        with self._lock:
            return self._faults

    def set_fault(self, **changes: bool | int | None) -> None:
        """Change fault switches, e.g. ``set_fault(paper_out=True)``; others stay as they are."""
        with self._lock:
            self._faults = replace(self._faults, **changes)  # type: ignore[arg-type]
            self._lock.notify_all()

    def clear_faults(self) -> None:
        """Back to a healthy printer with a full roll."""
        with self._lock:
            self._faults = Faults()
            self._lock.notify_all()

    @property
    def jobs(self) -> list[DecodedJob]:
        """A copy of the jobs received so far."""
        with self._lock:
            return list(self._jobs)

    def wait_for_jobs(self, n: int, timeout: float = 5.0) -> list[DecodedJob]:
        """Block until at least ``n`` jobs were received; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self._jobs) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self._jobs)} of {n} print jobs after {timeout}s")
                self._lock.wait(left)
            return list(self._jobs)

    def status_byte(self, n: int) -> int:
        """What the printer answers to DLE EOT n right now."""
        f = self.faults
        return status_reply(
            n, paper_out=f.paper_out, near_end=f.near_end, cover_open=f.cover_open,
            cutter_error=f.cutter_error,
        )

    # -- serving --------------------------------------------------------------------------

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                readable, _, _ = select.select([self._sock], [], [], 0.1)
                if not readable:
                    continue
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            t = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            self._conn_threads = [x for x in self._conn_threads if x.is_alive()]
            self._conn_threads.append(t)
            t.start()

    def _handle(self, conn: socket.socket) -> None:
        decoder = EscPosDecoder()
        hit = [False]  # paper ran out / cover opened during the job now being decoded
        waiting: list[SequencedQuery] = []  # GS r queries held while the mechanism is stopped
        received = 0
        with self._lock:
            drop_after = self._faults.drop_after_bytes
            if drop_after is not None:
                self._faults = replace(self._faults, drop_after_bytes=None)
        try:
            conn.setblocking(True)
            while not self._stopping.is_set():
                bps = self.faults.slow_bps
                readable, _, _ = select.select([conn], [], [], 0.05)
                if waiting:
                    self._answer_sequenced(conn, waiting)
                if not readable:
                    continue
                size = 4096 if not bps else max(1, min(4096, bps // 20))
                if drop_after is not None:
                    size = max(1, min(size, drop_after - received))
                chunk = conn.recv(size)
                if not chunk:
                    break
                received += len(chunk)
                self.bytes_received += len(chunk)
                dropped = False
                events = decoder.feed(chunk)
                for i, event in enumerate(events):
                    self._on_event(conn, hit, event, waiting)
                    if isinstance(event, PrintedLine) and self._take_drop_next_job():
                        dropped = hit[0] = True  # the job stops half-printed
                        # The decoder may already have closed this job within the chunk;
                        # then file it here (interrupted), else finish() below does.
                        done = [e for e in events[i:] if isinstance(e, JobDone)]
                        if done:
                            done[0].job.interrupted = True
                            self._file(done[0].job)
                        break
                if dropped:
                    log.info("virtual printer: dropping the connection mid-job")
                    conn.shutdown(socket.SHUT_RDWR)
                    break
                if drop_after is not None and received >= drop_after:
                    log.info("virtual printer: dropping connection after %d bytes", received)
                    conn.shutdown(socket.SHUT_RDWR)
                    break
                if bps:
                    time.sleep(len(chunk) / bps)
        except OSError:
            pass
        finally:
            conn.close()
            tail = decoder.finish()
            if tail is not None:
                tail.interrupted = tail.interrupted or hit[0]
                self._file(tail)

    def _on_event(
        self,
        conn: socket.socket,
        hit: list[bool],
        event: object,
        waiting: list[SequencedQuery],
    ) -> None:
        if isinstance(event, StatusQuery):
            # Real-time command: answered at once, whatever the mechanism is doing.
            conn.sendall(bytes([self.status_byte(event.n)]))
        elif isinstance(event, SequencedQuery):
            waiting.append(event)
            self._answer_sequenced(conn, waiting)
        elif isinstance(event, JobDone):
            event.job.interrupted = event.job.interrupted or hit[0]
            hit[0] = False
            self._file(event.job)
        elif isinstance(event, PrintedLine | PrintedQr | Feed):
            hit[0] = self._consume_paper(event) or hit[0]

    def _take_drop_next_job(self) -> bool:
        with self._lock:
            if not self._faults.drop_next_job:
                return False
            self._faults = replace(self._faults, drop_next_job=False)
            return True

    def _consume_paper(self, element: object) -> bool:
        """Use paper for one element; True if it could not print (stopped mechanism)."""
        with self._lock:
            f = self._faults
            if f.stopped:
                return True
            if f.paper_lines_left is not None and isinstance(element, PrintedLine):
                left = f.paper_lines_left - 1
                if left <= 0:
                    self._faults = replace(f, paper_lines_left=None, paper_out=True)
                    return True
                self._faults = replace(f, paper_lines_left=left, near_end=left < 20)
            return False

    def _answer_sequenced(self, conn: socket.socket, waiting: list[SequencedQuery]) -> None:
        f = self.faults
        if f.stopped:
            return  # a stopped printer has not printed the data before GS r: no reply yet
        while waiting:
            waiting.pop(0)
            conn.sendall(bytes([0x03 if f.near_end else 0x00]))

    def _file(self, job: DecodedJob) -> None:
        # Files first, then the job list: whoever waits for a job finds its PNG written.
        with self._file_lock:
            index = len(self.jobs) + 1
            if self.out_dir is not None:
                from edge.devices.printer.sim.paper import render_job

                name = f"job-{index:04d}{'-interrupted' if job.interrupted else ''}"
                try:
                    render_job(job, self.profile).save(self.out_dir / f"{name}.png")
                    (self.out_dir / f"{name}.bin").write_bytes(job.raw)
                except OSError as exc:
                    log.warning("virtual printer: cannot save %s: %s", name, exc)
            with self._lock:
                self._jobs.append(job)
                self._lock.notify_all()
