"""Resident Health Card (居民健康卡) stack.

Layout: ``protocol/`` pure code (APDUs, status words, codecs, file map, records, auth/SM
scheme); ``transport.py`` the ``CardTransport`` interface and its transports (pyscard,
in-process); ``exchange.py`` one APDU exchange (deadline, count, 61xx/6Cxx chaining);
``sam_session.py`` and ``card_session.py`` the SAM and card sessions; ``watcher.py``
PC/SC reader/card events into asyncio; ``service.py`` the daemon glue; ``hotlist.py`` the
local lost-card list; ``config.py`` the ``[card]`` section; ``cli.py`` ``ykt card …``;
``sim/`` card and SAM simulators, the vpcd slot, a private pcscd and ``ykt sim card …``.
"""
