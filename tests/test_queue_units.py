"""Pure parts of the outbound queue: routing order, MTA-STS parsing, DSN construction,
DATA encoding, retry timing, and the SMTP client's reply parsing against hostile peers."""

from __future__ import annotations

import asyncio
import email
import random
import socket
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pillarbox.queue import dsn as dsnlib
from pillarbox.queue.api import OutboundRecipient, QueueError
from pillarbox.queue.mtasts import (
    PolicyError,
    mx_matches,
    parse_policy,
    parse_txt,
    render_policy,
)
from pillarbox.queue.remote import Connection, TlsPolicy
from pillarbox.queue.routing import Hop, is_null_mx, order_addresses, order_mx, parse_literal
from pillarbox.queue.runner import FairSlots
from pillarbox.queue.service import _check_enqueue_args, backoff
from pillarbox.queue.signing import from_domains
from pillarbox.smtp.client import (
    DataEncoder,
    Reply,
    SmtpClient,
    SmtpError,
    Timeouts,
    chunks_of,
)

# -- routing --------------------------------------------------------------------------------


def test_order_mx_sorts_by_preference_and_shuffles_equal_ones() -> None:
    records = [(20, "b2"), (10, "a1"), (20, "b1"), (30, "c"), (10, "a2")]
    firsts: Counter[str] = Counter()
    rng = random.Random(1)
    for _ in range(200):
        ordered = order_mx(records, rng)
        assert [p for p, _ in ordered] == [10, 10, 20, 20, 30]
        assert {h for p, h in ordered if p == 10} == {"a1", "a2"}
        firsts[ordered[0][1]] += 1
    assert firsts["a1"] > 50 and firsts["a2"] > 50  # both get their share


def test_null_mx_detection() -> None:
    assert is_null_mx([(0, "")])
    assert not is_null_mx([(0, ""), (10, "mx.example")])
    assert not is_null_mx([(10, "mx.example")])


def test_address_preference_orders_families() -> None:
    addrs = ["192.0.2.1", "2001:db8::1", "192.0.2.2", "2001:db8::2"]
    assert order_addresses(addrs, "ipv4") == [
        "192.0.2.1",
        "192.0.2.2",
        "2001:db8::1",
        "2001:db8::2",
    ]
    assert order_addresses(addrs, "ipv6") == [
        "2001:db8::1",
        "2001:db8::2",
        "192.0.2.1",
        "192.0.2.2",
    ]
    assert order_addresses(addrs, "any") == ["2001:db8::1", "192.0.2.1", "2001:db8::2", "192.0.2.2"]


def test_domain_literals() -> None:
    assert parse_literal("[192.0.2.1]") == "192.0.2.1"
    assert parse_literal("[IPv6:2001:db8::1]") == "2001:db8::1"
    assert parse_literal("[not-an-ip]") is None
    assert parse_literal("example.com") is None


# -- MTA-STS --------------------------------------------------------------------------------


def test_parse_policy() -> None:
    text = (
        "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\n"
        "mx: *.example.net\r\nmax_age: 604800\r\n"
    )
    policy = parse_policy(text, "abc")
    assert policy.enforce and policy.max_age == 604800 and policy.policy_id == "abc"
    assert policy.allows("mail.example.com") and policy.allows("mx1.example.net")
    assert not policy.allows("a.b.example.net") and not policy.allows("example.net")
    assert parse_policy(render_policy(policy), "abc") == policy


@pytest.mark.parametrize(
    "text",
    [
        "version: STSv2\nmode: enforce\nmx: a\nmax_age: 1\n",
        "version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n",
        "version: STSv1\nmode: enforce\nmax_age: 1\n",
        "version: STSv1\nmode: enforce\nmx: a\n",
        "version: STSv1\nmode: enforce\nmx: a\nmax_age: -5\n",
        "",
    ],
)
def test_bad_policies_are_refused(text: str) -> None:
    with pytest.raises(PolicyError):
        parse_policy(text)


def test_max_age_is_capped_at_one_year() -> None:
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 9999999999\n").max_age == 31557600


