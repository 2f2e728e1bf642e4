"""The mail store with its index in PostgreSQL, for several front-end nodes (issue 16):
``schema`` (tables), ``query`` (SEARCH filters in SQL), ``index`` (the blocking
transactions), ``store`` (the async ``MailService`` and its app component)."""
