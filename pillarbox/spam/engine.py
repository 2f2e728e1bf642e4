"""The spam filter: rules, learned reputation and (optionally) rspamd into one verdict
per recipient.

:class:`SpamFilter` is ``ctx.services.spam``. The SMTP backend calls

- :meth:`SpamFilter.prefetch` at MAIL (the DNSBL and PTR lookups of the client start),
- :meth:`SpamFilter.greylisted` after DATA when ``[spam] greylist`` is on,
- :meth:`SpamFilter.judge` after DATA: one :class:`Verdict` per local user, each with its
  ``X-Pillarbox-Spam`` header and one log line;

and the mail store calls :meth:`SpamFilter.learn` when a user moves mail into or out of
Junk or sets ``$Junk`` / ``$NotJunk``.

The score is the sum of the message's rule hits (the same for every recipient) and of the
user's learned hits: reputation of the From address, its domain and the DKIM domains, each
``weight * (spam - ham) / (spam + ham + 1)`` (one lesson moves a sender half-way, more
lessons approach the full weight), and the token classifier's ``weight * (2p - 1)``. With
``[spam] rspamd`` set, rspamd's score and symbols replace our rules (the user's learned
hits still count: they are the user's own word); if rspamd fails the rules are used and
the failure logged. A user with nothing learnt costs no database query: totals are kept in
memory.

Cost: the rules are regular expressions over the header and the first ``SAMPLE`` bytes of
the body, run on the event loop for small messages and in a thread for larger ones; the
database work (learned users only) always runs in a thread.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pillarbox import log
from pillarbox.config import SpamSettings
from pillarbox.dns.resolver import Resolver
from pillarbox.spam import bayes, header, rules
from pillarbox.spam.greylist import triplet
from pillarbox.spam.lesson import lesson_from_stored, lesson_of
from pillarbox.spam.lookups import ClientLookups
from pillarbox.spam.reputation import Knowledge, Lesson, Reputation
from pillarbox.spam.rspamd import RspamdClient, RspamdError, RspamdResult
from pillarbox.spam.rules import AuthFacts, ClientFacts, Hit

_log = log.get("spam")

SAMPLE = 256 * 1024  # bytes of the message the rules and the classifier read
INLINE = 32 * 1024  # messages up to this size are scored on the event loop
SETTINGS_TTL = 5.0  # seconds the per-user thresholds and totals are cached
MAX_LEARN = 100  # messages learnt from one IMAP command (a MOVE of 10 000 learns 100)

INBOX, JUNK, REJECT = "inbox", "junk", "reject"


@dataclass(frozen=True)
class Message:
    """What the filter is told about one received message."""

    queue_id: str
    sender: str  # envelope MAIL FROM
    recipients: tuple[str, ...]
    head: bytes
    sample: bytes  # the first SAMPLE bytes of the whole message (header included)
    client: ClientFacts
    auth: AuthFacts


@dataclass(frozen=True)
class Verdict:
    user: str
    score: float
    action: str  # INBOX, JUNK or REJECT
    junk: float
    reject: float
    engine: str  # "pillarbox" or "rspamd"
    hits: tuple[Hit, ...]

    @property
    def header(self) -> bytes:
        return header.build(self.action, self.score, self.junk, self.reject, self.engine,
                            self.hits)  # fmt: skip


class SpamFilter:
    def __init__(self, settings: SpamSettings, store: Reputation, resolver: Resolver,
                 *, authserv_id: str, our_names: frozenset[str], dns_timeout: float):  # fmt: skip
        self.settings = settings
        self.authserv_id = authserv_id
        self.our_names = our_names
        self.store = store  # reputation.open_reputation's
        self.lookups = ClientLookups(resolver, settings.dnsbls, dns_timeout)
        self.rspamd = RspamdClient(settings.rspamd) if settings.rspamd else None
        self._cached_at = -SETTINGS_TTL
        self._thresholds: dict[str, tuple[float | None, float | None]] = {}
        self._trained: dict[str, tuple[int, int]] = {}

    def reconfigure(self, settings: SpamSettings, resolver: Resolver) -> None:
        self.settings = settings
        self.lookups.zones = settings.dnsbls
        self.lookups.resolver = resolver
        self.rspamd = RspamdClient(settings.rspamd) if settings.rspamd else None

    def close(self) -> None:
        self.store.close()

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    # -- SMTP hooks ------------------------------------------------------------------------

    def prefetch(self, ip: str) -> None:
        if self.settings.enabled and (self.settings.dnsbls or ip_is_public(ip)):
            self.lookups.start(ip)

    async def client_facts(self, ip: str, helo: str) -> ClientFacts:
        if not (self.settings.dnsbls or ip_is_public(ip)):
            return ClientFacts(ip, helo, None, (), self.our_names)
        found = await self.lookups.result(ip)
        return ClientFacts(ip, helo, found.ptr_names, found.listed, self.our_names)

    async def greylisted(
        self, ip: str, sender: str, recipients: Sequence[str], spf_pass_domain: str
    ) -> bool:
        """True: answer 451 4.7.1 (see :mod:`pillarbox.spam.greylist`)."""
        settings = self.settings
        now = time.time()

        def check() -> bool:
            if spf_pass_domain and (
                self.store.good_domain(spf_pass_domain)
                or self.store.greylist_domain_known(
                    spf_pass_domain, float(settings.greylist_expire), now
                )
            ):
                return False
            delay, expire = float(settings.greylist_delay), float(settings.greylist_expire)
            keys = [triplet(ip, sender, rcpt) for rcpt in recipients]
            # Every triplet is recorded (no short-circuit), so the retry passes for all.
            waiting = [not self.store.greylist_check(k, now, delay, expire) for k in keys]
            return any(waiting)

        return await asyncio.to_thread(check)

    async def judge(self, message: Message, users: Sequence[str]) -> dict[str, Verdict]:
        await self._refresh()
        engine = "pillarbox"
        body = message.sample[len(message.head) :]
        static: list[Hit] | None = None
        if self.rspamd is not None:
            try:
                result = await self.rspamd.check(message.sample, _rspamd_envelope(message))
                static, engine = rspamd_hits(result), "rspamd"
            except RspamdError as exc:
                _log.warning("rspamd failed, using own rules", queue_id=message.queue_id,
                             error=str(exc))  # fmt: skip
        if static is None:
            if len(message.sample) <= INLINE:
                static = static_hits(message, body)
            else:
                static = await asyncio.to_thread(static_hits, message, body)
        learners = [u for u in users if self._trained.get(u, (0, 0)) != (0, 0)]
        learned = await self._learned_hits(message, body, learners) if learners else {}
        verdicts = {}
        for user in users:
            hits = tuple(static + learned.get(user, []))
            verdicts[user] = self._verdict(user, hits, engine)
        return verdicts

    def _verdict(self, user: str, hits: tuple[Hit, ...], engine: str) -> Verdict:
        junk, reject = self.thresholds(user)
        score = rules.total(hits)
        action = REJECT if score >= reject else JUNK if score >= junk else INBOX
        return Verdict(user, score, action, junk, reject, engine, hits)

    def thresholds(self, user: str) -> tuple[float, float]:
        own_junk, own_reject = self._thresholds.get(user, (None, None))
        junk = self.settings.junk_threshold if own_junk is None else own_junk
        reject = self.settings.reject_threshold if own_reject is None else own_reject
        return junk, reject

    def forget_cached(self) -> None:
        """Thresholds or lessons changed: re-read them at the next verdict."""
        self._cached_at = -SETTINGS_TTL

    async def _refresh(self) -> None:
        """Per-user thresholds and training totals, re-read every few seconds (the CLI
        and, on PostgreSQL, the other nodes write them; two small tables), in a thread:
        on PostgreSQL it is a network round trip."""
        now = time.monotonic()
        if now - self._cached_at < SETTINGS_TTL:
            return
        self._cached_at = now
        store = self.store
        self._thresholds, self._trained = await asyncio.to_thread(
            lambda: (store.thresholds(), store.trained_users())
        )

    async def _learned_hits(
        self, message: Message, body: bytes, users: list[str]
    ) -> dict[str, list[Hit]]:
        fields = rules.parse_fields(message.head)
        dkim = tuple(sorted({d.lower() for r, d in message.auth.dkim if r == "pass" and d}))

        def work() -> dict[str, list[Hit]]:
            lesson = lesson_of(fields, body, dkim)
            return {u: learned_hits(self.store.knowledge(u, lesson), lesson) for u in users}

        return await asyncio.to_thread(work)

    # -- learning (the mail store's hook) --------------------------------------------------

    async def learn(self, user: str, messages: list[bytes], spam: bool) -> None:
        """The user moved ``messages`` into Junk (``spam``) or out of it / marked them."""
        if not (self.settings.enabled and self.settings.learn):
            return

        def work() -> int:
            count = 0
            for data in messages[:MAX_LEARN]:
                key, lesson = lesson_from_stored(data, self.authserv_id)
                count += self.store.learn_message(user, key, lesson, spam)
            return count

        try:
            count = await asyncio.to_thread(work)
        except Exception:
            _log.error("learning failed", user=user, exc_info=True)
            return
        self.forget_cached()  # the next verdict sees the new totals
        _log.info("learned", user=user, kind="spam" if spam else "ham", messages=count)


@functools.lru_cache(maxsize=4096)
def ip_is_public(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_global
    except ValueError:
        return False


def static_hits(message: Message, body: bytes) -> list[Hit]:
    """Every rule that does not depend on the recipient."""
    head = message.head
    hits = rules.gtube(head, body)
    hits += rules.auth_rules(message.auth)
    hits += rules.client_rules(message.client)
    hits += rules.header_rules(rules.parse_fields(head))
    hits += rules.body_rules(head, body)
    return hits


def learned_hits(knowledge: Knowledge, lesson: Lesson) -> list[Hit]:
    hits: list[Hit] = []
    names = {"sender": "REPUTATION_SENDER", "domain": "REPUTATION_DOMAIN",
             "dkim": "REPUTATION_DKIM"}  # fmt: skip
    for (kind, key), (spam, ham) in sorted(knowledge.reputation.items()):
        if spam == ham:
            continue
        name = names[kind]
        points = round(rules.LEARNED_WEIGHTS[name] * (spam - ham) / (spam + ham + 1), 2)
        hits.append(Hit(name, points, key))
    p = bayes.spam_probability(knowledge.tokens, knowledge.spam_total, knowledge.ham_total)
    if p is not None and abs(p - 0.5) >= 0.1:
        points = round(rules.LEARNED_WEIGHTS["BAYES"] * (2 * p - 1), 2)
        hits.append(Hit("BAYES_SPAM" if p > 0.5 else "BAYES_HAM", points, f"{p:.2f}"))
    return hits


MAX_RSPAMD_SYMBOLS = 30


def rspamd_hits(result: RspamdResult) -> list[Hit]:
    """rspamd's symbols as our hits (names kept, so its documentation explains them), the
    weightiest first; the scored ones, else (GTUBE scores through its action, not a
    symbol) every one. Their sum is rspamd's score."""
    scored = [s for s in result.symbols if s[1]] or list(result.symbols)
    hits = [Hit(name, round(score, 2), options)
            for name, score, options in scored[:MAX_RSPAMD_SYMBOLS]]  # fmt: skip
    rest = round(result.score - sum(h.points for h in hits), 2)
    if abs(rest) >= 0.01:  # rounding, or a score rspamd gives without a symbol
        hits.append(Hit("RSPAMD_OTHER", rest))
    return hits


def _rspamd_envelope(message: Message) -> dict[str, str | list[str]]:
    return {
        "IP": message.client.ip,
        "Helo": message.client.helo,
        "From": message.sender,
        "Rcpt": list(message.recipients),
        "Queue-Id": message.queue_id,
    }
