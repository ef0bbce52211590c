"""``ykt demo`` supervises its children: a part that dies is restarted (with a backoff, a few
times at most) and says so on the console; a stop never restarts and leaves nothing running.

Unit tests drive ``yikatong.site.demo.Supervised`` with real short-lived subprocesses and a fake
clock; the last test runs the real ``ykt demo``, kills kiosk-001's ``ykt edge`` with SIGKILL
and waits for it to come back.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import wait_until

from yikatong.site.demo import Supervised, describe_exit

CRASH = [sys.executable, "-c", "import sys; sys.exit(1)"]
LONG = [sys.executable, "-c", "import time; time.sleep(60)"]
# A parent with a child of its own in the same process group (like central + Mosquitto).
FAMILY = [sys.executable, "-c",
          "import subprocess, sys, time; "
          "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
          "print(c.pid, flush=True); time.sleep(60)"]


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie does not count), read from /proc."""
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ProcessLookupError, FileNotFoundError):
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Factory:
    """Starts the given commands in turn (the last one again and again); keeps them all."""

    def __init__(self, *commands: list[str], stdout: int | None = None) -> None:
        self.commands = list(commands)
        self.stdout = stdout
        self.procs: list[subprocess.Popen[bytes]] = []

    def __call__(self) -> subprocess.Popen[bytes]:
        cmd = self.commands[min(len(self.procs), len(self.commands) - 1)]
        proc = subprocess.Popen(cmd, start_new_session=True, stdout=self.stdout)
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)


@pytest.fixture
def make() -> Any:
    made: list[tuple[Supervised, Factory]] = []

    def _make(*commands: list[str], **kw: Any) -> tuple[Supervised, Factory, io.StringIO,
                                                       Clock]:
        out, clock = io.StringIO(), Clock()
        factory = Factory(*commands, stdout=kw.pop("stdout", None))
        sup = Supervised("kiosk-001 edge", factory, out=out, clock=clock, **kw)
        made.append((sup, factory))
        return sup, factory, out, clock

    yield _make
    for sup, factory in made:
        sup.stop()
        factory.cleanup()


def lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def wait_exit(proc: subprocess.Popen[bytes]) -> None:
    proc.wait(10)


def test_a_crashed_part_is_restarted_after_its_backoff_and_says_so(
        make: Callable[..., Any]) -> None:
    sup, factory, out, clock = make(CRASH, LONG)
    first = sup.start()
    wait_exit(first)
    sup.poll()
    assert lines(out) == ["[demo] kiosk-001 edge exited with code 1; restarting in 0.5 s "
                          "(restart 1)"]
    assert sup.restart_pending and len(factory.procs) == 1
    clock.now += 0.4
    sup.poll()
    assert len(factory.procs) == 1, "restarted before the backoff was over"
    clock.now += 0.1
    sup.poll()
    assert len(factory.procs) == 2
    second = factory.procs[1]
    assert sup.proc is second and alive(second.pid)
    assert lines(out)[-1] == f"[demo] kiosk-001 edge restarted (pid {second.pid})"
    sup.poll()  # running: nothing new
    assert len(lines(out)) == 2
    sup.stop()
    assert not alive(second.pid)


def test_backoff_doubles_then_gives_up_on_that_part_only(make: Callable[..., Any]) -> None:
    sup, factory, out, clock = make(CRASH, max_restarts=3, backoff_s=0.5, max_backoff_s=1.5)
    other, other_factory, _, _ = make(LONG)
    other.start()
    sup.start()
    delays = []
    for _ in range(3):
        wait_exit(factory.procs[-1])
        sup.poll()
        m = re.search(r"restarting in ([\d.]+) s \(restart (\d)\)", lines(out)[-1])
        assert m, lines(out)
        delays.append((float(m[1]), int(m[2])))
        clock.now += float(m[1])
        sup.poll()
        assert "restarted (pid" in lines(out)[-1]
    assert delays == [(0.5, 1), (1.0, 2), (1.5, 3)]  # doubling, capped at max_backoff_s
    wait_exit(factory.procs[-1])
    sup.poll()
    assert lines(out)[-1] == ("[demo] kiosk-001 edge exited with code 1; giving up after 3 "
                              "restarts in 60 s (the rest of the site keeps running)")
    assert sup.gave_up and len(factory.procs) == 4
    clock.now += 100
    sup.poll()
    other.poll()
    assert len(factory.procs) == 4 and len(lines(out)) == 7
    assert alive(other_factory.procs[0].pid)  # the rest keeps running
    assert not other.gave_up and other.restarts == 0


