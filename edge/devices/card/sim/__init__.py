"""Simulators and a private PC/SC daemon for tests, benches and the site-in-a-box."""
