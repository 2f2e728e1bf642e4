"""Putting a user's Sieve script on a running server the way an admin does: through
``pillarbox sieve`` (the real CLI code, in this process), which stores it in the live
database and tells the server over its control socket (``sieve.changed``)."""

from __future__ import annotations

from pillarbox.cli import main
from pillarbox.config import Settings


def sieve_cli(settings: Settings, *words: str) -> int:
    return main(["--config", str(settings.data_dir / "pillarbox.toml"), "sieve", *words])


def activate_script(settings: Settings, user: str, text: str, name: str = "main") -> None:
    """Store ``text`` as ``user``'s script ``name`` and make it the active one."""
    path = settings.data_dir / f"{name}.sieve"
    path.write_text(text, encoding="utf-8")
    try:
        assert sieve_cli(settings, "put", user, str(path), "--name", name, "--activate") == 0
    finally:
        path.unlink()
