"""Findings, the score, and how a report is shown.

Every check returns :class:`Finding` values: a status (PASS / WARN / FAIL), one sentence
saying what was seen, and, unless it passed, one line saying what to do. Each finding
carries the points it costs: its full ``weight`` when it fails, half of it as a warning.
The score starts at 10 and loses those points, like mail-tester's: a broken SPF record or a
missing DKIM key costs about two points, an open relay all ten.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

MAX_SCORE = 10.0

# Where the last check's report is kept (in the data dir), for ``pillarbox status`` and
# the web dashboard.
LAST_CHECK = "check-last.json"


def last_check_path(data_dir: Path) -> Path:
    return data_dir / LAST_CHECK


class Status(enum.StrEnum):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"


# Points a failure costs, per area; split across domains or addresses by the checks.
WEIGHTS = {
    "host.address": 2.0,
    "host.ptr": 2.0,
    "host.spf": 0.25,
    "dns.mx": 2.0,
    "dns.spf": 2.0,
    "dns.dkim": 2.0,
    "dns.dmarc": 1.0,
    "dns.mta-sts": 0.5,
    "dns.tls-rpt": 0.25,
    "dns.clients": 0.25,
    "dns.caa": 0.5,
    "server.tls": 2.0,
    "server.reachable": 1.0,
    "server.ehlo": 0.5,
    "server.starttls": 1.0,
    "server.relay": 10.0,
    "dnsbl": 3.0,
}

CATEGORIES = {
    "host": "This server's name and addresses",
    "dns": "DNS of the mail domains",
    "server": "The running server",
    "dnsbl": "Blocklists",
    "internal": "Checks that could not run",
}


@dataclass(frozen=True)
class Finding:
    check: str  # area key of WEIGHTS, e.g. "dns.spf"
    status: Status
    what: str
    fix: str = ""
    subject: str = ""  # the domain, address or listener the finding is about
    weight: float = 0.0  # points lost on FAIL (half on WARN)

    @property
    def penalty(self) -> float:
        if self.status is Status.FAIL:
            return self.weight
        if self.status is Status.WARN:
            return self.weight / 2
        return 0.0

    @property
    def category(self) -> str:
        return self.check.split(".", 1)[0]


def finding(
    check: str,
    status: Status,
    what: str,
    fix: str = "",
    *,
    subject: str = "",
    share: int = 1,
    weight: float | None = None,
) -> Finding:
    """A finding weighing ``WEIGHTS[check] / share`` (share: how many subjects split it),
    or ``weight`` when given."""
    points = WEIGHTS[check] if weight is None else weight
    return Finding(check, status, what, fix, subject, points / max(share, 1))


@dataclass
class Report:
    hostname: str
    findings: list[Finding] = field(default_factory=list)

    def extend(self, items: Iterable[Finding]) -> None:
        self.findings.extend(items)

    @property
    def score(self) -> float:
        lost = sum(f.penalty for f in self.findings)
        return round(max(0.0, MAX_SCORE - lost), 1)

    def count(self, status: Status) -> int:
        return sum(1 for f in self.findings if f.status is status)

    @property
    def failed(self) -> bool:
        return self.count(Status.FAIL) > 0


def render_text(report: Report) -> str:
    lines = [f"pillarbox check for {report.hostname}", ""]
    for category, title in CATEGORIES.items():
        items = [f for f in report.findings if f.category == category]
        if not items:
            continue
        lines.append(title)
        for item in items:
            lines.append(f"  {item.status.value:<4}  {item.what}")
            if item.fix and item.status is not Status.PASS:
                for n, fix_line in enumerate(item.fix.splitlines()):
                    lines.append(("        fix:  " if n == 0 else "              ") + fix_line)
        lines.append("")
    fails, warns = report.count(Status.FAIL), report.count(Status.WARN)
    lines.append(
        f"Score: {report.score:g}/10  ({report.count(Status.PASS)} passed, "
        f"{warns} warning{'s' * (warns != 1)}, {fails} failed)"
    )
    return "\n".join(lines) + "\n"


def to_dict(report: Report) -> dict[str, object]:
    return {
        "hostname": report.hostname,
        "score": report.score,
        "max_score": MAX_SCORE,
        "counts": {s.value: report.count(s) for s in Status},
        "findings": [
            {
                "check": f.check,
                "category": f.category,
                "status": f.status.value,
                "subject": f.subject,
                "what": f.what,
                "fix": f.fix,
                "weight": round(f.weight, 3),
                "penalty": round(f.penalty, 3),
            }
            for f in report.findings
        ],
    }


def render_json(report: Report) -> str:
    return json.dumps(to_dict(report), indent=2) + "\n"
