"""The device uplink: MQTT session, durable outbox, request/response correlation.

Public API: :class:`edge.uplink.client.Uplink`, :class:`edge.uplink.config.UplinkConfig`,
:class:`edge.uplink.outbox.Outbox`, :class:`yikatong.mqtt.session.MqttSession` and the errors
in :mod:`edge.uplink.errors`. Import from the submodules (nothing is imported here, so
importing the package does no work).
"""
