"""ACME (RFC 8555) certificate issuance with the ``acme`` library.

Everything here is *blocking* (the library speaks HTTP through ``requests``): the
certificate manager runs :func:`issue` in a worker thread, never on the event loop. What the
CA must see while it validates is published on a :class:`ChallengeBoard`, a thread-safe
table the ``http`` listener reads (HTTP-01 tokens, RFC 8555 §8.3) and the ``https``
listener's SNI callback reads (TLS-ALPN-01 certificates, RFC 8737).

The account key (EC P-256, ES256) is created once, 0600, at ``TLS_DIR/acme/account-key.pem``
and reused for every order; the account URL is found again from the key each time
(``newAccount`` answers 200 with its Location for a known key, RFC 8555 §7.3.1). Each
certificate gets a fresh key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import ssl
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import josepy as jose
import requests
from acme import challenges, client, errors, messages
from acme import crypto_util as acme_crypto
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

from pillarbox import __version__
from pillarbox.tls.certs import write_private

HTTP01 = "http-01"
TLS_ALPN01 = "tls-alpn-01"
ACME_TLS_ALPN = "acme-tls/1"
# RFC 8737 §3: id-pe-acmeIdentifier, holding the SHA-256 of the key authorization.
ID_PE_ACME_IDENTIFIER = ObjectIdentifier("1.3.6.1.5.5.7.1.31")
NETWORK_TIMEOUT = 15  # seconds per HTTP request to the CA
VALIDATION_TIMEOUT = 90.0  # seconds for the CA to validate and issue

Progress = Callable[[str], None]


class AcmeError(Exception):
    """Issuance failed; the message says why in words an admin can act on."""


@dataclass(frozen=True)
class OrderRequest:
    directory: str
    email: str
    names: tuple[str, ...]
    challenge: str  # HTTP01 or TLS_ALPN01
    account_key_path: Path
    ca_bundle: Path | None = None  # trust for the directory's HTTPS (pebble in tests)
    timeout: float = VALIDATION_TIMEOUT
    # External account binding (RFC 8555 §7.3.4), required by some CAs (ZeroSSL, Google).
    eab_kid: str = ""
    eab_hmac_key: str = ""  # base64url, as the CA hands it out


@dataclass(frozen=True)
class Issued:
    chain_pem: bytes  # leaf first, then intermediates
    key_pem: bytes


class ChallengeBoard:
    """Challenge responses currently published; written by the ACME thread, read by the
    listeners on the event loop (hence the lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._http01: dict[str, str] = {}
        self._alpn: dict[str, ssl.SSLContext] = {}

    def http01(self, token: str) -> str | None:
        with self._lock:
            return self._http01.get(token)

    def alpn_context(self, server_name: str) -> ssl.SSLContext | None:
        with self._lock:
            return self._alpn.get(server_name)

    def publish_http01(self, token: str, key_authorization: str) -> None:
        with self._lock:
            self._http01[token] = key_authorization

    def publish_alpn(self, name: str, context: ssl.SSLContext) -> None:
        with self._lock:
            self._alpn[name] = context

    def withdraw(self, *, tokens: list[str], names: list[str]) -> None:
        with self._lock:
            for token in tokens:
                self._http01.pop(token, None)
            for name in names:
                self._alpn.pop(name, None)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._http01) + len(self._alpn)


# -- keys ---------------------------------------------------------------------------------


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_or_create_account_key(path: Path) -> jose.JWKEC:
    """The ACME account key: made once (0600), then always the same."""
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(path, _pem(ec.generate_private_key(ec.SECP256R1())))
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise AcmeError(f"{path}: the ACME account key must be an EC key")
    return jose.JWKEC(key=key)


def new_certificate_key() -> bytes:
    return _pem(ec.generate_private_key(ec.SECP256R1()))


# -- TLS-ALPN-01 --------------------------------------------------------------------------


