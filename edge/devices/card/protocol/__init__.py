"""Pure protocol code of the Resident Health Card: APDUs, status words, codecs, file map.

Nothing in this package does I/O; everything is tested against byte fixtures.
"""
