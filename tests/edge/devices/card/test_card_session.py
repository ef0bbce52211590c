"""CardSession (with its SamSession) against the simulators, in process (tier 1)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from edge.devices.card import errors as E
from edge.devices.card.card_session import CardProfile, CardSession, LocalToday, Timeouts
from edge.devices.card.exchange import MAX_GET_RESPONSES
from edge.devices.card.hotlist import HotList
from edge.devices.card.protocol.security import AuthScheme
from edge.devices.card.sam_session import SamSession
from edge.devices.card.sim.cardos import BankCardSim, BlankCardSim, Faults, HealthCardSim
from edge.devices.card.sim.sam import SamSim
from edge.devices.card.transport import InProcessTransport

PIN = "123456"
CARD_NO = "H11010119800101001"


def _today() -> dt.date:
    return dt.date(2026, 6, 1)


def make(card: object, *, sam: SamSim | None = None, pin: str = PIN, **kw: object
         ) -> tuple[CardSession, SamSim]:
    sam = sam or SamSim(PIN)
    ss = SamSession(InProcessTransport(sam, "sam"), pin)
    return CardSession(InProcessTransport(card, "patient"), ss, today=_today,  # type: ignore[arg-type]
                       **kw), sam  # type: ignore[arg-type]


def holder_card(**kw: object) -> HealthCardSim:
    return HealthCardSim.from_holder(name="张三", sex="1", ethnicity="01",
                                     birth_date="19800101", id_number="110101198001011234",
                                     card_number=CARD_NO, **kw)  # type: ignore[arg-type]


def test_read_identity_decodes_the_holder() -> None:
    session, _ = make(holder_card())
    ident = session.read_identity()
    assert (ident.name, ident.sex, ident.ethnicity, ident.birth_date, ident.id_number) == \
        ("张三", "1", "01", "19800101", "110101198001011234")
    assert (ident.card_number, ident.card_type, ident.city_code, ident.expiry) == \
        (CARD_NO, "1", "110100", "20351231")
    assert ident.expired is False
    assert ident.masked()["name"] == "张*"
    assert ident.masked()["id_number"] == "110***********1234"
    assert ident.masked()["card_number"] == "H110**********1001"


@pytest.mark.parametrize(("sam_auth", "t0", "sam_apdus"), [
    ("combined", True, ["80DE01", "00C000"]),  # T=0: 80DE answers 6110, fetched by 00C0
    ("combined", False, ["80DE01"]),  # T=1 answers the cryptogram directly
    ("split", True, ["80DE00", "80FA00", "00C000"]),
    ("split", False, ["80DE00", "80FA00"]),
])
def test_read_identity_apdu_budget(sam_auth: str, t0: bool, sam_apdus: list[str]) -> None:
    # 12 card APDUs + the SAM's; PIN/DF01 are once per SAM session (opened first).
    card = holder_card()
    session, sam = make(card, sam=SamSim(PIN, t0=t0),
                        scheme=AuthScheme(sam_auth=sam_auth))  # type: ignore[arg-type]
    session.sam.open()  # type: ignore[union-attr]
    before = len(card.commands)
    sent: list[bytes] = []
    inner = sam.process_apdu
    sam.process_apdu = lambda apdu: (sent.append(apdu), inner(apdu))[1]  # type: ignore[method-assign]
    assert session.read_identity().name == "张三"
    assert session.last_apdus == {"card": 12, "sam": len(sam_apdus)}
    assert len(card.commands) - before == 12
    assert [a[:3].hex().upper() for a in sent] == sam_apdus
    if sam_auth == "combined":  # the default: the budget of 14 holds for any SAM
        assert sum(session.last_apdus.values()) <= 14


def test_split_sam_commands_skip_reloading_the_same_key() -> None:
    # split mode keeps the loaded key: a second read of the same card needs no 80DE.
    card = holder_card()
    session, _ = make(card, scheme=AuthScheme(sam_auth="split"))
    session.read_identity()
    again = CardSession(InProcessTransport(card, "patient"), session.sam, today=_today,
                        scheme=AuthScheme(sam_auth="split"))
    again.read_identity()
    assert again.last_apdus == {"card": 12, "sam": 2}


def test_combined_sam_command_refused_by_a_two_step_sam() -> None:
    # A SAM that only knows 80DE P1=00 refuses the combined form with 6A86: typed SamError,
    # and the "split" setting reads the same card.
    session, _ = make(holder_card(), sam=SamSim(PIN, combined=False))
    with pytest.raises(E.SamError) as e:
        session.read_identity()
    assert e.value.sw == "6A86"
    session, _ = make(holder_card(), sam=SamSim(PIN, combined=False),
                      scheme=AuthScheme(sam_auth="split"))
    assert session.read_identity().name == "张三"


def test_cards_without_sfi_fall_back_to_select() -> None:
    card = holder_card(faults=Faults(supports_sfi=False))
    session, _ = make(card)
    session.sam.open()  # type: ignore[union-attr]
    assert session.read_identity().name == "张三"
    # one refused SFI read + three EF selects
    assert session.last_apdus["card"] == 16
    forced, _ = make(holder_card(faults=Faults(supports_sfi=False)),
                     profile=CardProfile("select"))
    forced.sam.open()  # type: ignore[union-attr]
    forced.read_identity()
    assert forced.last_apdus["card"] == 15


def test_hot_listed_card_is_refused_before_ef06(tmp_path: Path) -> None:
    hot = HotList(tmp_path / "hot.sqlite")
    hot.apply_delta(3, added=[CARD_NO])
    card = holder_card()
    session, _ = make(card, hotlist=hot)
    with pytest.raises(E.CardBlocked) as e:
        session.read_identity()
    assert "DDF1/EF06" not in card.reads
    assert e.value.card_number_masked == "H110**********1001"
    assert "挂失" in e.value.message_zh


@pytest.mark.parametrize("card", [BankCardSim(), BlankCardSim()])
def test_non_health_cards_are_refused(card: object) -> None:
    session, sam = make(card)
    with pytest.raises(E.NotAHealthCard) as e:
        session.read_identity()
    assert e.value.atr == card.atr  # type: ignore[attr-defined]
    assert e.value.sw == "6A82"
    assert sam.apdu_count == 0  # refused before any SAM work


def test_expired_card_flagged_or_rejected() -> None:
    session, _ = make(holder_card(faults=Faults(expired=True)))
    assert session.read_identity().expired is True
    session, _ = make(holder_card(faults=Faults(expired=True)))
    with pytest.raises(E.CardExpired) as e:
        session.read_identity(reject_expired=True)
    assert e.value.expiry == "20200101"


def test_wrong_sam_pin_is_never_retried() -> None:
    session, sam = make(holder_card(), pin="654321")
    with pytest.raises(E.SamPinError) as e:
        session.read_identity()
    assert e.value.retries_left == 2 and e.value.sw == "63C2"
    with pytest.raises(E.SamPinError):
        session.read_identity()
    assert sam.verify_count == 1
    assert sam.pin_tries_left == 2


def test_last_sam_pin_try_is_never_spent() -> None:
    sam = SamSim(PIN, pin_tries=1)
    session, _ = make(holder_card(), sam=sam, pin=PIN)  # even the right PIN is not risked
    with pytest.raises(E.SamPinTriesLow) as e:
        session.read_identity()
    assert e.value.retries_left == 1 and e.value.sw == "63C1"
    assert (sam.verify_count, sam.verify_queries, sam.pin_tries_left) == (0, 1, 1)
    assert session.sam.status()["pin_tries_left"] == 1  # type: ignore[union-attr]


def test_blocked_sam_pin_is_not_presented() -> None:
    sam = SamSim(PIN)
    sam.pin_tries_left = 0
    session, _ = make(holder_card(), sam=sam, pin=PIN)
    with pytest.raises(E.SamPinBlocked) as e:
        session.read_identity()
    assert e.value.retries_left == 0 and e.value.sw == "6983"
    assert sam.verify_count == 0


def test_wrong_pin_that_blocks_is_reported_blocked() -> None:
    sam = SamSim(PIN, pin_tries=2)  # 2 tries: the one spare try may be used once
    session, _ = make(holder_card(), sam=sam, pin="000000")
    with pytest.raises(E.SamPinError) as e:
        session.read_identity()
    assert e.value.retries_left == 1 and sam.verify_count == 1


def test_no_sam_means_sam_unavailable_after_the_free_data() -> None:
    session = CardSession(InProcessTransport(holder_card()), None)
    assert session.read_issuer().card_number == CARD_NO
    with pytest.raises(E.SamUnavailable):
        session.read_identity()


def test_wrong_issuer_keys_fail_authentication_with_retries() -> None:
    # A SAM of another scheme produces a cryptogram the card rejects.
    sam = SamSim(PIN, scheme=AuthScheme(cipher="AES-128"))
    session, _ = make(holder_card(), sam=sam)
    with pytest.raises(E.CardAuthFailed) as e:
        session.read_identity()
    assert e.value.retries_left == 2 and e.value.sw == "63C2"


def test_blocked_card_key() -> None:
    session, _ = make(holder_card(faults=Faults(auth_blocked=True)))
    with pytest.raises(E.CardAuthBlocked):
        session.read_identity()


def test_other_auth_layouts_work_end_to_end() -> None:
    scheme = AuthScheme(cipher="AES-128", card_factor_source="atr_historical",
                        city_pad=0, city_align="right", levels="card",
                        ext_auth_layout="kv_last", key_version=3)
    card = holder_card(scheme=scheme)
    session, _ = make(card, sam=SamSim(PIN, scheme=scheme), scheme=scheme)
    assert session.read_identity().name == "张三"


def test_corrupt_tlv_names_file_and_tag() -> None:
    session, _ = make(holder_card(faults=Faults(corrupt_tlv="DDF1/EF06")))
    with pytest.raises(E.CardDataError) as e:
        session.read_identity()
    assert (e.value.file, e.value.tag) == ("DDF1/EF06", "0B")


def test_unexpected_status_word_is_typed() -> None:
    session, _ = make(holder_card(faults=Faults(wrong_sw_at=(3, 0x6581))))
    with pytest.raises(E.CardCommandError) as e:
        session.read_identity()
    assert e.value.sw == "6581"


@pytest.mark.parametrize("n", range(1, 13))
def test_card_pulled_at_each_apdu_gives_card_removed(n: int) -> None:
    session, _ = make(holder_card(faults=Faults(disconnect_at=n)))
    with pytest.raises(E.CardRemoved):
        session.read_identity()


def test_per_apdu_timeout() -> None:
    ticks = iter(range(0, 1000, 3))
    clock = lambda: float(next(ticks))  # noqa: E731 - each call advances 3 s
    card = holder_card()
    transport = InProcessTransport(card, apdu_timeout=2.0, monotonic=clock)
    session = CardSession(transport, None, monotonic=lambda: 0.0)
    with pytest.raises(E.CardTimeout):
        session.read_issuer()


def test_per_operation_timeout() -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += 1.0
        return now[0]
    session, _ = make(holder_card(), timeouts=Timeouts(apdu_s=5, operation_s=4),
                      monotonic=clock)
    with pytest.raises(E.CardTimeout):
        session.read_identity()


def test_error_messages_are_screen_ready() -> None:
    err = E.CardRemoved(reader="Virtual PCD 00 00")
    d = err.to_dict()
    assert d["code"] == "card_removed" and d["reader"] == "Virtual PCD 00 00"
    assert "卡" in d["message_zh"] and d["message"]


def test_endless_61xx_chaining_is_capped() -> None:
    # From APDU 2 (the first READ RECORD) the card answers 6110 to everything, GET RESPONSE
    # included: the session gives up after MAX_GET_RESPONSES, typed, instead of spinning.
    card = holder_card(faults=Faults(stuck_sw_from=(2, 0x6110)))
    session = CardSession(InProcessTransport(card, "patient"), None)
    with pytest.raises(E.CardCommandError) as e:
        session.read_issuer()
    assert e.value.sw == "6110"
    assert card.apdu_count == 2 + MAX_GET_RESPONSES
    assert session.last_apdus["card"] == 2 + MAX_GET_RESPONSES


def test_chaining_stops_at_the_operation_deadline() -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += 1.0  # every deadline check is one second later
        return now[0]
    card = holder_card(faults=Faults(stuck_sw_from=(2, 0x6110)))
    session = CardSession(InProcessTransport(card, "patient"), None,
                          timeouts=Timeouts(apdu_s=1, operation_s=5), monotonic=clock)
    with pytest.raises(E.CardTimeout) as e:
        session.read_issuer()
    assert "chaining" in e.value.message
    assert card.apdu_count < 2 + MAX_GET_RESPONSES


def test_sam_answering_61xx_for_ever_is_a_sam_error() -> None:
    class StuckSam(SamSim):
        def _get_response(self, c: object) -> bytes:  # type: ignore[override]
            return b"\x61\x10"
    session, _ = make(holder_card(), sam=StuckSam(PIN))
    with pytest.raises(E.SamError) as e:
        session.read_identity()
    assert e.value.sw == "6110"


# Card APDUs of read_identity: 1 SELECT DDF1, 2-4 EF05 (2 by SFI, then the current EF),
# 5 GET CHALLENGE, 6 EXTERNAL AUTHENTICATE, 7 EF06 by SFI, 8-11 EF06 current, 12 EF08 by SFI.
@pytest.mark.parametrize(("n", "file"), [(2, "DDF1/EF05"), (4, "DDF1/EF05"), (7, "DDF1/EF06"),
                                         (9, "DDF1/EF06"), (12, "DDF1/EF08")])
def test_failing_read_on_the_lean_path_is_typed_and_names_the_file(n: int, file: str) -> None:
    session, _ = make(holder_card(faults=Faults(wrong_sw_at=(n, 0x6A83))))
    with pytest.raises(E.CardError) as e:
        session.read_identity()
    assert (e.value.file, e.value.sw) == (file, "6A83")
    assert session.last_apdus["card"] == n


@pytest.mark.parametrize("n", [3, 7, 8, 12])
def test_61xx_on_the_lean_path_is_chained_and_capped(n: int) -> None:
    card = holder_card(faults=Faults(stuck_sw_from=(n, 0x6110)))
    session, _ = make(card)
    with pytest.raises(E.CardCommandError) as e:
        session.read_identity()
    assert e.value.sw == "6110"
    assert card.apdu_count == n + MAX_GET_RESPONSES


def test_operation_deadline_is_checked_before_every_lean_read() -> None:
    now = [0.0]

    def clock() -> float:
        return now[0]

    class Slow(InProcessTransport):
        def transmit(self, apdu: bytes) -> bytes:
            now[0] += 1.0  # each APDU takes one second
            return super().transmit(apdu)
    sam = SamSession(InProcessTransport(SamSim(PIN), "sam"), PIN, monotonic=clock)
    session = CardSession(Slow(holder_card(), "patient"), sam,
                          timeouts=Timeouts(operation_s=8.5), today=_today, monotonic=clock)
    with pytest.raises(E.CardTimeout):
        session.read_identity()
    assert session.last_apdus["card"] == 9  # 9 s after 9 card APDUs: the 10th is not sent


def test_local_today_follows_the_clock_across_midnight() -> None:
    day = dt.date(2026, 6, 1)
    midnight = dt.datetime(2026, 6, 2).timestamp()  # local midnight, as date.today() sees it
    now = [midnight - 1.0]
    today = LocalToday(clock=lambda: now[0])
    assert today() == day == dt.date.fromtimestamp(now[0])
    now[0] = midnight - 0.001
    assert today() == day
    now[0] = midnight
    assert today() == day + dt.timedelta(days=1)
    now[0] = midnight - 3 * 86400.0  # clock set back three days
    assert today() == day - dt.timedelta(days=2)


# ISO 7816-4 status words a COS may give for an SFI-form READ RECORD it does not take
# (P2 carries the SFI): the session must fall back to SELECT-then-READ once.
@pytest.mark.parametrize("sw", [0x6981, 0x6986, 0x6A81, 0x6A82, 0x6A86, 0x6B00])
def test_sfi_refused_with_any_unsupported_sw_falls_back_to_select(sw: int) -> None:
    card = holder_card(faults=Faults(supports_sfi=False, sfi_refusal_sw=sw))
    session, _ = make(card)
    session.sam.open()  # type: ignore[union-attr]
    assert session.read_identity().name == "张三"
    assert session.last_apdus["card"] == 16  # one refused SFI read + three EF selects


# Status words that are real errors, not "SFI form not understood": CLA/INS unknown
# (the plain READ RECORD has the same CLA and INS, so SELECT cannot help), security
# status, a missing record.
@pytest.mark.parametrize(("sw", "error"), [
    (0x6D00, E.CardCommandError), (0x6E00, E.CardCommandError),
    (0x6982, E.CardAuthFailed), (0x6A83, E.CardFileNotFound)])
def test_sfi_refused_with_a_real_error_is_not_retried(sw: int, error: type[E.CardError]
                                                      ) -> None:
    card = holder_card(faults=Faults(supports_sfi=False, sfi_refusal_sw=sw))
    session, _ = make(card)
    session.sam.open()  # type: ignore[union-attr]
    with pytest.raises(error) as e:
        session.read_identity()
    assert e.value.sw == f"{sw:04X}"
    assert session.last_apdus["card"] == 2  # SELECT DDF1 + the refused SFI read