def tls_alpn_certificate(name: str, key_authorization: str) -> tuple[bytes, bytes]:
    """(cert PEM, key PEM) of the self-signed validation certificate (RFC 8737 §3): the
    name as the only SAN and a critical acmeIdentifier holding SHA-256(keyAuthorization)."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    der_octet_string = b"\x04\x20" + digest  # the extension value is an ASN.1 OCTET STRING
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(ID_PE_ACME_IDENTIFIER, der_octet_string), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem(key)


def tls_alpn_context(name: str, key_authorization: str) -> ssl.SSLContext:
    """A server context presenting the validation certificate, ALPN acme-tls/1 only."""
    cert_pem, key_pem = tls_alpn_certificate(name, key_authorization)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols([ACME_TLS_ALPN])
    # The ssl module loads keys from files only: a private temporary directory, removed at once.
    folder = tempfile.mkdtemp(prefix="pillarbox-alpn-")
    try:
        cert_file, key_file = Path(folder, "cert.pem"), Path(folder, "key.pem")
        cert_file.write_bytes(cert_pem)
        write_private(key_file, key_pem)
        ctx.load_cert_chain(cert_file, key_file)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return ctx


class _TlsAlpn01Response(challenges.KeyAuthorizationChallengeResponse):
    """The POST of ``{}`` that tells the CA to validate a tls-alpn-01 challenge (RFC 8555
    §7.5.1); the library no longer ships this challenge type. (It must carry a field: the
    library sends an object without fields as an empty POST-as-GET.)"""

    typ = TLS_ALPN01


# -- issuance -----------------------------------------------------------------------------


def issue(request: OrderRequest, board: ChallengeBoard, progress: Progress) -> Issued:
    """Run one ACME order for ``request.names`` to completion (blocking)."""
    try:
        return _issue(request, board, progress)
    except AcmeError:
        raise
    except requests.exceptions.SSLError as exc:
        raise AcmeError(
            f"TLS error talking to the ACME server {request.directory}: {exc}"
            + (" (is tls.acme_ca the right CA bundle?)" if request.ca_bundle else "")
        ) from exc
    except requests.exceptions.RequestException as exc:
        raise AcmeError(f"cannot reach the ACME server {request.directory}: {_short(exc)}") from exc
    except errors.ValidationError as exc:
        raise AcmeError(_validation_failure(exc)) from exc
    except errors.TimeoutError as exc:
        raise AcmeError(
            f"the ACME server did not validate/issue within {request.timeout:g}s"
        ) from exc
    except messages.Error as exc:
        detail = exc.detail or exc.description
        raise AcmeError(f"the ACME server refused: {detail} ({exc.typ})") from exc
    except errors.Error as exc:
        raise AcmeError(f"ACME protocol error: {exc}") from exc


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) < 300 else text[:300] + "..."


def _validation_failure(exc: errors.ValidationError) -> str:
    parts = []
    for authzr in exc.failed_authzrs:
        name = authzr.body.identifier.value
        for chall in authzr.body.challenges:
            if chall.error is not None:
                parts.append(f"{name}: {chall.error.detail or chall.error.typ}")
    return "validation failed: " + "; ".join(parts or ["(no detail from the CA)"])


def _issue(request: OrderRequest, board: ChallengeBoard, progress: Progress) -> Issued:
    progress("contacting the ACME server")
    account_key = load_or_create_account_key(request.account_key_path)
    verify: bool | str = str(request.ca_bundle) if request.ca_bundle else True
    net = client.ClientNetwork(
        account_key,
        alg=jose.ES256,
        verify_ssl=verify,  # type: ignore[arg-type]  # requests accepts a CA bundle path
        user_agent=f"pillarbox/{__version__}",
        timeout=NETWORK_TIMEOUT,
    )
    directory = client.ClientV2.get_directory(request.directory, net)
    acme = client.ClientV2(directory, net)
    progress("account")
    _register(acme, account_key, request)
    key_pem = new_certificate_key()
    csr_pem = acme_crypto.make_csr(key_pem, list(request.names))
    progress(f"ordering a certificate for {', '.join(request.names)}")
    order = acme.new_order(csr_pem)
    tokens: list[str] = []
    names: list[str] = []
    try:
        for authzr in order.authorizations:
            if authzr.body.status == messages.STATUS_VALID:
                continue  # RFC 8555 §7.1.4: an authorization may be reused
            _answer(acme, account_key, authzr, request.challenge, board, tokens, names)
        progress(f"waiting for the CA to validate ({request.challenge})")
        deadline = dt.datetime.now() + dt.timedelta(seconds=request.timeout)
        order = acme.poll_and_finalize(order, deadline)
    finally:
        board.withdraw(tokens=tokens, names=names)
    chain = order.fullchain_pem.encode("ascii")
    _check_leaf(chain, request.names)
    progress("certificate issued")
    return Issued(chain, key_pem)


def _check_leaf(chain_pem: bytes, names: tuple[str, ...]) -> None:
    """The CA's answer must be a certificate for every name we asked for."""
    try:
        leaf = x509.load_pem_x509_certificates(chain_pem)[0]
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, IndexError, x509.ExtensionNotFound) as exc:
        raise AcmeError(f"the CA returned no usable certificate: {exc}") from exc
    missing = set(names) - {str(n).lower() for n in san.get_values_for_type(x509.DNSName)}
    if missing:
        raise AcmeError(f"the CA's certificate lacks {', '.join(sorted(missing))}")


