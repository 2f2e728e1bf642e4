"""An in-memory mail store behind the neutral API of ``pillarbox.mailstore`` (issue 18):
what proves the seam by running the IMAP and POP3 suites (see :mod:`.store`)."""
