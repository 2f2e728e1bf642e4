"""Helpers for the import/export/backup tests: a real Dovecot, IMAP snapshots, a cutting proxy.

``Dovecot`` runs Debian's dovecot-imapd as a private instance: its own config, passwd-file
users, Maildirs under the test's directory, IMAPS and IMAP+STARTTLS on free loopback ports
with a self-signed certificate for 127.0.0.1 (``ca_file``). Tests skip, saying why, when
Dovecot is not installed or does not start.

``snapshot`` reads every mailbox of an IMAP account (ours or Dovecot's) into plain data:
UIDVALIDITY and, per message, UID, flags, INTERNALDATE and body, so two servers compare
with ``==``.
"""

from __future__ import annotations

import datetime
import imaplib
import ipaddress
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pillarbox.transfer import imapwire
from tests import ports

DOVECOT = Path("/usr/sbin/dovecot")
PASSWORD = "dovecot-secret"


def free_port() -> int:
    return ports.free_port()


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class Dovecot:
    """A private Dovecot instance; see the module docstring."""

    def __init__(self, users: list[str]):
        if not DOVECOT.exists():
            pytest.skip(f"{DOVECOT} is not installed (Debian: apt-get install dovecot-imapd)")
        # Everything under one short directory that Dovecot's users can traverse (pytest's
        # tmp dirs are 0700) and whose socket paths fit sun_path's 108 bytes.
        self.root = self.run_dir = Path(tempfile.mkdtemp(prefix="pbdv", dir="/tmp"))
        os.chmod(self.root, 0o755)
        self.mail = self.root / "mail"
        self.mail.mkdir()
        self.cert, self.key = self_signed(self.root)
        self.ca_file = self.cert
        self.imaps_port, self.imap_port = free_port(), free_port()
        if os.geteuid() == 0:
            mail_user = pwd.getpwnam("dovecot") if _has_user("dovecot") else pwd.getpwnam("nobody")
            self.uid, self.gid = mail_user.pw_uid, mail_user.pw_gid
            login, internal = "dovenull", "dovecot"
        else:
            self.uid, self.gid = os.getuid(), os.getgid()
            login = internal = pwd.getpwuid(os.getuid()).pw_name
        (self.root / "passwd").write_text("".join(f"{u}:{{PLAIN}}{PASSWORD}\n" for u in users))
        self.config = self.root / "dovecot.conf"
        self.config.write_text(self._config(login, internal))
        self.own(self.mail)
        self.proc = subprocess.Popen(
            [str(DOVECOT), "-F", "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "dovecot.stderr", "wb"),  # noqa: SIM115 (lives with the process)
        )
        self._wait_ready()

    def _config(self, login: str, internal: str) -> str:
        r = self.root
        return f"""
base_dir = {r}/run
state_dir = {r}/state
log_path = {r}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{self.cert}
ssl_key = <{self.key}
auth_mechanisms = plain login
mail_location = maildir:{self.mail}/%n
first_valid_uid = 1
default_login_user = {login}
default_internal_user = {internal}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {r}/passwd
}}
userdb {{
  driver = static
  args = uid={self.uid} gid={self.gid} home={self.mail}/%n
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.imaps_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
namespace inbox {{
  inbox = yes
  separator = /
  mailbox "[Gmail]/Sent Mail" {{
    special_use = \\Sent
  }}
  mailbox "[Gmail]/All Mail" {{
    special_use = \\All
  }}
  mailbox Drafts {{
    special_use = \\Drafts
  }}
}}
"""

    def own(self, path: Path) -> None:
        """Give ``path`` (recursively) to the user Dovecot reads mail as."""
        if os.geteuid() != 0:
            return
        os.chown(path, self.uid, self.gid)
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames + filenames:
                os.chown(os.path.join(dirpath, name), self.uid, self.gid)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                client = self.client_plain()
                client.logout()
                return
            except (OSError, imaplib.IMAP4.error):
                time.sleep(0.05)
        log = ""
        for name in ("dovecot.log", "dovecot.stderr"):
            if (self.root / name).exists():
                log += (self.root / name).read_text(errors="replace")
        self.stop()
        pytest.skip(f"dovecot did not start:\n{log[-2000:]}")

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def client_plain(self) -> imaplib.IMAP4_SSL:
        return imaplib.IMAP4_SSL(
            "127.0.0.1", self.imaps_port, ssl_context=self.context(), timeout=10
        )

    def login(self, user: str) -> imaplib.IMAP4_SSL:
        client = self.client_plain()
        client.login(user, PASSWORD)
        return client

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


# -- filling and reading mailboxes over IMAP ---------------------------------------------------


def quoted(name: str) -> str:
    return imapwire.quote(encode_utf7(name).encode()).decode()


def encode_utf7(text: str) -> str:
    import base64

    out, pending = [], []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode().rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for ch in text:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def append(
    client: imaplib.IMAP4, folder: str, data: bytes, flags: str = "", when: float = 1e9
) -> None:
    if folder.upper() != "INBOX":
        client.create(quoted(folder))  # NO [ALREADYEXISTS] is fine
    typ, info = client.append(quoted(folder), f"({flags})" if flags else None,
                              imaplib.Time2Internaldate(when), data)  # fmt: skip
    assert typ == "OK", info


Snapshot = dict[str, tuple[int, list[tuple[int, frozenset[str], float | None, bytes]]]]


def snapshot(client: imaplib.IMAP4, *, skip: tuple[str, ...] = ()) -> Snapshot:
    """Every selectable mailbox: (UIDVALIDITY, [(UID, flags, INTERNALDATE, body)])."""
    result: Snapshot = {}
    _, listing = client.list()
    for folder in imapwire.parse_list(listing):
        if "\\noselect" in folder.attributes or folder.name in skip:
            continue
        client.select(imapwire.quote(folder.raw), readonly=True)
        uidvalidity = int(client.response("UIDVALIDITY")[1][0])
        _typ, data = client.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE BODY.PEEK[])")
        messages = [
            (m.uid, frozenset(m.flags), m.internal_date, m.data or b"")
            for m in imapwire.parse_fetch([d for d in data if d is not None])
        ]
        result[folder.name] = (uidvalidity, sorted(messages))
    return result