def _register(acme: client.ClientV2, account_key: jose.JWK, request: OrderRequest) -> None:
    binding = None
    if request.eab_kid:
        try:
            binding = messages.ExternalAccountBinding.from_data(
                account_key.public_key(), request.eab_kid, request.eab_hmac_key, acme.directory
            )
        except (ValueError, jose.DeserializationError) as exc:
            raise AcmeError(f"bad tls.acme_eab_hmac_key: {exc}") from exc
    elif acme.external_account_required():
        raise AcmeError(
            f"{request.directory} requires an external account binding: set tls.acme_eab_kid "
            "and tls.acme_eab_hmac_key to the values the CA gives you"
        )
    registration = messages.NewRegistration.from_data(
        email=request.email or None,
        terms_of_service_agreed=True,
        external_account_binding=binding,
    )
    try:
        acme.new_account(registration)
    except errors.ConflictError as exc:
        # The key already has an account: use it (RFC 8555 §7.3.1).
        acme.net.account = messages.RegistrationResource(
            uri=exc.location, body=messages.Registration()
        )


def _answer(
    acme: client.ClientV2,
    account_key: jose.JWK,
    authzr: messages.AuthorizationResource,
    kind: str,
    board: ChallengeBoard,
    tokens: list[str],
    names: list[str],
) -> None:
    name = authzr.body.identifier.value
    challb = next((c for c in authzr.body.challenges if _challenge_type(c) == kind), None)
    if challb is None:
        offered = ", ".join(sorted({_challenge_type(c) for c in authzr.body.challenges}))
        raise AcmeError(f"the CA offers no {kind} challenge for {name} (only: {offered})")
    response: Any
    if kind == HTTP01:
        chall = challb.chall
        assert isinstance(chall, challenges.HTTP01)
        response, validation = chall.response_and_validation(account_key)
        token = chall.encode("token")
        board.publish_http01(token, validation)
        tokens.append(token)
    else:
        token = challb.chall.jobj["token"]  # an UnrecognizedChallenge in this library
        thumbprint = jose.b64encode(account_key.thumbprint(hash_function=hashes.SHA256)).decode()
        key_authorization = f"{token}.{thumbprint}"
        board.publish_alpn(name, tls_alpn_context(name, key_authorization))
        names.append(name)
        response = _TlsAlpn01Response(key_authorization=key_authorization)
    acme.answer_challenge(challb, response)


def _challenge_type(challb: messages.ChallengeBody) -> str:
    chall = challb.chall
    if isinstance(chall, challenges.UnrecognizedChallenge):
        return str(chall.jobj.get("type", ""))
    return str(getattr(chall, "typ", ""))


def account_key_path(tls_dir: Path) -> Path:
    return tls_dir / "acme" / "account-key.pem"


def ensure_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
