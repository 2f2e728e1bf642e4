"""ManageSieve (RFC 5804): users manage their Sieve scripts from a mail client.

``parser`` turns lines and literals into typed commands (pure), ``responses`` formats
strings and responses (pure), ``session`` is the state machine of one connection, and
``server`` the app component for the ``managesieve`` listener (4190, STARTTLS before
AUTHENTICATE). ``backend`` is the narrow interface to the script storage and the Sieve
checker that ``app.py`` wires in.
"""
