"""What the web pages do, over the server's storage and services.

:mod:`pillarbox.web` (a protocol package) declares what it needs in
``pillarbox.web.backend``; this package implements it (``backend.py``) and wires it into
the server as a component (``component.py``, listed in ``app.COMPONENTS`` before http).
"""
