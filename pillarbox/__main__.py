"""``python -m pillarbox`` is the ``pillarbox`` command."""

from pillarbox.cli import entry_point

entry_point()
