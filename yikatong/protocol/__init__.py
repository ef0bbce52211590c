"""The MQTT wire contract: topics, envelopes, canonical JSON, signatures (pure, no I/O)."""
