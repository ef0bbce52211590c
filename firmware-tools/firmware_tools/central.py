"""``ykt fw``'s way to central: who signs in (session or admin token), and central's answers.

Credentials, first found wins:

1. ``--token-file FILE``: central's admin token (the bootstrap administrator);
2. ``$YKT_CENTRAL_ADMIN_TOKEN``: the same, from the environment;
3. the session of ``ykt fw login``, kept in ``~/.config/yikatong/fw-session`` (mode 0600;
   ``$YKT_FW_SESSION`` names another file): central's URL, the session token, who.

Central's refusals become :class:`FwError` in both languages ("central refused: technician
role needed / 需要技术员权限"); a central that cannot be reached says so. Never a traceback.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import httpx

from yikatong.common.config import read_secret
from yikatong.common.errors import LocalizedError

__all__ = ["DEFAULT_CENTRAL", "Central", "FwError", "NotAvailable", "clear_session", "connect",
           "load_session", "save_session", "session_path", "write_file"]

DEFAULT_CENTRAL = "http://127.0.0.1:8800"
SESSION_ENV = "YKT_FW_SESSION"
TOKEN_ENV = "YKT_CENTRAL_ADMIN_TOKEN"  # noqa: S105 - a variable name
#: Sent with every request: central refuses cookie-authenticated writes without it (CSRF),
#: and wants it on sign-in.
CSRF = {"X-Requested-With": "ykt"}


class FwError(LocalizedError):
    """A technician command failed; the message says what to do, in both languages."""

    code = "fw_error"

    def __init__(self, message: str, message_zh: str = "技术员命令失败，请按提示处理") -> None:
        super().__init__(message, message_zh)


class NotAvailable(FwError):
    """Central has no such endpoint (an older central, or no fleet service)."""


# -- the session file ---------------------------------------------------------------------

def session_path() -> Path:
    """Where ``ykt fw login`` keeps the session."""
    env = os.environ.get(SESSION_ENV)
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "yikatong" / "fw-session"


def load_session() -> dict[str, Any] | None:
    """The saved session, or None (no file, or not one of ours)."""
    path = session_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise FwError(f"cannot read the session file {path}: {exc}; run ykt fw logout",
                      f"无法读取会话文件 {path}，请运行 ykt fw logout") from None
    if not isinstance(data, dict) or not data.get("token") or not data.get("central"):
        return None
    return data


def write_file(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Write ``path`` atomically with ``mode`` (default 0600: a secret).

    A temporary file in the same folder gets ``mode`` before anything is written to it, is
    synced, then replaces ``path``: the content is never readable with another mode, even
    when ``path`` existed with a wider one (which the new file replaces, mode and all), and a
    crash leaves the old file or the new one, never half of it.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_session(data: dict[str, Any]) -> Path:
    """Write the session atomically with mode 0600 (its folder 0700 when new)."""
    path = session_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_file(path, json.dumps(data, ensure_ascii=False, indent=1), 0o600)
    return path


def clear_session() -> bool:
    """Delete the session file; False when there was none."""
    try:
        session_path().unlink()
    except FileNotFoundError:
        return False
    return True


# -- talking to central -------------------------------------------------------------------

def _norm(url: str) -> str:
    return url.rstrip("/")


class Central:
    """One central, with the credentials :func:`connect` chose."""

    def __init__(self, url: str, token: str | None, *, via: str) -> None:
        self.url = _norm(url)
        self.via = via  # "admin-token", "session" or "none"
        headers = dict(CSRF)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=15.0)

    def __enter__(self) -> Central:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def call(self, method: str, path: str, *, timeout: float | None = None, **kw: Any) -> Any:
        """Central's JSON answer, or :class:`FwError` saying why not."""
        try:
            r = self.http.request(method, path, timeout=timeout or 15.0, **kw)
        except httpx.HTTPError as exc:
            raise FwError(f"cannot reach central at {self.url}: {exc}",
                          f"无法连接中心服务 {self.url}") from None
        if r.status_code < 400:
            try:
                return r.json()
            except ValueError:
                raise FwError(f"central at {self.url} answered something that is not JSON",
                              "中心服务的回答无法识别") from None
        raise self._refusal(r, path)

    def _refusal(self, r: httpx.Response, path: str) -> FwError:
        try:
            body = r.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        err = body.get("error")
        if r.status_code == 404 and body.get("detail") == "Not Found":
            endpoint = path.split("?", maxsplit=1)[0]
            return NotAvailable(
                f"central at {self.url} has no {endpoint} (an older central, or "
                "fleet management is not enabled there)",
                "中心服务不支持此功能（版本较旧或未启用设备管理）")
        if r.status_code == 401 and self.via != "login":
            if self.via == "admin-token":
                return FwError("central refused the admin token", "中心服务拒绝了管理员令牌")
            if self.via == "session":
                return FwError(
                    "central refused: the session has ended — sign in again with "
                    f"ykt fw login --central {self.url} --user NAME",
                    "会话已结束，请重新登录（ykt fw login）")
            return FwError(
                "central refused: sign in first with ykt fw login --central "
                f"{self.url} --user NAME (or give --token-file)",
                "请先登录（ykt fw login）或提供管理员令牌")
        if isinstance(err, dict):  # central's older errors: {"error": {code, message, …}}
            return FwError(f"central refused: {err.get('message') or err.get('code')}",
                           str(err.get("message_zh") or "中心服务拒绝了请求"))
        if isinstance(err, str):
            return FwError(f"central refused: {body.get('message') or err}",
                           str(body.get("message_zh") or "中心服务拒绝了请求"))
        detail = body.get("detail")
        if isinstance(detail, list):  # request validation
            what = "; ".join(f"{'.'.join(str(x) for x in d.get('loc', ())[1:])}: "
                             f"{d.get('msg')}" for d in detail if isinstance(d, dict))
            return FwError(f"central refused the request: {what}", "请求内容无效")
        if detail:
            return FwError(f"central refused: {detail} (HTTP {r.status_code})",
                           "中心服务拒绝了请求")
        return FwError(f"central answered HTTP {r.status_code}", "中心服务返回错误")

    def zone_name(self) -> str:
        """The site's time zone (``/api/status`` answers it without sign-in)."""
        status = self.call("GET", "/api/status")
        return str(status.get("timezone") or "Asia/Shanghai")


def connect(central: str | None, token_file: Path | None) -> Central:
    """Central with the first credentials found (module docstring); may have none."""
    if token_file is not None:
        token = read_secret(token_file, None, what="central admin token")
        return Central(central or DEFAULT_CENTRAL, token, via="admin-token")
    env = os.environ.get(TOKEN_ENV, "").strip()
    if env:
        return Central(central or DEFAULT_CENTRAL, env, via="admin-token")
    session = load_session()
    if session is not None:
        url = _norm(str(session["central"]))
        if central is not None and _norm(central) != url:
            raise FwError(f"the saved session is for {url}, not {_norm(central)}: run "
                          f"ykt fw login --central {_norm(central)} --user NAME",
                          f"已保存的会话属于 {url}，请先登录 {_norm(central)}")
        return Central(url, str(session["token"]), via="session")
    return Central(central or DEFAULT_CENTRAL, None, via="none")
