"""The MQTT session the device uplink and central both run on (paho-mqtt 2.x).

Import from the submodules: :mod:`yikatong.mqtt.session`, :mod:`yikatong.mqtt.config`,
:mod:`yikatong.mqtt.errors`.
"""
