"""Every metric Pillarbox exports.

Counters live in this module's :data:`REGISTRY` (our own, not prometheus_client's global
default) and are incremented where the event happens, one line next to the log line for
the same event; they are per process. Gauges that describe a server's state (queue depth,
certificate expiry, bans, store size) are computed at scrape time by each running
server's probes (:mod:`pillarbox.exporter.probes`), so they are never stale and cost
nothing between scrapes. Names follow Prometheus conventions: ``_total`` for counters, base units
(seconds, bytes). The process itself (RSS, CPU, open fds) comes from prometheus_client's
process collector.
"""

from __future__ import annotations

import functools

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)

MESSAGES_RECEIVED = Counter(
    "pillarbox_messages_received", "Messages offered over SMTP, by listener and result "
    "(accepted, rejected, deferred = a 4xx reply)", ["listener", "result"], registry=REGISTRY,
)  # fmt: skip
DELIVERIES = Counter(
    "pillarbox_deliveries", "Recipient delivery outcomes: channel local or remote, result "
    "delivered, deferred or bounced", ["channel", "result"], registry=REGISTRY,
)  # fmt: skip
DELIVERY_LATENCY = Histogram(
    "pillarbox_delivery_latency_seconds", "From queueing to delivery at the remote MX",
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 1800, 3600, 4 * 3600, 86400), registry=REGISTRY,
)  # fmt: skip
SESSIONS = Counter(
    "pillarbox_sessions", "Client sessions started, by protocol and listener",
    ["protocol", "listener"], registry=REGISTRY,
)  # fmt: skip
COMMANDS = Counter(
    "pillarbox_commands", "Protocol commands by protocol, command and result (SMTP: the "
    "reply class 2xx/3xx/4xx/5xx; IMAP: OK/NO/BAD)", ["protocol", "command", "result"],
    registry=REGISTRY,
)  # fmt: skip
AUTH_FAILURES = Counter(
    "pillarbox_auth_failures", "Failed logins (every protocol)", registry=REGISTRY
)
AUTH_CACHE_HITS = Counter(
    "pillarbox_auth_cache_hits", "Logins answered from the verified-credential cache",
    registry=REGISTRY,
)  # fmt: skip
BANS = Counter("pillarbox_bans", "Clients banned for failed logins", registry=REGISTRY)
TLS_SESSIONS = Counter(
    "pillarbox_tls_sessions", "Inbound TLS sessions established, by protocol version",
    ["version"], registry=REGISTRY,
)  # fmt: skip

# The commands worth a label of their own; anything else is counted as "other", so a
# client sending random verbs cannot grow the label set without bound.
KNOWN_COMMANDS = frozenset(
    [
        "HELO",
        "EHLO",
        "MAIL",
        "RCPT",
        "DATA",
        "BDAT",
        "RSET",
        "NOOP",
        "QUIT",
        "VRFY",
        "EXPN",
        "HELP",
        "STARTTLS",
        "AUTH",
        "CAPABILITY",
        "LOGIN",
        "LOGOUT",
        "AUTHENTICATE",
        "SELECT",
        "EXAMINE",
        "CREATE",
        "DELETE",
        "RENAME",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "LIST",
        "LSUB",
        "STATUS",
        "APPEND",
        "CHECK",
        "CLOSE",
        "UNSELECT",
        "EXPUNGE",
        "SEARCH",
        "FETCH",
        "STORE",
        "COPY",
        "MOVE",
        "UID",
        "IDLE",
        "NAMESPACE",
        "ENABLE",
        "ID",
        "GETQUOTA",
        "GETQUOTAROOT",
        "SETQUOTA",
        "SORT",
        "THREAD",
        "COMPRESS",
        "GETMETADATA",
        "SETMETADATA",
    ]
)


def count(metric: Counter, *labels: str, amount: float = 1) -> None:
    """``metric.labels(*labels).inc(amount)``, with the labelled child remembered.

    ``labels()`` validates, joins and looks up under a lock on every call, a few µs on
    every SMTP and IMAP command; the remembered child costs one dict lookup. Every label
    value passed here comes from a bounded set (listener names, :func:`command_label`,
    reply classes, results), so the cache is bounded too."""
    _child(metric, labels).inc(amount)


@functools.cache
def _child(metric: Counter, labels: tuple[str, ...]) -> Counter:
    return metric.labels(*labels)


# The counters an SMTP intake worker process moves too. A worker's registry is its own;
# it sends what these gained (:class:`CounterDeltas`) to the main process, which adds them
# to its own (:func:`add_counts`), so the main process's /metrics counts the server.
SHARED_COUNTERS = (
    MESSAGES_RECEIVED, DELIVERIES, SESSIONS, COMMANDS, AUTH_FAILURES, AUTH_CACHE_HITS,
    BANS, TLS_SESSIONS,
)  # fmt: skip
_SHARED_BY_NAME = {next(iter(c.describe())).name: c for c in SHARED_COUNTERS}  # collect()'s names
CounterKey = tuple[str, tuple[str, ...]]  # (metric name, label values in label order)


class CounterDeltas:
    """What :data:`SHARED_COUNTERS` gained since the previous :meth:`take` (a worker's
    side); only the labelled children that moved are in it."""

    def __init__(self) -> None:
        self._last: dict[CounterKey, float] = {}

    def take(self) -> dict[CounterKey, float]:
        deltas: dict[CounterKey, float] = {}
        for counter in SHARED_COUNTERS:
            for family in counter.collect():
                for sample in family.samples:
                    if not sample.name.endswith("_total"):
                        continue  # _created: when the child appeared, not a count
                    key = (family.name, tuple(sample.labels.values()))
                    gained = sample.value - self._last.get(key, 0.0)
                    if gained:
                        deltas[key] = gained
                        self._last[key] = sample.value
        return deltas


def add_counts(deltas: dict[CounterKey, float]) -> None:
    """Add another process's :meth:`CounterDeltas.take` to this process's counters (a
    name this version does not know is skipped: it cannot come from a newer worker,
    but a bad frame must not stop the others)."""
    for (name, labels), amount in deltas.items():
        counter = _SHARED_BY_NAME.get(name)
        if counter is None or amount <= 0:
            continue
        if labels:
            count(counter, *labels, amount=amount)
        else:
            counter.inc(amount)


def command_label(verb: str) -> str:
    verb = verb.upper()
    return verb if verb in KNOWN_COMMANDS else "other"


def gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> Metric:
    """One gauge sample as a metric family (for probes)."""
    family = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value, timestamp=None)
    return family