def test_restarts_older_than_the_window_no_longer_count(make: Callable[..., Any]) -> None:
    sup, factory, out, clock = make(CRASH, max_restarts=2, window_s=60, backoff_s=0.5)
    sup.start()
    for _ in range(2):
        wait_exit(factory.procs[-1])
        sup.poll()
        clock.now += 30  # well past the backoff, the window slides along
        sup.poll()
    wait_exit(factory.procs[-1])
    sup.poll()  # the first restart is 60 s old now: one counted, so one more is allowed
    assert not sup.gave_up, lines(out)
    assert lines(out)[-1].endswith("(restart 2)")


def test_a_part_that_stays_up_starts_over_with_a_clean_count(make: Callable[..., Any]) -> None:
    sup, factory, out, clock = make(CRASH, CRASH, LONG, stable_s=30)
    sup.start()
    for _ in range(2):
        wait_exit(factory.procs[-1])
        sup.poll()
        clock.now += 5
        sup.poll()
    assert lines(out)[-2].endswith("restarting in 1 s (restart 2)")
    long_one = factory.procs[-1]
    assert alive(long_one.pid)
    clock.now += 31
    sup.poll()  # stayed up: counter and backoff reset
    os.kill(long_one.pid, signal.SIGKILL)
    wait_exit(long_one)
    sup.poll()
    assert lines(out)[-1] == ("[demo] kiosk-001 edge was killed by SIGKILL; restarting in 0.5 s "
                              "(restart 1)")
    assert sup.restarts == 3


def test_a_stop_during_the_backoff_does_not_restart(make: Callable[..., Any]) -> None:
    sup, factory, out, clock = make(CRASH, LONG, backoff_s=0.3)
    sup.start()
    wait_exit(factory.procs[0])
    sup.poll()
    assert sup.restart_pending
    sup.stop()
    clock.now += 60
    sup.poll()
    assert len(factory.procs) == 1
    assert not any("restarted" in line for line in lines(out))


def test_a_halt_from_another_thread_with_the_real_clock_does_not_restart() -> None:
    out = io.StringIO()
    factory = Factory(CRASH, LONG)
    sup = Supervised("central", factory, out=out, backoff_s=0.3)
    try:
        sup.start()
        wait_exit(factory.procs[0])
        sup.poll()
        assert sup.restart_pending
        t = threading.Thread(target=sup.halt)  # as a signal handler's stop would
        t.start()
        t.join(5)
        time.sleep(0.5)  # behaviour under test: past the 0.3 s backoff, still no restart
        sup.poll()
        assert len(factory.procs) == 1 and "restarted" not in out.getvalue()
    finally:
        sup.stop()
        factory.cleanup()


def test_stop_leaves_no_process_of_the_part_alive(make: Callable[..., Any]) -> None:
    sup, _, _, _ = make(FAMILY, stdout=subprocess.PIPE)
    proc = sup.start()
    assert proc.stdout is not None
    grandchild = int(proc.stdout.readline())
    assert alive(proc.pid) and alive(grandchild)
    sup.stop()
    wait_until(lambda: not alive(grandchild), 5, what="the grandchild gone")
    assert not alive(proc.pid)
    proc.stdout.close()


def test_a_crashed_part_takes_its_process_group_with_it(make: Callable[..., Any]) -> None:
    """Whatever the dead part left in its group (its own children) goes before a restart."""
    sup, _, out, _ = make(FAMILY, LONG, stdout=subprocess.PIPE)
    proc = sup.start()
    assert proc.stdout is not None
    grandchild = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    wait_exit(proc)
    sup.poll()
    wait_until(lambda: not alive(grandchild), 5, what="the grandchild gone")
    assert "was killed by SIGKILL" in lines(out)[-1]
    proc.stdout.close()


