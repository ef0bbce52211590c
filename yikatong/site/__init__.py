"""The site-in-a-box (``ykt demo``): central, its broker, the reference platform, a
simulated kiosk and cashier desk with virtual card readers and printers, on loopback."""
