"""Running the reference platform: ``ykt platform-sim`` and an in-thread server for tests."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from central.platform.sim.app import create_app
from central.platform.sim.config import PlatformSimSettings, SettingsError, load_sim_settings
from central.platform.sim.service import Clock
from yikatong.common.logging import setup_logging

__all__ = [
    "RunningServer",
    "add_platform_sim_arguments",
    "main",
    "serve",
    "start_in_thread",
]

log = logging.getLogger(__name__)

DEFAULT_PORT = 8600


def _config(settings: PlatformSimSettings, host: str, port: int, clock: Clock | None,
            log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(settings, clock=clock),
        host=host,
        port=port,
        log_level=log_level,
        # Requests held by a "timeout"/"drop" fault must not keep a shutdown waiting.
        timeout_graceful_shutdown=1,
        lifespan="off",
        log_config=None,  # our JSON, masking handlers (yikatong.common.logging) stay in charge
        access_log=False,
    )


def serve(settings: PlatformSimSettings, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          *, clock: Clock | None = None) -> None:
    """Run the platform with uvicorn until interrupted."""
    uvicorn.Server(_config(settings, host, port, clock, "info")).run()


@dataclass
class RunningServer:
    """A platform served by uvicorn on a background thread."""

    base_url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        """Ask uvicorn to exit and wait for the thread."""
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout)


def start_in_thread(settings: PlatformSimSettings, *, host: str = "127.0.0.1", port: int = 0,
                    clock: Clock | None = None, startup_timeout: float = 10.0) -> RunningServer:
    """Serve on ``host:port`` (0 picks a free port) from a daemon thread; wait until ready."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    server = uvicorn.Server(_config(settings, host, bound_port, clock, "warning"))
    # uvicorn installs signal handlers only on the main thread; this is not it.
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name=f"platform-sim:{bound_port}", daemon=True)
    thread.start()
    ready = threading.Event()
    while not ready.wait(0.02):
        if server.started:
            ready.set()
        elif not thread.is_alive():
            sock.close()
            raise RuntimeError("platform-sim server thread exited during startup")
        startup_timeout -= 0.02
        if startup_timeout <= 0:
            server.should_exit = True
            raise TimeoutError("platform-sim did not start in time")
    return RunningServer(f"http://{host}:{bound_port}", server, thread)


def add_platform_sim_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``ykt platform-sim`` options to ``parser``."""
    parser.add_argument("--config", type=Path, default=None,
                        help="TOML/JSON settings file ([platform_sim] table accepted)")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default loopback)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="listen port")
    parser.add_argument("--db", type=Path, default=None, help="SQLite database path")
    parser.add_argument("--seed", type=int, default=None, help="data generation seed")
    parser.add_argument("--admin", action="store_true", default=None,
                        help="enable the /admin endpoints (tests, demos)")


def main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """Run ``ykt platform-sim``; returns the process exit code."""
    if not isinstance(args, argparse.Namespace):
        parser = argparse.ArgumentParser(prog="ykt platform-sim",
                                         description="Reference hospital platform")
        add_platform_sim_arguments(parser)
        args = parser.parse_args(args)
    setup_logging("platform-sim")
    try:
        settings = load_sim_settings(args.config, db_path=args.db, seed=args.seed,
                                     admin_enabled=args.admin)
    except SettingsError as exc:
        print(f"ykt platform-sim: {exc}", file=sys.stderr)
        return 2
    if not 0 < args.port < 65536:
        print(f"ykt platform-sim: invalid port {args.port}", file=sys.stderr)
        return 2
    log.info("platform-sim: %s on %s:%d (db %s, seed %d)", settings.hospital_name, args.host,
             args.port, settings.db_path, settings.seed)
    serve(settings, args.host, args.port)
    return 0