def contents(snap: Snapshot) -> dict[str, list[tuple[frozenset[str], float | None, bytes]]]:
    """The snapshot without UIDs and UIDVALIDITY (for copies into another server)."""
    return {name: [m[1:] for m in messages] for name, (_, messages) in snap.items()}


def message(n: int, folder: str = "INBOX", extra: str = "") -> bytes:
    body = f"Message {n} in {folder}.\r\nFrom the start of a line.\r\n>From quoted.\r\n{extra}"
    return (
        f"From: Sender {n} <s{n}@example.org>\r\nTo: alice@example.test\r\n"
        f"Subject: {folder} {n}\r\nMessage-ID: <{n}.{abs(hash(folder))}@example.org>\r\n"
        f"Date: Mon, 7 Feb 1994 21:52:{n % 60:02d} -0800\r\n\r\n{body}"
    ).encode()


# -- a proxy that cuts the connection ---------------------------------------------------------


class CuttingProxy:
    """Forwards loopback TCP to ``port``; the first connection is cut after the server has
    sent ``cut_after`` bytes. ``refuse_after_cut`` refuses every later connection."""

    def __init__(self, port: int, cut_after: int, *, refuse_after_cut: bool = False):
        self.target = port
        self.cut_after = cut_after
        self.refuse_after_cut = refuse_after_cut
        self.cuts = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if self.cuts and self.refuse_after_cut:
                conn.close()
                continue
            limit = self.cut_after if not self.cuts else None
            threading.Thread(target=self._serve, args=(conn, limit), daemon=True).start()

    def _serve(self, client: socket.socket, limit: int | None) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target))
        threading.Thread(target=_pump, args=(client, upstream, None, self), daemon=True).start()
        _pump(upstream, client, limit, self)

    def close(self) -> None:
        self._stop = True
        self.listener.close()


def _pump(src: socket.socket, dst: socket.socket, limit: int | None, proxy: Any) -> None:
    sent = 0
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            if limit is not None and sent + len(data) >= limit:
                dst.sendall(data[: limit - sent])
                proxy.cuts += 1
                break
            dst.sendall(data)
            sent += len(data)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()
