"""POP3 (RFC 1939) with CAPA (RFC 2449), STLS (RFC 2595) and AUTH (RFC 5034) over the store.

``commands`` parses a line into a typed command (pure), ``message`` holds the pure wire
transformations of a message (byte-stuffing, TOP), ``maildrop`` is the session's snapshot of
INBOX and the UPDATE state, ``session`` speaks the protocol, and ``server`` is the app
component. ``backend`` is the small interface to the mail store that ``app.py`` wires in.
"""
