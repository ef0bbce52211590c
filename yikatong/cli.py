"""The ``ykt`` command: one entry point for every Yikatong process and tool.

Each subcommand lives with the package it drives and is imported only when building the
parser, so ``ykt --help`` costs no hardware or network access.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from yikatong.common.config import ConfigError
from yikatong.version import installed_version

__all__ = ["build_parser", "main"]

Adder = Callable[[argparse._SubParsersAction], None]  # type: ignore[type-arg]


def _add_edge(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from edge.daemon import add_edge_arguments, main

    p = sub.add_parser(
        "edge",
        help=_SHORT_HELP["edge"],
        description="Run the device daemon of a kiosk or cashier terminal. It owns the "
        "hardware and the uplink and serves the local API the kiosk UI talks to.",
    )
    add_edge_arguments(p)
    p.set_defaults(func=main)


def _add_kiosk(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from kiosk.app import add_kiosk_arguments, main

    p = sub.add_parser(
        "kiosk",
        help=_SHORT_HELP["kiosk"],
        description="Serve the patient self-service or cashier UI; it talks only to the "
        "local `ykt edge` API, never to hardware or MQTT.",
    )
    add_kiosk_arguments(p)
    p.set_defaults(func=main)


def _add_central(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from central.app import add_central_arguments, main

    p = sub.add_parser(
        "central",
        help=_SHORT_HELP["central"],
        description="Run the central service: it supervises its own Mosquitto (or uses an "
        "external broker), forwards device requests to the hospital platform exactly once, "
        "keeps the device registry and serves the staff dashboard and REST API.",
    )
    add_central_arguments(p)
    p.set_defaults(func=main)


def _add_platform_sim(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from central.platform.sim.server import add_platform_sim_arguments, main

    p = sub.add_parser(
        "platform-sim",
        help=_SHORT_HELP["platform-sim"],
        description="Run the reference hospital platform: departments, doctors, slots, "
        "bills, payments, lab reports and the lost-card list, with fault injection.",
    )
    add_platform_sim_arguments(p)
    p.set_defaults(func=main)


def _add_demo(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from yikatong.site.demo import add_demo_arguments, main

    p = sub.add_parser(
        "demo",
        help=_SHORT_HELP["demo"],
        description="Start a whole simulated site on this machine: central with its own "
        "Mosquitto, the reference platform, one kiosk and one cashier terminal with simulated "
        "card readers (pcscd + vpcd), printers and scanners. Prints the URLs; Ctrl-C stops all.",
    )
    add_demo_arguments(p)
    p.set_defaults(func=main)


def _add_card(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from edge.devices.card.cli import add_card_commands

    add_card_commands(sub)  # adds "card" with "read" and "sam"


def _add_sim(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from edge.devices.card.sim.cli import add_sim_card_commands
    from edge.devices.printer.sim.cli import add_sim_printer_commands

    p = sub.add_parser(
        "sim",
        help=_SHORT_HELP["sim"],
        description="Simulated hardware for tests, training and the site-in-a-box.",
    )
    ssub = p.add_subparsers(dest="sim_cmd", required=True, metavar="DEVICE")
    add_sim_card_commands(ssub)
    add_sim_printer_commands(ssub)
    _add_sim_fleet(ssub)


def _add_sim_fleet(ssub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from yikatong.site.simfleet import add_sim_fleet_arguments, main

    p = ssub.add_parser(
        "fleet",
        help="many simulated terminals against a running central (load, reply checks)",
        description="Enroll N simulated devices at central (each its own certificate, "
        "approved through the technician API; cached for the next run), connect them from a "
        "few processes and send births, telemetry, events and a checked request mix. Prints "
        "what was sent and answered, latencies and errors; exit 1 on anything unexpected.",
    )
    add_sim_fleet_arguments(p)
    p.set_defaults(func=main)


def _add_fw(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from firmware_tools.cli import add_fw_commands

    p = sub.add_parser(
        "fw",
        help=_SHORT_HELP["fw"],
        description="Technician tools for provisioning and managing devices over central.",
    )
    add_fw_commands(p.add_subparsers(dest="fw_cmd", required=True, metavar="COMMAND"))


def _add_update(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from edge.update.cli import add_update_commands

    add_update_commands(sub, _SHORT_HELP["update"])  # guard, status, rollback, install


_COMMANDS: tuple[Adder, ...] = (
    _add_edge,
    _add_kiosk,
    _add_central,
    _add_platform_sim,
    _add_demo,
    _add_card,
    _add_sim,
    _add_fw,
    _add_update,
)


_NAMES = ("edge", "kiosk", "central", "platform-sim", "demo", "card", "sim", "fw", "update")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Build the ``ykt`` parser; with ``only``, other subcommands are not imported.

    Importing every subcommand would load FastAPI, paho and pyscard for ``ykt card read``:
    on a Raspberry Pi that is seconds of start-up and tens of MB for nothing.
    """
    parser = argparse.ArgumentParser(
        prog="ykt",
        description="Yikatong (一卡通): health-card kiosks and cashier terminals, their "
        "device daemon, UI, central MQTT service and technician tools.",
    )
    parser.add_argument("--version", action="version", version=f"ykt {installed_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, add in zip(_NAMES, _COMMANDS, strict=True):
        if only is None or only == name:
            add(sub)
        else:
            sub.add_parser(name, help=_SHORT_HELP[name])
    return parser


_SHORT_HELP = {
    "edge": "run the device daemon (card reader, printer, scanner, MQTT uplink, local API)",
    "kiosk": "run the patient/cashier UI server shown by Chromium in kiosk mode",
    "central": "run the central service (supervised Mosquitto, forwarder, registry, dashboard)",
    "platform-sim": "run the reference hospital platform (HIS simulator with fault injection)",
    "demo": "run the site-in-a-box: central + Mosquitto, platform, a kiosk and a cashier",
    "card": "technician card tools: read a health card, show the SAM",
    "sim": "simulated hardware: virtual health cards, virtual ESC/POS printer",
    "fw": "technician fleet tools: signing keys, device registration, config, commands",
    "update": "software update slots on this device: guard, status, rollback, install",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ykt`` console script."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in args_list if not a.startswith("-")), None)
    parser = build_parser(first if first in _NAMES else None)
    args = parser.parse_args(args_list)
    try:
        rc = args.func(args)
    except ConfigError as exc:
        print(f"ykt: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
