"""Yikatong's neutral package: what the device and central both use, and the ``ykt`` entry.

- :mod:`yikatong.protocol` — the MQTT wire contract (pure, no I/O);
- :mod:`yikatong.mqtt` — the paho session both the device uplink and central run on;
- :mod:`yikatong.common` — config loading, masking logger, privacy masks, the audit-hash rule,
  durable SQLite, systemd and the service run loop;
- :mod:`yikatong.cli` — the ``ykt`` command (top of the map: imports every part lazily);
- :mod:`yikatong.site` — the site-in-a-box (``ykt demo``), which starts every part.

The bottom three import nothing else of ours; ``edge``, ``central``, ``kiosk`` and
``firmware_tools`` may import them and never each other (docs/architecture.md).
"""