def test_a_failing_restart_counts_as_one_more_attempt(make: Callable[..., Any]) -> None:
    out, clock = io.StringIO(), Clock()
    calls = {"n": 0}

    def factory() -> subprocess.Popen[bytes]:
        calls["n"] += 1
        if calls["n"] == 1:
            return subprocess.Popen(CRASH, start_new_session=True)
        raise OSError("no such file")

    sup = Supervised("platform", factory, out=out, clock=clock, max_restarts=2)
    sup.start()
    assert sup.proc is not None
    wait_exit(sup.proc)
    sup.poll()
    clock.now += 1
    sup.poll()
    assert lines(out)[-1] == ("[demo] platform could not be restarted (no such file); "
                              "restarting in 1 s (restart 2)")
    clock.now += 1
    sup.poll()
    assert sup.gave_up and "giving up after 2 restarts" in lines(out)[-1]


def test_describe_exit() -> None:
    assert describe_exit(1) == "exited with code 1"
    assert describe_exit(0) == "exited with code 0"
    assert describe_exit(-9) == "was killed by SIGKILL"
    assert describe_exit(-15) == "was killed by SIGTERM"


# -- the real site -------------------------------------------------------------------------

def _pids_with(text: str) -> list[int]:
    """Pids of live processes whose command line mentions ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


@pytest.mark.stack
def test_ykt_demo_restarts_a_killed_edge(tmp_path: Path) -> None:
    # Nothing skips (README): without root or pcscd this is a failure, as for every stack test.
    assert os.geteuid() == 0 and shutil.which("pcscd"), "the demo needs root and pcscd"
    # Short on purpose: pcscd's and vpcd's Unix sockets live below it (108-byte limit), and
    # pytest's own tmp_path can be longer than that allows.
    workdir = Path(tempfile.mkdtemp(prefix="ykt-demo-", dir="/tmp"))
    repo = Path(__file__).resolve().parents[3]
    demo = subprocess.Popen([sys.executable, "-m", "yikatong.cli", "demo",
                             "--workdir", str(workdir)],
                            cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True)
    output: list[str] = []

    def reader() -> None:
        assert demo.stdout is not None
        for line in demo.stdout:
            output.append(line.rstrip("\n"))

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        wait_until(lambda: any("Press Ctrl-C" in x for x in output) or demo.poll() is not None,
                   180, what="the demo to come up", interval=0.2)
        assert demo.poll() is None, "\n".join(output)
        edge_cfg = workdir / "kiosk-001" / "edge.toml"
        cfg = tomllib.loads(edge_cfg.read_text())
        health = f"http://127.0.0.1:{cfg['api']['port']}/v1/health"
        auth = {"Authorization": "Bearer " + Path(cfg["api"]["token_file"]).read_text().strip()}

        def healthy() -> bool:
            try:
                return httpx.get(health, headers=auth, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 60, what="kiosk-001 edge to answer", interval=0.2)
        pids = _pids_with(str(edge_cfg))
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGKILL)
        wait_until(lambda: any(re.fullmatch(r"\[demo\] kiosk-001 edge restarted \(pid \d+\)", x)
                               for x in output), 30, what="the restart line", interval=0.2)
        assert ("[demo] kiosk-001 edge was killed by SIGKILL; restarting in 0.5 s (restart 1)"
                in output), "\n".join(output)
        new_pid = int(re.findall(r"kiosk-001 edge restarted \(pid (\d+)\)", "\n".join(output))[0])
        assert new_pid != pids[0]
        wait_until(healthy, 60, what="the restarted edge to answer /v1/health", interval=0.2)
        assert _pids_with(str(edge_cfg)) == [new_pid]
        # nothing else was restarted or stopped (the enrollment approvals came before the kill)
        assert [x for x in output
                if x.startswith("[demo]") and not x.startswith("[demo] approved ")] == [
            "[demo] kiosk-001 edge was killed by SIGKILL; restarting in 0.5 s (restart 1)",
            f"[demo] kiosk-001 edge restarted (pid {new_pid})"]
    finally:
        if demo.poll() is None:
            demo.send_signal(signal.SIGTERM)
        try:
            code = demo.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait(10)
            raise
        t.join(10)
    assert code == 0, "\n".join(output)
    assert "Stopped; nothing left running." in output
    wait_until(lambda: not _pids_with(str(workdir)), 10, what="every demo process to be gone",
               interval=0.2)
    shutil.rmtree(workdir, ignore_errors=True)
