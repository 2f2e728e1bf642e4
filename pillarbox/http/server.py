"""The ``http`` and ``https`` listeners: a deliberately small HTTP/1.1 server.

It serves a fixed set of resources and nothing else (404 for every other path):

===========  ===========================================================  =================
listener     path                                                         what
===========  ===========================================================  =================
http         ``/.well-known/acme-challenge/TOKEN``                        ACME HTTP-01
http         anything else                                                301/308 to https
https        ``/.well-known/mta-sts.txt`` on host ``mta-sts.DOMAIN``      MTA-STS policy
https        ``/mail/config-v1.1.xml``,                                   Thunderbird
             ``/.well-known/autoconfig/mail/config-v1.1.xml``
https        ``POST /autodiscover/autodiscover.xml`` (any case)           Outlook
https        ``/apple/mail.mobileconfig?emailaddress=ADDR``               Apple profile
https        ``/``, ``/login``, ``/logout``, ``/admin/...``, ``/account/...``  the web pages
===========  ===========================================================  =================

The web pages (:mod:`pillarbox.web`, an ASGI application wired in by ``app.py``) are
called for the paths they own on the https listener only; on the http listener those
paths are redirected to https like everything else, so no page is served in the clear.

One request per connection, bounded head and body, a deadline on each read. The request
parser is :mod:`pillarbox.http.message`; the routing (:class:`Site`) is a pure function of
a parsed request, so both are tested without sockets.

The https listener does its own TLS handshake (the listener seam hands it a plain
connection) so that it can answer ACME TLS-ALPN-01 (RFC 8737): an SNI callback picks the
challenge certificate for a name being validated, and the server's current certificate
(``TlsProvider.current()``, hot-swapped on renewal) for everything else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote, urlencode

from pillarbox import log
from pillarbox.config import Settings
from pillarbox.http import clientconfig, clienthello
from pillarbox.http.asgi import AsgiApp, call_asgi
from pillarbox.http.clientconfig import AutodiscoverError
from pillarbox.http.message import HttpError, Limits, Request, Response, parse_head, text_response
from pillarbox.http.streams import BioTlsStream, ByteStream, HeadReader, PlainStream
from pillarbox.mailauth import mtasts
from pillarbox.net.listener import HANDSHAKE_TIMEOUT, Connection, ListenerSpec, TlsMode
from pillarbox.tls.context import TLS12_CIPHERS, TlsInfo

_log = log.get("http")

ACME_CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
AUTOCONFIG_PATHS = ("/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml")
AUTODISCOVER_PATH = "/autodiscover/autodiscover.xml"
MOBILECONFIG_PATH = "/apple/mail.mobileconfig"
ACME_TLS_ALPN = "acme-tls/1"  # RFC 8737 §6.2


class ChallengeResponder(Protocol):
    """What the ACME client publishes while an order is being validated."""

    def http01(self, token: str) -> str | None:
        """The key authorization for an HTTP-01 token, or None."""
        ...

    def alpn_context(self, server_name: str) -> ssl.SSLContext | None:
        """A context with the TLS-ALPN-01 certificate for ``server_name``, or None."""
        ...


class TlsSource(Protocol):
    def current(self) -> ssl.SSLContext: ...


class WebPages(Protocol):
    """The web admin and account pages: an ASGI application and the paths it owns."""

    @property
    def app(self) -> AsgiApp: ...

    @property
    def timeout(self) -> float: ...  # seconds one page may take (a live check, an order)

    def owns(self, path: str) -> bool: ...


@dataclass
class Site:
    """Routing: request -> response, for either listener. Pure apart from ``challenges``."""

    settings: Settings
    challenges: ChallengeResponder | None = None

    def handle(self, request: Request, *, secure: bool) -> Response:
        if secure:
            return self._https(request)
        return self._http(request)

    # -- port 80 --------------------------------------------------------------------------

    def _http(self, request: Request) -> Response:
        if request.path.startswith(ACME_CHALLENGE_PREFIX):
            return self._acme_challenge(request)
        return self._redirect(request)

    def _acme_challenge(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return _method_not_allowed("GET, HEAD")
        token = request.path[len(ACME_CHALLENGE_PREFIX) :]
        answer = self.challenges.http01(token) if self.challenges and token else None
        if answer is None:
            return text_response(404)
        # RFC 8555 §8.3: the body is the key authorization, nothing else.
        return Response(200, answer.encode("ascii"), "application/octet-stream")

    def _redirect(self, request: Request) -> Response:
        https = self.settings.listen.https
        if not https:
            return text_response(404)
        host = request.host if request.host in self.our_names() else self.settings.hostname
        port = self.settings.listen.addresses("https")[0][1]
        authority = host if port == 443 else f"{host}:{port}"
        query = _requery(request)
        # The path was validated as printable ASCII by the parser; re-quote what unquote did.
        location = f"https://{authority}{quote(request.path, safe='/:@!$&()*+,;=-._~')}{query}"
        # 301 keeps GET/HEAD; 308 keeps the method and body of anything else (RFC 9110 §15.4).
        status = 301 if request.method in ("GET", "HEAD") else 308
        return Response(status, b"", headers={"Location": location})

    # -- port 443 -------------------------------------------------------------------------

    def _https(self, request: Request) -> Response:
        path = request.path
        if path == mtasts.POLICY_PATH:
            return self._guard(request, ("GET", "HEAD"), self._mta_sts)
        if path in AUTOCONFIG_PATHS:
            return self._guard(request, ("GET", "HEAD"), self._autoconfig)
        if path.lower() == AUTODISCOVER_PATH:
            return self._guard(request, ("POST",), self._autodiscover)
        if path == MOBILECONFIG_PATH:
            return self._guard(request, ("GET", "HEAD"), self._mobileconfig)
        return text_response(404)

    def _guard(
        self,
        request: Request,
        methods: tuple[str, ...],
        handler: Callable[[Request], Response],
    ) -> Response:
        if request.method not in methods:
            return _method_not_allowed(", ".join(methods))
        return handler(request)

    def _mta_sts(self, request: Request) -> Response:
        # RFC 8461 §3.3: the policy lives only at https://mta-sts.<domain>/.well-known/...
        domain = request.host.removeprefix("mta-sts.")
        if not request.host.startswith("mta-sts.") or domain not in self.settings.domains:
            return text_response(404)
        # RFC 8461 §3.3: media type text/plain.
        return Response(200, mtasts.mta_sts_policy(self.settings).encode("ascii"), "text/plain")

    def _autoconfig(self, request: Request) -> Response:
        domain = self._autoconfig_domain(request)
        if domain is None:
            return text_response(404)
        body = clientconfig.thunderbird_autoconfig(self.settings, domain)
        return Response(200, body, "application/xml; charset=utf-8")

    def _autoconfig_domain(self, request: Request) -> str | None:
        """The domain from ``?emailaddress=`` when given, else from the Host name
        (``autoconfig.DOMAIN`` or ``DOMAIN`` itself for the .well-known lookup)."""
        if (given := request.param("emailaddress")) is not None:
            address = clientconfig.our_address(self.settings, given)
            return address.domain if address else None
        host = request.host.removeprefix("autoconfig.")
        return host if host in self.settings.domains else None

    def _autodiscover(self, request: Request) -> Response:
        try:
            given = clientconfig.parse_autodiscover_request(request.body)
        except AutodiscoverError as exc:
            return text_response(400, str(exc))
        address = clientconfig.our_address(self.settings, given)
        if address is None:
            return text_response(404)
        body = clientconfig.outlook_autodiscover(self.settings, address)
        return Response(200, body, "application/xml; charset=utf-8")

    def _mobileconfig(self, request: Request) -> Response:
        address = clientconfig.our_address(self.settings, request.param("emailaddress"))
        if address is None:
            return text_response(404)
        try:
            body = clientconfig.apple_mobileconfig(self.settings, address)
        except ValueError as exc:
            return text_response(404, str(exc))
        filename = f"{address.domain}.mobileconfig"
        return Response(
            200,
            body,
            "application/x-apple-aspen-config",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )

    def our_names(self) -> set[str]:
        names = {self.settings.hostname}
        for domain in self.settings.domains:
            names |= {domain, f"mta-sts.{domain}", f"autoconfig.{domain}"}
        return names


def _requery(request: Request) -> str:
    return "?" + urlencode(request.query, doseq=True) if request.query else ""


def _method_not_allowed(allow: str) -> Response:
    response = text_response(405)
    response.headers["Allow"] = allow
    return response


# -- connections ----------------------------------------------------------------------------


async def read_request(reader: HeadReader, limits: Limits) -> Request:
    """Read one request (head and Content-Length body) within the deadlines."""
    try:
        head = await asyncio.wait_for(reader.read_head(limits.max_head), limits.head_timeout)
    except ValueError:
        raise HttpError(431, "request head too large") from None
    request = parse_head(head, limits)
    length = request.content_length
    if length > limits.max_body:
        raise HttpError(413, "request body too large")
    if length:
        try:
            body = await asyncio.wait_for(reader.read_exactly(length), limits.body_timeout)
        except EOFError:
            raise HttpError(400, "request body shorter than Content-Length") from None
        request = dataclasses.replace(request, body=body)
    return request


async def serve_stream(
    stream: ByteStream,
    conn: Connection,
    site: Site,
    *,
    secure: bool,
    limits: Limits,
    web: WebPages | None = None,
) -> None:
    """One request, one response, on ``stream`` (plain or TLS)."""
    method = ""
    try:
        conn.idle = True  # nothing asked yet: may be cut to make room (net.listener)
        request = await read_request(HeadReader(stream), limits)
        conn.idle = False
        method = request.method
        if secure and web is not None and web.owns(request.path):
            response = await call_asgi(
                web.app,
                request,
                client_ip=conn.peer_ip,
                server=(site.settings.hostname, conn.local_port),
                time_limit=web.timeout,
            )
        else:
            response = site.handle(request, secure=secure)
        _log.info(
            "request",
            listener=conn.listener,
            conn=conn.id,
            client=conn.peer_ip,
            method=request.method,
            host=request.host,
            path=request.path[:200],
            status=response.status,
        )
    except HttpError as exc:
        response = text_response(exc.status, exc.reason)
        _log.info("bad request", listener=conn.listener, client=conn.peer_ip, reason=exc.reason)
    except TimeoutError:
        response = text_response(408)
    data = response.render(head_only=method == "HEAD")
    await asyncio.wait_for(stream.send(data), limits.write_timeout)


class HttpsTls:
    """The https listener's TLS: an SNI dispatcher in front of the shared server context.

    The dispatcher context only decides; the handshake then continues on the context the
    callback selects (OpenSSL runs the SNI callback before ALPN and certificate selection,
    and a context switched there provides both): the TLS-ALPN-01 validation certificate for
    a name being validated when the ClientHello (peeked at by us: the callback cannot see
    ALPN) offers acme-tls/1, else the server's current one. Version and cipher settings are
    copied from the shared policy because OpenSSL keeps those of the context the SSL began
    with."""

    def __init__(self, tls: TlsSource, challenges: ChallengeResponder | None):
        self.tls = tls
        self.challenges = challenges
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(TLS12_CIPHERS)
        ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
        ctx.options |= ssl.OP_NO_RENEGOTIATION
        ctx.num_tickets = 0
        ctx.sni_callback = self._select
        self.dispatcher = ctx
        # id() of the SSL objects whose ClientHello offered acme-tls/1, during handshakes.
        self._acme_clients: set[int] = set()

    def _select(
        self, ssl_object: ssl.SSLObject, server_name: str | None, _initial: ssl.SSLContext
    ) -> None:
        chosen = None
        if server_name and self.challenges is not None and id(ssl_object) in self._acme_clients:
            chosen = self.challenges.alpn_context(server_name.lower().rstrip("."))
        ssl_object.context = chosen or self.tls.current()

    async def handshake(self, conn: Connection) -> BioTlsStream | None:
        """TLS on ``conn``; None when it was an ACME validation (nothing more to do)."""
        first = await asyncio.wait_for(_first_record(conn.reader), HANDSHAKE_TIMEOUT)
        stream = BioTlsStream(conn.reader, conn.writer, self.dispatcher)
        stream.feed(first)
        # Only a client that offers acme-tls/1 is shown a validation certificate.
        acme_client = ACME_TLS_ALPN.encode() in (clienthello.offered_alpn(first) or [])
        if acme_client:
            self._acme_clients.add(id(stream.ssl_object))
        try:
            await asyncio.wait_for(stream.handshake(), HANDSHAKE_TIMEOUT)
        finally:
            self._acme_clients.discard(id(stream.ssl_object))
        conn.tls = TlsInfo.of(stream.ssl_object)
        if stream.ssl_object.selected_alpn_protocol() == ACME_TLS_ALPN:
            # RFC 8737 §3: after the handshake the validator closes; no data is exchanged.
            _log.info("acme tls-alpn-01 handshake", client=conn.peer_ip, conn=conn.id)
            await stream.close()
            return None
        return stream


async def _first_record(reader: asyncio.StreamReader) -> bytes:
    """The bytes of the client's first TLS record (or whatever arrived, if it is not TLS)."""
    data = b""
    while len(data) < clienthello.RECORD_HEADER:
        chunk = await reader.read(clienthello.RECORD_HEADER - len(data))
        if not chunk:
            return data
        data += chunk
    total = clienthello.record_length(data)
    while total is not None and len(data) < total:
        chunk = await reader.read(total - len(data))
        if not chunk:
            break
        data += chunk
    return data


