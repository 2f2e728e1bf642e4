"""``pillarbox dkim rotate DOMAIN`` and ``pillarbox dkim list [DOMAIN]``: DKIM selectors."""

from __future__ import annotations

import argparse

from pillarbox.cli.common import CliError, Command, load_settings
from pillarbox.core.address import AddressError, normalize_domain


def _domain(settings_domains: tuple[str, ...], value: str) -> str:
    try:
        domain = normalize_domain(value)
    except AddressError as exc:
        raise CliError(str(exc)) from None
    if domain not in settings_domains:
        raise CliError(
            f"{domain} is not one of this server's domains ({', '.join(settings_domains)})"
        )
    return domain


def run_rotate(args: argparse.Namespace) -> int:
    from pillarbox.mailauth.keys import DkimKeyError, published_keys, rotate

    settings = load_settings(args)
    domain = _domain(settings.domains, args.domain)
    try:
        new = rotate(settings.keys_dir, domain)
        published = published_keys(settings.keys_dir, domain)
    except DkimKeyError as exc:
        raise CliError(str(exc)) from None
    print(f"new signing selectors for {domain}: {', '.join(k.selector for k in new)}")
    retiring = [k for k in published if k.state == "retiring"]
    if retiring:
        print(
            "retiring (still published so mail in flight verifies; removed at the next "
            f"rotation): {', '.join(k.selector for k in retiring)}"
        )
    print("\nPublish these records now; until they are visible in DNS, the new signatures")
    print("cannot be verified. The server signs with the new keys from its next message.\n")
    for key in published:
        print(f'{key.dns_name}. IN TXT "{key.txt_value()}"  ; {key.state}')
    return 0


def run_list(args: argparse.Namespace) -> int:
    from pillarbox.mailauth.keys import DkimKeyError, all_keys

    settings = load_settings(args)
    domains = [_domain(settings.domains, args.domain)] if args.domain else settings.domains
    for domain in domains:
        try:
            keys = all_keys(settings.keys_dir, domain)
        except DkimKeyError as exc:
            raise CliError(str(exc)) from None
        if not keys:
            print(f"{domain}: no DKIM keys (run `pillarbox init` or `pillarbox dkim rotate`)")
        for key in keys:
            print(f"{domain}  {key.selector:<14} {key.algorithm:<8} {key.state}")
    return 0


def _rotate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("domain", metavar="DOMAIN", help="one of the configured domains")


def _list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("domain", metavar="DOMAIN", nargs="?", help="only this domain")


COMMANDS = [
    Command(
        ("dkim", "rotate"),
        "create a new DKIM selector pair (RSA + Ed25519) for a domain",
        run_rotate,
        _rotate_arguments,
        description="Make a new RSA 2048 + Ed25519 selector pair the signing keys for "
        "DOMAIN. The previous pair stays published (retiring) until the next rotation; "
        "the pair before it is unpublished and its private keys deleted.",
    ),
    Command(
        ("dkim", "list"),
        "list DKIM selectors and their state",
        run_list,
        _list_arguments,
    ),
]
