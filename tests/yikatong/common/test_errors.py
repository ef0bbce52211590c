"""Every error of ours has one root, ``LocalizedError``: a code and screen text in two languages.

The check walks every module of our packages rather than listing the roots, so a new
``class SomethingError(Exception)`` anywhere fails here instead of silently growing a second
shape of error (docs/architecture.md, "Packages and what may import what").

The walk runs in a fresh interpreter (this file run as a script), which keeps the import of
every module of every package out of the test session.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import re
import subprocess
import sys
from functools import cache
from typing import Any

import pytest

PACKAGES = ("yikatong", "edge", "central", "kiosk", "firmware_tools")

#: Public exceptions that are deliberately not ``LocalizedError``, each with the reason.
#: The list must stay exact: an entry that no longer exists or has joined the root fails.
EXEMPT: dict[str, str] = {
    # Test doubles: control-channel and settings errors of simulators, never shown to a
    # patient or to staff; they stay ValueError/RuntimeError for their own callers.
    "central.platform.sim.config.SettingsError": "simulator settings (a ValueError)",
    "edge.devices.printer.sim.control.CommandError": "simulator control command (a ValueError)",
    "edge.devices.printer.sim.paper.FontNotFound": "simulator's font lookup (a RuntimeError)",
    # The fleet simulator's reply check: counted in its own report, never shown to anyone.
    "yikatong.site.simdevice.Mismatch": "simulator's reply check (an Exception)",
    # A bug in a flow's state machine, logged and recovered by kiosk/session.py; no screen text.
    "kiosk.flows.base.IllegalTransition": "programming error in a flow",
}

_CJK = re.compile(r"[\u4e00-\u9fff]")


def _roots() -> dict[str, Any]:
    """Each package root (and a few subclasses), constructed the way its package raises it."""
    from firmware_tools.cli import FwError

    from central.broker import BrokerError
    from central.payments import PaymentError
    from central.platform.errors import PlatformError, PlatformRejected, PlatformUnavailable
    from central.platform.sim.errors import business, not_found
    from central.registry import RegistryError
    from edge.devices.card.cli import ConfigFileError
    from edge.devices.card.errors import CardError
    from edge.fleet.audit import AuditError
    from kiosk.edge_client import EdgeError
    from yikatong.common.config import ConfigError
    from yikatong.protocol.errors import BadTopic, ProtocolError

    return {
        "AuditError": AuditError("audit detail may not carry 'name'", "审计记录含明文个人信息"),
        "CardError": CardError(),
        "ConfigFileError": ConfigFileError("card.toml: card.sam_reader: bad value"),
        "PlatformError": PlatformError("down", "平台不可用"),
        "PlatformRejected": PlatformRejected("slot_full", "no slots left"),
        "PlatformUnavailable": PlatformUnavailable("connect timeout"),
        "BrokerError": BrokerError("mosquitto_passwd not found", "找不到 mosquitto_passwd 程序"),
        "PaymentError": PaymentError("not_found", "no payment", "没有该支付记录"),
        "RegistryError": RegistryError("unknown device 'k1'", "未登记的设备：'k1'"),
        "EdgeError": EdgeError(503, "edge_unavailable", "not running", "终端服务未运行"),
        "ProtocolError": ProtocolError("bad", "报文错误"),
        "BadTopic": BadTopic("a/#", "wildcard"),
        "ConfigError": ConfigError("edge.toml", "api.port", "must be > 0"),
        "FwError": FwError("key exists; use --force"),
        "SimError": not_found("patient", "患者", "P1"),
        "SimError.business": business("slot_full", "full", "号源已满"),
    }


def _inventory() -> dict[str, Any]:
    """What the fresh interpreter reports: every public exception class, and the roots."""
    from yikatong.common.errors import LocalizedError

    classes: dict[str, dict[str, Any]] = {}
    for top in PACKAGES:
        pkg = importlib.import_module(top)
        for info in pkgutil.walk_packages(pkg.__path__, f"{top}."):
            module = importlib.import_module(info.name)
            for name, cls in vars(module).items():
                if not (inspect.isclass(cls) and issubclass(cls, BaseException)
                        and cls.__module__ == module.__name__ and not name.startswith("_")):
                    continue
                row: dict[str, Any] = {"localized": issubclass(cls, LocalizedError)}
                if row["localized"]:
                    row["code"] = cls.code
                    # Some errors take their code per instance (Denied, CaError, PaymentError),
                    # or a base they call does (DocumentNotFound via SessionError).
                    row["code_given"] = any(
                        "code" in inspect.signature(k.__init__).parameters
                        for k in cls.__mro__ if "__init__" in vars(k))
                    try:
                        row["zh_no_args"] = cls().message_zh
                    except TypeError:
                        row["zh_no_args"] = None
                classes[f"{cls.__module__}.{cls.__qualname__}"] = row
    roots = {name: {**e.as_dict(), "localized": isinstance(e, LocalizedError), "str": str(e),
                    "reason": e.reason}
             for name, e in _roots().items()}
    return {"default_code": LocalizedError.code, "classes": classes, "roots": roots}


@cache
def inventory() -> dict[str, Any]:
    """Run this file as a script and read its JSON."""
    run = subprocess.run([sys.executable, __file__], capture_output=True, text=True,
                         timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-4000:]
    result: dict[str, Any] = json.loads(run.stdout)
    return result


def test_the_walk_sees_every_package() -> None:
    tops = {name.split(".", 1)[0] for name in inventory()["classes"]}
    assert tops == set(PACKAGES)


def test_every_public_exception_derives_from_localized_error() -> None:
    strays = sorted(name for name, row in inventory()["classes"].items()
                    if not row["localized"] and name not in EXEMPT)
    assert strays == [], "derive these from yikatong.common.errors.LocalizedError"


def test_exemptions_are_still_needed() -> None:
    classes = inventory()["classes"]
    stale = sorted(name for name in EXEMPT if name not in classes or classes[name]["localized"])
    assert stale == [], "drop these from EXEMPT"


def test_every_error_has_a_code_of_its_own() -> None:
    default = inventory()["default_code"]
    bad = sorted(name for name, row in inventory()["classes"].items()
                 if row["localized"] and not name.endswith(".LocalizedError")
                 and row["code"] == default and not row["code_given"])
    assert bad == [], "give these (or their package root) a class-level code"


def test_errors_that_build_their_own_text_have_chinese_text() -> None:
    """Every error constructible without arguments (card, printer, uplink …) has screen text."""
    missing = sorted(name for name, row in inventory()["classes"].items()
                     if row.get("zh_no_args") is not None and not _CJK.search(row["zh_no_args"]))
    assert missing == []


ROOT_NAMES = ("AuditError", "CardError", "ConfigFileError", "PlatformError", "PlatformRejected",
              "PlatformUnavailable", "BrokerError", "PaymentError", "RegistryError",
              "EdgeError", "ProtocolError", "BadTopic", "ConfigError", "FwError", "SimError",
              "SimError.business")


@pytest.mark.parametrize("name", ROOT_NAMES)
def test_roots_carry_a_code_and_both_messages(name: str) -> None:
    error = inventory()["roots"][name]
    assert error["localized"]
    assert error["code"] and error["code"] != inventory()["default_code"]
    assert error["message"] and _CJK.search(error["message_zh"])
    assert error["str"] == f"{error['message']} / {error['message_zh']}"


def test_the_roots_list_is_complete() -> None:
    assert set(inventory()["roots"]) == set(ROOT_NAMES)


def test_reasons_given_by_a_subclass_survive_the_root() -> None:
    roots = inventory()["roots"]
    assert roots["BadTopic"]["reason"] == "wildcard"
    assert roots["PlatformRejected"]["code"] == "slot_full"
    assert roots["PlatformRejected"]["reason"] == "no slots left"
    assert roots["PaymentError"]["reason"] == "not_found"
    assert roots["SimError"]["code"] == "not_found"
    # A kiosk flow looks advice up by the platform's reason: no reason stays empty.
    assert roots["EdgeError"]["reason"] == ""


if __name__ == "__main__":
    print(json.dumps(_inventory(), ensure_ascii=False))
