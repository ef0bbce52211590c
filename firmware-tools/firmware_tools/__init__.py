"""Technician tools: keys, enrollment, config, commands and update bundles (``ykt fw``)."""