def test_parse_txt() -> None:
    assert parse_txt(["v=STSv1; id=20190429T010101;"]) == "20190429T010101"
    assert parse_txt(["v=spf1 -all", "v=STSv1; id=abc"]) == "abc"
    assert parse_txt(["v=STSv1; id=a", "v=STSv1; id=b"]) is None  # two records: none
    assert parse_txt(["v=STSv1; id=has-dash"]) is None
    assert parse_txt([]) is None


def test_mx_patterns() -> None:
    assert mx_matches("*.example.com", "mx.example.com.")
    assert not mx_matches("*.example.com", "example.com")
    assert mx_matches("MX.Example.com", "mx.example.COM")


# -- DSN --------------------------------------------------------------------------------------


ORIGINAL = b"From: a@example.test\r\nTo: b@remote.test\r\nSubject: hi\r\n\r\nbody\r\n"


def test_dsn_structure_parses_and_quotes_the_remote_reply() -> None:
    raw = dsnlib.build_dsn(
        hostname="mail.example.test",
        queue_id="Q1",
        sender="a@example.test",
        reports=[
            dsnlib.RecipientReport(
                "b@remote.test",
                "failed",
                "5.1.1",
                "550 5.1.1 no such user",
                "mx.remote.test",
                "rfc822;B+2Bx@remote.test",
            )
        ],
        original=ORIGINAL,
        arrival=0.0,
        envid="E1",
    )
    msg = email.message_from_bytes(raw)
    assert msg.get_content_type() == "multipart/report"
    parts = msg.get_payload()
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        "message/rfc822",
    ]
    per_message, per_rcpt = parts[1].get_payload()
    assert per_message["Reporting-MTA"] == "dns; mail.example.test"
    assert per_message["Original-Envelope-Id"] == "E1"
    assert per_rcpt["Original-Recipient"] == "rfc822; B+x@remote.test"
    assert per_rcpt["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user"
    assert parts[2].get_payload()[0]["Subject"] == "hi"
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))


def test_dsn_ret_hdrs_and_delay_return_headers_only() -> None:
    for action, ret in (("failed", "HDRS"), ("delayed", None)):
        raw = dsnlib.build_dsn(
            hostname="h",
            queue_id="Q",
            sender="a@x",
            reports=[dsnlib.RecipientReport("b@y", action, "4.0.0")],
            original=ORIGINAL,
            arrival=0.0,
            ret=ret,
            retry_until=100.0,
        )
        msg = email.message_from_bytes(raw)
        assert msg.get_payload()[2].get_content_type() == "text/rfc822-headers"
        assert b"body\r\n" not in raw.split(b"text/rfc822-headers")[1]


def test_dsn_header_injection_is_neutralised() -> None:
    raw = dsnlib.build_dsn(
        hostname="h",
        queue_id="Q",
        sender="a@x",
        reports=[dsnlib.RecipientReport("b@y", "failed", "5.0.0", "550 evil\r\nBcc: victim@z")],
        original=ORIGINAL,
        arrival=0.0,
    )
    assert b"\r\nBcc:" not in raw


def test_wants_report_follows_rfc3461() -> None:
    assert dsnlib.wants_report(frozenset(), "failed")
    assert dsnlib.wants_report(frozenset(), "delayed")
    assert not dsnlib.wants_report(frozenset(), "relayed")
    assert not dsnlib.wants_report(frozenset({"NEVER"}), "failed")
    assert not dsnlib.wants_report(frozenset({"SUCCESS"}), "failed")
    assert dsnlib.wants_report(frozenset({"SUCCESS"}), "relayed")
    assert not dsnlib.wants_report(frozenset({"FAILURE"}), "delayed")


def test_status_of() -> None:
    assert dsnlib.status_of("550 5.7.1 denied", True) == "5.7.1"
    assert dsnlib.status_of("5.1.10 null MX", True) == "5.1.10"
    assert dsnlib.status_of("554 rejected", True) == "5.0.0"
    assert dsnlib.status_of("something", False) == "4.0.0"


# -- retry timing and signing domain ---------------------------------------------------------


def test_backoff_doubles_with_jitter_and_cap() -> None:
    rng = random.Random(7)
    delays = [backoff(n, 300, 7200, rng) for n in range(1, 10)]
    assert 240 <= delays[0] <= 360
    assert 480 <= delays[1] <= 720
    assert all(d <= 7200 for d in delays)
    assert delays[-1] >= 7200 * 0.8
    assert len({round(backoff(1, 300, 7200, rng)) for _ in range(20)}) > 5  # jitter


