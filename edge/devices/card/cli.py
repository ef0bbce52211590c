"""``ykt card read`` and ``ykt card sam``: technician commands on the local readers.

``read`` prints the decoded card (masked unless ``--show-personal-data``); without a
usable SAM it prints the freely readable issuer data and says why the rest is missing.
``read --photo FILE`` also decodes the photo and writes a re-encoded copy (PNG or JPEG by
the file's suffix) — only with ``--show-personal-data``: a face is personal data.
``sam`` verifies the SAM PIN once (never retried, never with the last try, never a PIN
the SAM already rejected — the daemon's record in the state dir is shared) and prints the
SAM's identity and PIN state (verified, tries left, a recorded PIN fault) — the state
also when the PIN is refused.
Exit codes: 0 done, 1 card/SAM error (message in English and Chinese on stderr),
2 configuration or usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import tomllib
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge.devices.card import errors as E
from edge.devices.card.card_session import CardSession
from edge.devices.card.config import CardConfig, read_sam_pin
from edge.devices.card.hotlist import HotList
from edge.devices.card.photo import DecodedPhoto, decode_photo
from edge.devices.card.pinstate import SamPinLedger
from edge.devices.card.sam_session import SamSession
from edge.devices.card.service import reader_matches
from edge.devices.card.transport import PyscardTransport
from yikatong.common.errors import LocalizedError
from yikatong.common.privacy import mask_card_number

__all__ = ["add_card_commands", "list_readers", "load_card_config"]


class ConfigFileError(LocalizedError):
    """A config file that cannot be used; the message names the file and the key."""

    code = "config_error"

    def __init__(
        self, message: str, message_zh: str = "读卡配置文件有误，请检查文件和配置项"
    ) -> None:
        super().__init__(message, message_zh)


def load_card_config(path: Path | None) -> CardConfig:
    """``[card]`` of a TOML file (or the whole file when it has no such table)."""
    if path is None:
        return CardConfig()
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigFileError(f"{path}: {exc}") from exc
    section = data.get("card", data)
    prefix = "card." if "card" in data else ""
    try:
        return CardConfig.model_validate(section)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = prefix + ".".join(str(p) for p in first["loc"])
        raise ConfigFileError(f"{path}: {key}: {first['msg']}") from exc


def list_readers() -> list[str]:
    """PC/SC reader names (empty when pcscd has none); ReaderUnavailable without pcscd."""
    from smartcard import scard as s

    hr, ctx = s.SCardEstablishContext(s.SCARD_SCOPE_USER)
    if hr != s.SCARD_S_SUCCESS:
        raise E.ReaderUnavailable(f"PC/SC service not available: {s.SCardGetErrorMessage(hr)}",
                                  "读卡服务不可用。")
    try:
        hr, readers = s.SCardListReaders(ctx, [])
        if hr == s.SCARD_E_NO_READERS_AVAILABLE:
            return []
        if hr != s.SCARD_S_SUCCESS:
            raise E.ReaderUnavailable(f"Cannot list readers: {s.SCardGetErrorMessage(hr)}",
                                      "无法获取读卡器列表。")
        return list(readers)
    finally:
        s.SCardReleaseContext(ctx)


def _pick(readers: list[str], pattern: str, what: str) -> str:
    for r in readers:
        if reader_matches(pattern, r):
            return r
    raise E.ReaderUnavailable(f"No {what} reader matches {pattern!r} (readers: {readers})",
                              "未找到读卡器。")


def _fail(exc: E.CardError) -> int:
    print(f"error: {exc.message}\n错误：{exc.message_zh}", file=sys.stderr)
    return 1


def _open_sam(config: CardConfig, readers: list[str]) -> SamSession:
    reader = _pick(readers, config.sam_reader, "SAM")
    pin = read_sam_pin(config.sam_pin_file)
    # The daemon's failure record: a PIN the SAM rejected is not presented again from here.
    sam = SamSession(PyscardTransport(reader, apdu_timeout=config.timeouts.apdu_s), pin,
                     ledger=SamPinLedger(config.sam_pin_state_path()))
    try:
        sam.open()
    except BaseException:
        sam.close()
        raise
    return sam


def _print(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(doc, ensure_ascii=False, indent=2, sort_keys=True))
        return

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            print(f"{prefix}: {value}")
    walk("", doc)


_PHOTO_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}


def _photo_format(path: Path) -> str | None:
    return _PHOTO_SUFFIXES.get(path.suffix.lower())


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` readable by the owner only, all or nothing (temp file + rename)."""
    fd, tmp = tempfile.mkstemp(prefix=".ykt-photo-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)  # mkstemp already created it 0600
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cmd_read(args: argparse.Namespace) -> int:
    """``ykt card read``."""
    try:
        config = load_card_config(args.config)
    except ConfigFileError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    masked = not args.show_personal_data
    photo_path: Path | None = args.photo
    if photo_path is not None:
        if masked:
            print("refused: --photo writes the holder's face (personal data); add "
                  "--show-personal-data to confirm\n"
                  "已拒绝：照片属于个人信息，导出照片须同时指定 --show-personal-data",
                  file=sys.stderr)
            return 2
        if _photo_format(photo_path) is None:
            print(f"--photo {photo_path}: use a .png, .jpg or .jpeg file name\n"
                  "照片文件名须以 .png、.jpg 或 .jpeg 结尾", file=sys.stderr)
            return 2
    photo: DecodedPhoto | None = None
    hotlist = HotList(config.hotlist_path) if config.hotlist_path.exists() else None
    sam: SamSession | None = None
    try:
        readers = list_readers()
        reader = _pick(readers, args.reader or config.patient_reader, "patient")
        sam_error: E.CardError | None = None
        try:
            sam = _open_sam(config, readers)
        except E.SamPinError:
            raise  # a wrong PIN is not a "read less" situation: stop and say so
        except E.CardError as exc:
            sam_error = exc
        transport = PyscardTransport(reader, apdu_timeout=config.timeouts.apdu_s)
        try:
            session = CardSession(transport, sam, config.auth.to_scheme(),
                                  config.timeouts.to_timeouts(), profile=config.profile(),
                                  hotlist=hotlist)
            doc: dict[str, Any] = {"reader": reader, "atr": transport.atr.hex().upper()}
            if sam is None:
                issuer = session.read_issuer()
                d = asdict(issuer)
                d["issuer_certificate"] = f"<{len(issuer.issuer_certificate)} bytes>"
                if masked:
                    d["card_number"] = mask_card_number(issuer.card_number)
                    d["security_code"] = "***"
                doc["issuer"] = d
                doc["incomplete"] = sam_error.to_dict() if sam_error else "no SAM"
            else:
                doc.update(session.read_all().to_dict(masked=masked))
            if photo_path is not None:
                if sam is None:
                    # The photo needs the SAM's authentication: there is nothing to write.
                    raise sam_error or E.SamUnavailable()
                photo = decode_photo(session.read_photo())
                doc["photo"] = {**photo.describe(), "file": str(photo_path)}
            doc["apdus"] = session.last_apdus
        finally:
            transport.close()
    except E.CardError as exc:
        return _fail(exc)
    finally:
        if sam is not None:
            sam.close()
        if hotlist is not None:
            hotlist.close()
    if photo is not None and photo_path is not None:
        try:
            _write_private(photo_path, photo.encode(_photo_format(photo_path) or "png"))
        except OSError as exc:
            print(f"error: cannot write {photo_path}: {exc}\n错误：无法写入照片文件",
                  file=sys.stderr)
            return 1
    _print(doc, args.json)
    if "incomplete" in doc:
        print("warning: SAM not available, only the issuer data was read\n"
              "提示：PSAM 不可用，仅读取了发卡机构数据", file=sys.stderr)
    return 0


def cmd_sam(args: argparse.Namespace) -> int:
    """``ykt card sam``: identity and PIN state; the state is printed on a PIN refusal too."""
    try:
        config = load_card_config(args.config)
    except ConfigFileError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if args.reader:
        config = config.model_copy(update={"sam_reader": args.reader})
    try:
        reader = _pick(list_readers(), config.sam_reader, "SAM")
        pin = read_sam_pin(config.sam_pin_file)
        transport = PyscardTransport(reader, apdu_timeout=config.timeouts.apdu_s)
    except E.CardError as exc:
        return _fail(exc)
    sam = SamSession(transport, pin, ledger=SamPinLedger(config.sam_pin_state_path()))
    try:
        try:
            sam.open()
        except E.SamPinError as exc:
            # What the technician came for: tries left, the recorded fault. Then the error.
            _print(sam.status(), args.json)
            return _fail(exc)
        except E.CardError as exc:
            return _fail(exc)
        _print(sam.status(), args.json)
    finally:
        sam.close()
    return 0


def add_card_commands(subparsers: Any) -> None:
    """Add ``card read`` and ``card sam`` to an argparse subparsers object."""
    card = subparsers.add_parser("card", help="health card reader commands")
    sub = card.add_subparsers(dest="card_command", required=True)
    read = sub.add_parser("read", help="read and decode the card in the patient reader")
    read.add_argument("--json", action="store_true", help="print JSON")
    read.add_argument("--show-personal-data", action="store_true",
                      help="do not mask names, ID numbers, phones, clinical data")
    read.add_argument("--reader", help="reader name pattern (glob), overrides the config")
    read.add_argument("--photo", type=Path, metavar="FILE",
                      help="also write the decoded photo to FILE (.png/.jpg; needs "
                           "--show-personal-data)")
    read.add_argument("--config", type=Path, help="TOML file with a [card] section")
    read.set_defaults(func=cmd_read)
    sam = sub.add_parser("sam", help="verify the SAM PIN; show the SAM's identity and PIN "
                                     "state (verified, tries left, recorded fault)")
    sam.add_argument("--json", action="store_true", help="print JSON")
    sam.add_argument("--reader", help="SAM reader name pattern (glob)")
    sam.add_argument("--config", type=Path, help="TOML file with a [card] section")
    sam.set_defaults(func=cmd_sam)