class HttpComponent:
    """The http/https listeners as an app component."""

    name = "http"

    def __init__(
        self,
        settings: Settings,
        tls: TlsSource,
        challenges: ChallengeResponder | None = None,
        limits: Limits | None = None,
        web: WebPages | None = None,
    ):
        self.site = Site(settings, challenges)
        self.web = web
        self.https_tls = HttpsTls(tls, challenges)
        self.limits = limits or Limits()

    def listeners(self) -> list[ListenerSpec]:
        listen = self.site.settings.listen
        plain = [
            ListenerSpec("http", host, port, TlsMode.NONE, self._serve_http)
            for host, port in listen.addresses("http")
        ]
        # TLS is done in the handler (SNI dispatch for TLS-ALPN-01), hence NONE here.
        secure = [
            ListenerSpec("https", host, port, TlsMode.NONE, self._serve_https)
            for host, port in listen.addresses("https")
        ]
        return plain + secure

    async def _serve_http(self, conn: Connection) -> None:
        stream = PlainStream(conn.reader, conn.writer)
        await serve_stream(stream, conn, self.site, secure=False, limits=self.limits)

    async def _serve_https(self, conn: Connection) -> None:
        stream = await self.https_tls.handshake(conn)
        if stream is not None:
            await serve_stream(
                stream, conn, self.site, secure=True, limits=self.limits, web=self.web
            )
            await stream.close()

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def reload(self, ctx: HttpContext) -> None:
        self.site.settings = ctx.settings


class HttpServices(Protocol):
    """The app's services this package reads (``app.Services`` has them)."""

    @property
    def challenges(self) -> ChallengeResponder | None: ...  # set by the certificates

    @property
    def web(self) -> WebPages | None: ...  # set by the web component


class HttpContext(Protocol):
    """The part of the app context this package uses (app.AppContext provides it)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def tls(self) -> TlsSource: ...

    @property
    def services(self) -> HttpServices: ...


def make_http(ctx: HttpContext) -> HttpComponent | None:
    """Component factory for app.py: None when both listeners are disabled."""
    listen = ctx.settings.listen
    if not listen.http and not listen.https:
        return None
    return HttpComponent(
        ctx.settings,
        ctx.tls,
        ctx.services.challenges,
        web=ctx.services.web,
    )
