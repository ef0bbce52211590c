"""Hospital-platform adapters (``PlatformAdapter``) and the reference platform (``sim``).

Import from the submodules: ``central.platform.base``, ``.errors``, ``.breaker``,
``.reference``, ``.config`` and ``central.platform.sim``.
"""
