"""The reference hospital platform (HIS simulator) behind ``ykt platform-sim``.

``create_app(settings, clock=...)`` in ``central.platform.sim.app`` builds the FastAPI app;
``central.platform.sim.server`` runs it (``serve``, ``main``, ``start_in_thread``).
"""