def test_from_domains() -> None:
    msg = (
        b'Subject: x\r\nFrom: "A, B" <a@Example.Test>,\r\n c@other.test\r\n\r\nFrom: not@header\r\n'
    )
    assert from_domains(msg) == ["example.test", "other.test"]


# -- DATA encoding ---------------------------------------------------------------------------


def test_data_encoder_stuffs_dots_and_fixes_line_ends() -> None:
    enc = DataEncoder()
    out = enc.feed(b"a\n.b\r\n") + enc.feed(b"..c\r") + enc.feed(b"\nlast") + enc.finish()
    assert out == b"a\r\n..b\r\n...c\r\nlast\r\n.\r\n"


RELAXED = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@RELAXED
@given(st.lists(st.binary(max_size=50), max_size=10))
def test_data_encoder_round_trips(chunks: list[bytes]) -> None:
    enc = DataEncoder()
    wire = b"".join(enc.feed(c) for c in chunks) + enc.finish()
    assert wire == b".\r\n" or wire.endswith(b"\r\n.\r\n")
    lines = wire[:-3].split(b"\r\n")[:-1]
    assert all(not line.startswith(b".") or line.startswith(b"..") for line in lines)
    body = b"".join(chunks)
    # A CR at the very end (not followed by LF) is dropped with the line end it began.
    body = body[:-1] if body.endswith(b"\r") else body
    segments = body.split(b"\n")
    expected = [segment.removesuffix(b"\r") for segment in segments[:-1]]
    if segments[-1]:
        expected.append(segments[-1])
    assert [line[1:] if line.startswith(b".") else line for line in lines] == expected


# -- SMTP client against hostile or odd peers ------------------------------------------------


