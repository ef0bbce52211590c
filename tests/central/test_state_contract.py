"""The ``state`` message as docs/protocol.md §7 writes it: the document's own examples are
what the device publishes and what central applies (a device built from the document is
online, not "bad state payload")."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from pg_support import BOTH_ENGINES

from central.forwarder import Forwarder, ForwarderSettings
from central.store import open_store
from yikatong.mqtt.session import InboundMessage, state_payload
from yikatong.protocol.envelope import decode
from yikatong.protocol.messages import StateBirth, StateWill, parse_state

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
NOW = datetime(2024, 5, 1, 8, 30, tzinfo=UTC)


def doc_examples() -> list[bytes]:
    text = DOC.read_text()
    section = text[text.index("**State**"):text.index("**Hot list**")]
    return [line.encode() for line in re.findall(r'^\{"body".*\}$', section, re.M)]


def test_the_documents_examples_parse_as_a_birth_and_a_will() -> None:
    birth, will = (parse_state(decode(raw)) for raw in doc_examples())
    assert isinstance(birth, StateBirth) and birth.boot_seq == 17
    assert isinstance(will, StateWill) and will.boot_seq == 17


def test_the_device_publishes_what_the_document_shows() -> None:
    ours = decode(state_payload(dev="kiosk-0001", online=True, boot_seq=17, now=NOW,
                                version="0.1.0", role="kiosk"))
    theirs = decode(doc_examples()[0])
    assert (ours.type, ours.dev, ours.body) == (theirs.type, theirs.dev, theirs.body)


@BOTH_ENGINES
async def test_central_applies_the_documents_examples_and_the_legacy_form(tmp_path,
                                                                          central_db) -> None:
    store = open_store(central_db(tmp_path))
    store.add_device("kiosk-0001", "kiosk", NOW)
    fwd = Forwarder(ForwarderSettings(), store, adapter=None, clock=lambda: NOW)  # type: ignore[arg-type]
    topic = "ykt/v1/dev/kiosk-0001/state"
    try:
        birth, will = doc_examples()
        await fwd.handle(InboundMessage(topic, birth, 1, True))
        d = store.device("kiosk-0001")
        assert d is not None and d.online and d.last_boot_seq == 17 and d.version == "0.1.0"
        await fwd.handle(InboundMessage(topic, will, 1, True))
        d = store.device("kiosk-0001")
        assert d is not None and not d.online
        # A device of an earlier version: the bare body, still understood.
        await fwd.handle(InboundMessage(
            topic, b'{"boot_seq":18,"online":true,"version":"0.0.9"}', 1, True))
        d = store.device("kiosk-0001")
        assert d is not None and d.online and d.last_boot_seq == 18
        # An envelope about another device on this device's topic is not applied.
        other = birth.replace(b'"dev":"kiosk-0001"', b'"dev":"kiosk-0002"').replace(
            b'"boot_seq":17', b'"boot_seq":19')
        await fwd.handle(InboundMessage(topic, other, 1, True))
        d = store.device("kiosk-0001")
        assert d is not None and d.last_boot_seq == 18
    finally:
        store.close()
