"""Yikatong central service: forwarder, platform adapters, registry, monitor and dashboard."""
