"""Fixtures of the device update tests: real bundles (built once per session, offline, by
``tests/bundle_support.py``), a bundle server on loopback, an installed base root.

``bundles`` builds versions of *this* tree: 1.5.0 (the old one), 1.6.0 (the new one) and
1.7.0 built from a copy of the tree whose daemon crashes at start.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from bundle_support import REPO, build_test_bundle, write_release_pub

#: The line that makes the 1.7.0 daemon crash at start (injected into a copy of the tree).
CRASH_LINE = '    raise SystemExit("injected crash at start (update test)")\n'
TOKEN = "test-download-token-0123456789"


@dataclass
class Bundles:
    """Signed test bundles by name, and the release public key file that trusts them."""

    root: Path
    pub: Path
    dirs: dict[str, Path] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Path:
        return self.dirs[name]

    def copy(self, name: str, dest: Path) -> Path:
        """A private copy to tamper with."""
        shutil.copytree(self.dirs[name], dest)
        return dest


def _crashing_tree(dest: Path) -> Path:
    ignore = shutil.ignore_patterns(".git", ".venv", "venv", "build", "dist", "*.egg-info",
                                    "__pycache__", ".*_cache", "tests", "bench", "screens",
                                    "node_modules")
    shutil.copytree(REPO, dest, ignore=ignore)
    daemon = dest / "edge" / "daemon.py"
    text = daemon.read_text()
    anchor = '    """Run the daemon until SIGTERM/SIGINT."""\n'
    assert anchor in text, "edge/daemon.py main() changed: update the crash injection"
    daemon.write_text(text.replace(anchor, anchor + CRASH_LINE, 1))
    return dest


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    root = tmp_path_factory.mktemp("bundles")
    b = Bundles(root, write_release_pub(root / "release.pub"))
    for version in ("1.5.0", "1.6.0"):
        build_test_bundle(root / version, version=version)
        b.dirs[version] = root / version
    tree = _crashing_tree(root / "crash-src")
    build_test_bundle(root / "1.7.0", version="1.7.0", project=tree)
    b.dirs["1.7.0"] = root / "1.7.0"
    return b


def manifest_sha(bundle: Path) -> str:
    return hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()


# --------------------------------------------------------------------------- bundle server


class BundleServer:
    """Serves ``/<name>/manifest.json|manifest.sig|files/<path>`` of bundle folders over
    HTTP on loopback, with ``Range`` and a bearer token, like central's bundle download.

    ``cut_after``: bytes after which the next response of a file is cut (once per path),
    to exercise resuming. ``requests`` lists (path, Range header) as served.
    """

    def __init__(self) -> None:
        self.dirs: dict[str, Path] = {}
        self.cut_after: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_a: object) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append((self.path, self.headers.get("Range")))
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self.send_error(401)
                    return
                name, _, rest = self.path.lstrip("/").partition("/")
                base = server.dirs.get(name)
                rel = rest.removeprefix("files/")
                path = (base / rel) if base is not None else None
                if path is None or ".." in rest or not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start, status = 0, 200
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes=") and rng.endswith("-"):
                    start, status = int(rng[6:-1]), 206
                    if start >= len(data):
                        self.send_error(416)
                        return
                body = data[start:]
                cut = server.cut_after.pop(rel, None)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def add(self, name: str, bundle: Path) -> str:
        self.dirs[name] = bundle
        return self.url(name)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[BundleServer]:
    s = BundleServer()
    yield s
    s.close()


# --------------------------------------------------------------------------- installed roots


def ykt_update(python: Path | str, *args: str, env: dict[str, str] | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``ykt update …`` with the given interpreter (a slot's, or this venv's)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(python), "-m", "yikatong.cli", "update", *args],
                          capture_output=True, text=True, timeout=timeout, check=False,
                          env={**clean, **(env or {})}, cwd=tempfile.gettempdir())


def install_base(bundles: Bundles, root: Path, version: str = "1.5.0") -> Path:
    """``ykt update install`` (this venv's) of ``version`` into an empty root: slot a,
    committed at once (the first install)."""
    r = ykt_update(sys.executable, "install", str(bundles[version]), "--root", str(root),
                   "--release-keys", str(bundles.pub))
    assert r.returncode == 0, r.stderr
    assert "first install" in r.stdout
    return root


class Kit:
    """The helpers above for test modules (which cannot import a conftest)."""

    token = TOKEN
    crash_line = CRASH_LINE
    manifest_sha = staticmethod(manifest_sha)
    ykt_update = staticmethod(ykt_update)
    install_base = staticmethod(install_base)


@pytest.fixture(scope="session")
def kit() -> type[Kit]:
    return Kit
