"""Helpers shared by the CLI commands: loading settings, reading passwords, errors."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from dataclasses import dataclass

from pillarbox import config
from pillarbox.auth import passwords
from pillarbox.config import Settings


class CliError(Exception):
    """A failure to report as ``pillarbox: error: ...`` with exit status 1."""


@dataclass(frozen=True)
class Command:
    """One CLI command: its words (``("user", "add")``), help, arguments and action."""

    path: tuple[str, ...]
    help: str
    run: Callable[[argparse.Namespace], int]
    arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    description: str = ""


def load_settings(args: argparse.Namespace) -> Settings:
    settings = config.load(getattr(args, "config", None))
    # `user add` and `user passwd` hash with the configured cost.
    passwords.configure(passwords.cost_of(settings.limits))
    return settings


def read_password(from_stdin: bool, *, confirm: bool = True) -> str:
    """A password from one stdin line, or prompted twice on the terminal; never argv."""
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise CliError("no password on stdin")
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        raise CliError("no terminal to prompt on; pass --password-stdin and pipe the password")
    first = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Repeat password: ") != first:
        raise CliError("passwords do not match")
    return first
