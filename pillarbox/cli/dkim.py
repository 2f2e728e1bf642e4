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
        new = rotate(settings.keys_dir, domain, stage=args.stage)
        published = published_keys(settings.keys_dir, domain)
    except DkimKeyError as exc:
        raise CliError(str(exc)) from None
    selectors = ", ".join(k.selector for k in new)
    if args.stage:
        print(f"staged selectors for {domain}: {selectors} (published, not signing yet)")
        print("\nPublish these records, wait for DNS to serve them (and their TTL to pass),")
        print(f"then run `pillarbox dkim rotate {domain}` to start signing with them.\n")
    else:
        print(f"new signing selectors for {domain}: {selectors}")
        retiring = [k for k in published if k.state == "retiring"]
        if retiring:
            print(
                "retiring (still published so mail in flight verifies; removed at the next "
                f"rotation): {', '.join(k.selector for k in retiring)}"
            )
        print("\nPublish these records; signatures with a selector that DNS does not serve yet")
        print("cannot be verified (use --stage to publish first). The server signs with the")
        print("new keys from its next message.\n")
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
    parser.add_argument(
        "--stage",
        action="store_true",
        help="only create and publish the new pair; the next rotate makes it sign",
    )


def _list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("domain", metavar="DOMAIN", nargs="?", help="only this domain")


COMMANDS = [
    Command(
        ("dkim", "rotate"),
        "create a new DKIM selector pair (RSA + Ed25519) for a domain",
        run_rotate,
        _rotate_arguments,
        description="Make a new RSA 2048 + Ed25519 selector pair the signing keys for "
        "DOMAIN (or, with --stage, publish it first and switch at the next rotate). The "
        "previous pair stays published (retiring) until the next rotation; the pair before "
        "it is unpublished and its private keys deleted.",
    ),
    Command(
        ("dkim", "list"),
        "list DKIM selectors and their state",
        run_list,
        _list_arguments,
    ),
]
