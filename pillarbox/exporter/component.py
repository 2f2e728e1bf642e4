"""The metrics listener as an app component (``listen.metrics``, off when empty)."""

from __future__ import annotations

from typing import Protocol

from pillarbox.auth.service import Authenticator
from pillarbox.config import Settings
from pillarbox.exporter.probes import ServerMetrics
from pillarbox.http.message import Limits
from pillarbox.http.metrics import serve_metrics
from pillarbox.net.listener import Connection, ListenerSpec, TlsMode


class MetricsContext(Protocol):
    @property
    def settings(self) -> Settings: ...

    @property
    def authenticator(self) -> Authenticator: ...


class MetricsComponent:
    name = "metrics"

    def __init__(self, ctx: MetricsContext) -> None:
        self.settings = ctx.settings
        self.metrics = ServerMetrics(ctx.settings, ctx.authenticator.active_bans)
        self.limits = Limits(max_body=1024)

    def listeners(self) -> list[ListenerSpec]:
        return [
            ListenerSpec("metrics", host, port, TlsMode.NONE, self._serve)
            for host, port in self.settings.listen.addresses("metrics")
        ]

    async def _serve(self, conn: Connection) -> None:
        await serve_metrics(conn, self.metrics.render, self.limits)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def reload(self, ctx: MetricsContext) -> None:
        self.settings = self.metrics.settings = ctx.settings


def make_metrics(ctx: MetricsContext) -> MetricsComponent | None:
    return MetricsComponent(ctx) if ctx.settings.listen.metrics else None
