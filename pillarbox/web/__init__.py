"""The web admin (``/admin/``) and account (``/account/``) pages on the https listener.

A protocol package, like ``smtp`` and ``imap``: it never imports storage; what it needs
is declared in ``backend.py`` and implemented by :mod:`pillarbox.admin`. ``pages.py``
holds the Starlette application and the guard (sessions, admin rights, CSRF),
``account.py`` and ``admin.py`` the pages, ``templates/`` their Jinja2 templates. No
JavaScript: plain forms, each posting to its action and redirecting back (303).
"""