async def _serve(script: bytes) -> tuple[asyncio.AbstractServer, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(script)
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize(
    "script",
    [
        b"220 ok\r\n" + b"x" * 20000 + b"\r\n",  # endless line
        b"220-a\r\n221 b\r\n",  # code changes mid-reply
        b"hello\r\n",  # not a reply
        b"220-" + b"a\r\n220-" * 200 + b"z\r\n",  # too many lines
    ],
)
async def test_client_rejects_malformed_replies(script: bytes) -> None:
    server, port = await _serve(script)
    async with server:
        with pytest.raises(SmtpError):
            client = await SmtpClient.connect(
                "127.0.0.1", port, local_hostname="h", timeouts=Timeouts(greeting=2)
            )
            await client.ehlo()


async def test_client_times_out_on_a_silent_peer() -> None:
    server, port = await _serve(b"")
    async with server:
        with pytest.raises(SmtpError, match="timed out"):
            await SmtpClient.connect(
                "127.0.0.1", port, local_hostname="h", timeouts=Timeouts(greeting=0.2)
            )


async def test_client_connect_refused_is_an_smtp_error() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(SmtpError, match="failed"):
        await SmtpClient.connect("127.0.0.1", port, local_hostname="h")


def test_reply_properties() -> None:
    reply = Reply(550, ("5.7.25 no PTR", "see https://support"))
    assert reply.permanent and not reply.temporary
    assert reply.enhanced == "5.7.25"
    assert str(reply) == "550 5.7.25 no PTR see https://support"


@RELAXED
@given(st.binary(max_size=200), st.lists(st.integers(min_value=0, max_value=200), max_size=8))
def test_data_encoder_is_independent_of_chunking(body: bytes, cuts: list[int]) -> None:
    points = sorted({c for c in cuts if c <= len(body)})
    chunks = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    whole, split = DataEncoder(), DataEncoder()
    one = whole.feed(body) + whole.finish()
    many = b"".join(split.feed(c) for c in chunks) + split.finish()
    assert one == many


# -- enqueue argument checks (everything ends up on an SMTP command line) --------------------


@pytest.mark.parametrize(
    ("sender", "rcpt", "envid", "ret"),
    [
        ("a@x\r\nRCPT TO:<evil@y>", OutboundRecipient("b@y"), None, None),
        ("a@x", OutboundRecipient("b@y> NOTIFY=NEVER"), None, None),
        ("a@x", OutboundRecipient("b@y\n"), None, None),
        ("a@x", OutboundRecipient("no-at-sign"), None, None),
        ("a@x", OutboundRecipient("b@y", frozenset({"NEVER", "FAILURE"})), None, None),
        ("a@x", OutboundRecipient("b@y", frozenset({"SOMETIMES"})), None, None),
        ("a@x", OutboundRecipient("b@y", orcpt="rfc822;b@y\r\nQUIT"), None, None),
        ("a@x", OutboundRecipient("b@y"), "id with space", None),
        ("a@x", OutboundRecipient("b@y"), None, "BODY"),
    ],
)
def test_enqueue_refuses_values_that_would_break_the_command_line(
    sender: str, rcpt: OutboundRecipient, envid: str | None, ret: str | None
) -> None:
    with pytest.raises(QueueError):
        _check_enqueue_args(sender, [rcpt], envid, ret)


def test_enqueue_accepts_ordinary_values() -> None:
    rcpts = [OutboundRecipient("jörg@bücher.test", frozenset({"SUCCESS"}), "rfc822;x+2By@z")]
    _check_enqueue_args("", rcpts, "ENV+2B1", "HDRS")
    with pytest.raises(QueueError):
        _check_enqueue_args("a@x", [], None, None)


# -- connection reuse honours the policy in force now ----------------------------------------


class _FakeClient:
    def __init__(self, tls: bool) -> None:
        self.closed = False
        self.tls = tls


def test_reused_connection_must_satisfy_the_current_policy() -> None:
    hop = Hop("mx.remote.test", ("127.0.0.2",))
    plain = Connection("remote.test", _FakeClient(False), hop, "127.0.0.2")  # type: ignore[arg-type]
    unverified = Connection("remote.test", _FakeClient(True), hop, "127.0.0.2")  # type: ignore[arg-type]
    verified = Connection("remote.test", _FakeClient(True), hop, "127.0.0.2", verified=True)  # type: ignore[arg-type]
    may, encrypt = TlsPolicy(), TlsPolicy(required=True)
    enforce = TlsPolicy(required=True, verify=True)
    assert plain.satisfies(may, [hop]) and not plain.satisfies(encrypt, [hop])
    assert unverified.satisfies(encrypt, [hop]) and not unverified.satisfies(enforce, [hop])
    assert verified.satisfies(enforce, [hop])
    assert not verified.satisfies(enforce, [Hop("other.remote.test", ("127.0.0.3",))])


async def test_client_never_counts_a_non_354_data_reply_as_sent() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 hi\r\n")
        replies = iter([b"250-x\r\n250 PIPELINING\r\n", b"250 ok\r\n250 ok\r\n250 ok\r\n"])
        while line := await reader.readline():
            if line.startswith((b"EHLO", b"MAIL")):
                writer.write(next(replies))
            if line.startswith(b"QUIT"):
                break
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        client = await SmtpClient.connect("127.0.0.1", port, local_hostname="h")
        await client.ehlo()
        result = await client.send("a@x", [], [("b@y", [])], chunks_of([b"body\r\n"]))
        assert result.data is not None and result.data.code == 451
        await client.quit()


# -- fair slots ------------------------------------------------------------------------------


async def test_fair_slots_go_round_robin_by_destination() -> None:
    slots = FairSlots(1)
    await slots.acquire("a")
    order: list[str] = []

    async def want(destination: str) -> None:
        await slots.acquire(destination)
        order.append(destination)

    tasks = [asyncio.create_task(want(d)) for d in ("a", "a", "a", "b", "c")]
    await asyncio.sleep(0)
    assert slots.others_waiting("a") and slots.others_waiting("b")
    for _ in range(5):
        slots.release()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == ["a", "b", "c", "a", "a"]


async def test_fair_slots_cancelled_waiter_does_not_leak_a_slot() -> None:
    slots = FairSlots(1)
    await slots.acquire("a")
    waiter = asyncio.create_task(slots.acquire("b"))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not slots.others_waiting("a")
    slots.release()
    await asyncio.wait_for(slots.acquire("c"), 1)
