"""Barcode/QR scanners: pure classify/frames/keymaps, serial and HID drivers, discovery, service."""
