"""Yikatong edge daemon: hardware, uplink and fleet agent of a kiosk or cashier terminal."""
