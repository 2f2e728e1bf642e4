"""Running a validated script against one message: the result is a list of actions.

``run(script, message, envelope)`` evaluates the tree ``pillarbox.sieve.parse`` returned
and answers what to do; it performs nothing itself (delivery files, flags, rejects, sends
vacation replies), so it is a pure function of its inputs and easy to test against
Pigeonhole's ``sieve-test``.

Implemented: RFC 5228 (keep, discard, redirect, stop, if/elsif/else, address, header,
exists, size, allof/anyof/not/true/false; comparators i;octet and i;ascii-casemap; match
types :is :contains :matches), fileinto, reject (RFC 5429), envelope, imap4flags
(RFC 5232), vacation (RFC 5230: the action; the RFC 3834 checks are the caller's, as they
need the user's addresses and the reply memory), variables (RFC 5229), body (RFC 5173),
subaddress (RFC 5233), copy (RFC 3894), relational and i;ascii-numeric (RFC 5231), date,
currentdate and index (RFC 5260), mailbox (RFC 5490: ``:create`` is what fileinto does
anyway, ``mailboxexists``), vacation-seconds (RFC 6131).

The implicit keep (RFC 5228 §2.10.2) is returned as a ``Keep`` at the end of the list when
no action cancelled it. Runtime errors (too many actions or redirects, reject combined
with a delivering action) raise :class:`SieveRuntimeError`; the caller then delivers to the
implicit keep folder and logs why (RFC 5228 §2.10.6), so a filter never loses mail.
"""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from pillarbox.sieve.message import SieveMessage
from pillarbox.sieve.parser import Argument, Command, Number, Script, StringList, Test

MAX_STEPS = 100_000  # commands and tests evaluated; a script has no loops, this is a fuse
MAX_ACTIONS = 64
MAX_REDIRECTS = 4
MAX_VARIABLE_CHARS = 4096  # RFC 5229 §6: implementations may limit a variable's length
MAX_VARIABLES = 128
DEFAULT_VACATION_DAYS = 7  # RFC 5230 §4.1
MAX_VACATION_DAYS = 90


class SieveRuntimeError(Exception):
    """The script failed while running; deliver to the implicit keep and log this."""


@dataclass(frozen=True, slots=True)
class Envelope:
    sender: str  # the SMTP MAIL FROM ("" for the null sender)
    recipient: str  # the address this copy was sent to (RCPT TO, canonical)
    user: str  # the mailbox owner
    delimiter: str = "+"  # recipient_delimiter, for subaddress's :user and :detail
    # Whether the user has a folder of this name (RFC 5490 mailboxexists); None: unknown,
    # and the test is false.
    folder_exists: Callable[[str], bool] | None = None


@dataclass(frozen=True, slots=True)
class Keep:
    flags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FileInto:
    folder: str
    flags: tuple[str, ...] = ()
    copy: bool = False


@dataclass(frozen=True, slots=True)
class Redirect:
    address: str
    copy: bool = False


@dataclass(frozen=True, slots=True)
class Reject:
    reason: str


@dataclass(frozen=True, slots=True)
class Discard:
    pass


@dataclass(frozen=True, slots=True)
class Vacation:
    reason: str
    days: int  # the period in days (rounded up from :seconds)
    subject: str | None
    from_address: str | None
    addresses: tuple[str, ...]
    mime: bool
    handle: str


Action = Keep | FileInto | Redirect | Reject | Discard | Vacation


@dataclass
class _State:
    message: SieveMessage
    envelope: Envelope
    requires: frozenset[str]
    now: datetime.datetime
    actions: list[Action] = field(default_factory=list)
    implicit_keep: bool = True
    flags: list[str] = field(default_factory=list)  # the internal variable (RFC 5232 §3)
    variables: dict[str, str] = field(default_factory=dict)
    matches: list[str] = field(default_factory=list)  # ${0}..${9} (RFC 5229 §3.2)
    steps: int = 0
    redirects: int = 0


class _Stop(Exception):
    pass


def run(
    script: Script,
    message: SieveMessage,
    envelope: Envelope,
    *,
    now: datetime.datetime | None = None,
) -> list[Action]:
    """The actions ``script`` takes for ``message``; raises SieveRuntimeError."""
    state = _State(message, envelope, script.requires, now or datetime.datetime.now(datetime.UTC))
    try:
        _block(script.commands, state)
    except _Stop:
        pass
    except RecursionError as exc:  # cannot happen below MAX_NESTING; never lose mail
        raise SieveRuntimeError("script too deeply nested") from exc
    actions = state.actions
    if any(isinstance(a, Reject) for a in actions):
        # RFC 5429 §2.1 / RFC 5230 §4.7: reject with keep, fileinto, redirect or vacation.
        clashing = [a for a in actions if not isinstance(a, Reject | Discard)]
        if clashing:
            raise SieveRuntimeError(f"reject cannot be combined with {_name(clashing[0])}")
    if state.implicit_keep:
        actions.append(Keep(tuple(state.flags)))
    return _dedupe(actions)


def _name(action: Action) -> str:
    return {Keep: "keep", FileInto: "fileinto", Redirect: "redirect", Vacation: "vacation"}.get(
        type(action), "another action"
    )


def _dedupe(actions: list[Action]) -> list[Action]:
    # RFC 5228 §4.2/§2.10.3: a message is filed into the same folder (keep is INBOX's
    # fileinto) and redirected to the same address once; the flags of the last win.
    out: dict[object, Action] = {}
    for action in actions:
        key: object
        if isinstance(action, Keep):
            key = ("folder", None)
        elif isinstance(action, FileInto):
            key = ("folder", action.folder)
        elif isinstance(action, Redirect):
            key = ("redirect", action.address.lower())
        else:
            key = (type(action).__name__, id(action))
        out.pop(key, None)
        out[key] = action
    return list(out.values())


# -- commands --------------------------------------------------------------------------


def _block(commands: Sequence[Command], state: _State) -> None:
    skipping = False  # an earlier branch of this if/elsif/else chain was taken
    for command in commands:
        _step(state)
        name = command.name
        if name == "if":
            skipping = _test(command.tests[0], state)
            if skipping:
                _block(command.block or (), state)
        elif name == "elsif":
            if not skipping:
                skipping = _test(command.tests[0], state)
                if skipping:
                    _block(command.block or (), state)
        elif name == "else":
            if not skipping:
                _block(command.block or (), state)
            skipping = False
        else:
            skipping = False
            _command(command, state)


def _step(state: _State) -> None:
    state.steps += 1
    if state.steps > MAX_STEPS:
        raise SieveRuntimeError(f"script ran more than {MAX_STEPS} steps")


def _act(state: _State, action: Action, *, cancels_keep: bool) -> None:
    if len(state.actions) >= MAX_ACTIONS:
        raise SieveRuntimeError(f"more than {MAX_ACTIONS} actions")
    state.actions.append(action)
    if cancels_keep:
        state.implicit_keep = False


def _command(command: Command, state: _State) -> None:
    name = command.name
    if name == "require":
        return
    if name == "stop":
        raise _Stop
    if name == "keep":
        _act(state, Keep(_flags_for(command, state)), cancels_keep=True)
    elif name == "discard":
        _act(state, Discard(), cancels_keep=True)
    elif name == "fileinto":
        copy = "copy" in command.tags
        folder = _string(command.positional[0], state)
        _act(state, FileInto(folder, _flags_for(command, state), copy), cancels_keep=not copy)
    elif name == "redirect":
        state.redirects += 1
        if state.redirects > MAX_REDIRECTS:
            raise SieveRuntimeError(f"more than {MAX_REDIRECTS} redirects")
        address = _string(command.positional[0], state).strip()
        copy = "copy" in command.tags
        _act(state, Redirect(address, copy), cancels_keep=not copy)
    elif name == "reject":
        _act(state, Reject(_string(command.positional[0], state)), cancels_keep=True)
    elif name == "vacation":
        _vacation(command, state)
    elif name in ("setflag", "addflag", "removeflag"):
        _flag_command(command, state)
    elif name == "set":
        _set(command, state)
    else:  # validation lets nothing else through
        raise SieveRuntimeError(f'unknown command "{name}"')


def _flags_for(command: Command, state: _State) -> tuple[str, ...]:
    """:flags given, else the internal variable (RFC 5232 §5) when imap4flags is on."""
    given = command.tags.get("flags")
    if given is not None:
        return tuple(_flag_list(_strings(given, state)))
    return tuple(state.flags) if "imap4flags" in state.requires else ()


def _flag_list(values: Iterable[str]) -> list[str]:
    # RFC 5232 §3: a flag list is space-separated names; duplicates (case-insensitive)
    # are dropped, the first spelling kept.
    out: list[str] = []
    seen: set[str] = set()
    for value in values:
        for flag in value.split():
            if flag.lower() not in seen:
                seen.add(flag.lower())
                out.append(flag)
    return out


def _flag_command(command: Command, state: _State) -> None:
    positional = command.positional
    variable = _string(positional[0], state).lower() if len(positional) == 2 else None
    given = _flag_list(_strings(positional[-1], state))
    current = state.flags if variable is None else _flag_list([state.variables.get(variable, "")])
    if command.name == "setflag":
        result = given
    elif command.name == "addflag":
        result = _flag_list([*current, *given])
    else:
        drop = {f.lower() for f in given}
        result = [f for f in current if f.lower() not in drop]
    if variable is None:
        state.flags = result
    else:
        _assign(state, variable, " ".join(result))


def _set(command: Command, state: _State) -> None:
    name = _string(command.positional[0], state).lower()
    value = _string(command.positional[1], state)
    tags = command.tags
    # RFC 5229 §4.1: modifiers apply from the highest precedence down.
    if "lower" in tags:
        value = value.lower()
    if "upper" in tags:
        value = value.upper()
    if "lowerfirst" in tags:
        value = value[:1].lower() + value[1:]
    if "upperfirst" in tags:
        value = value[:1].upper() + value[1:]
    if "quotewildcard" in tags:
        value = re.sub(r"([*?\\])", r"\\\1", value)
    if "length" in tags:
        value = str(len(value))
    _assign(state, name, value)


def _assign(state: _State, name: str, value: str) -> None:
    if name not in state.variables and len(state.variables) >= MAX_VARIABLES:
        raise SieveRuntimeError(f"more than {MAX_VARIABLES} variables")
    state.variables[name] = value[:MAX_VARIABLE_CHARS]


def _vacation(command: Command, state: _State) -> None:
    if any(isinstance(a, Vacation) for a in state.actions):
        raise SieveRuntimeError("vacation used twice")  # RFC 5230 §4.7
    tags = command.tags
    reason = _string(command.positional[0], state)
    days_arg = tags.get("days")
    seconds_arg = tags.get("seconds")
    if isinstance(seconds_arg, Number):
        # RFC 6131: the period in seconds; our memory keeps whole days, at least one.
        days = -(-seconds_arg.value // 86400)
    elif isinstance(days_arg, Number):
        days = days_arg.value
    else:
        days = DEFAULT_VACATION_DAYS
    days = max(1, min(days, MAX_VACATION_DAYS))  # RFC 5230 §4.1: the site may bound it
    subject = _optional(tags.get("subject"), state)
    from_address = _optional(tags.get("from"), state)
    addresses_arg = tags.get("addresses")
    addresses = tuple(_strings(addresses_arg, state)) if addresses_arg else ()
    mime = "mime" in tags
    handle = _optional(tags.get("handle"), state)
    if handle is None:
        # RFC 5230 §4.2: without :handle, a changed reason or subject is a new vacation.
        digest = hashlib.sha256(f"{reason}\0{subject}\0{from_address}\0{mime}".encode())
        handle = digest.hexdigest()[:32]
    action = Vacation(reason, days, subject, from_address, addresses, mime, handle)
    _act(state, action, cancels_keep=False)


def _optional(argument: Argument | None, state: _State) -> str | None:
    return None if argument is None else _string(argument, state)


# -- strings and variables -------------------------------------------------------------

_VARIABLE_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.]*|[0-9]+)\}")


def _expand(text: str, state: _State) -> str:
    """RFC 5229 §3: ${name} and ${N} replaced (unknown ones by ""), once, left to right."""
    if "variables" not in state.requires or "${" not in text:
        return text

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.isdigit():
            index = int(name)
            return state.matches[index] if index < len(state.matches) else ""
        return state.variables.get(name.lower(), "")

    return _VARIABLE_REF.sub(value, text)


def _string(argument: Argument, state: _State) -> str:
    assert isinstance(argument, StringList)
    return _expand(argument.values[0], state)


def _strings(argument: Argument, state: _State) -> list[str]:
    assert isinstance(argument, StringList)
    return [_expand(value, state) for value in argument.values]


# -- tests -----------------------------------------------------------------------------


def _test(test: Test, state: _State) -> bool:
    _step(state)
    name = test.name
    if name == "true":
        return True
    if name == "false":
        return False
    if name == "not":
        return not _test(test.tests[0], state)
    if name == "allof":
        return all(_test(t, state) for t in test.tests)  # short-circuits (RFC 5228 §5.2)
    if name == "anyof":
        return any(_test(t, state) for t in test.tests)
    if name == "exists":
        return all(state.message.header_values(h) for h in _strings(test.positional[0], state))
    if name == "size":
        limit = test.positional[0]
        assert isinstance(limit, Number)
        if "over" in test.tags:
            return state.message.size > limit.value
        return state.message.size < limit.value
    if name == "header":
        values = _indexed(test, _header_values(test, state), state)
        return _match(test, values, _strings(test.positional[1], state), state)
    if name == "address":
        values = _indexed(test, _header_values(test, state), state)
        return _match(test, _address_values(test, values, state), _keys(test, state), state)
    if name == "envelope":
        return _match(test, _envelope_values(test, state), _keys(test, state), state)
    if name == "string":
        return _match(test, _strings(test.positional[0], state), _keys(test, state), state, True)
    if name == "hasflag":
        return _hasflag(test, state)
    if name == "body":
        return _body(test, state)
    if name in ("date", "currentdate"):
        return _date(test, state)
    if name == "mailboxexists":
        exists = state.envelope.folder_exists
        names = _strings(test.positional[0], state)
        return exists is not None and all(exists(n) for n in names)
    raise SieveRuntimeError(f'unknown test "{name}"')


def _keys(test: Test, state: _State) -> list[str]:
    return _strings(test.positional[-1], state)


def _header_values(test: Test, state: _State) -> list[str]:
    out: list[str] = []
    for name in _strings(test.positional[0], state):
        out += state.message.header_values(name)
    return out


def _indexed(test: Test, values: list[str], state: _State) -> list[str]:
    """RFC 5260 §6: :index N picks the Nth field (1-based, from the end with :last)."""
    index = test.tags.get("index")
    if not isinstance(index, Number):
        return values
    position = index.value
    if position < 1 or position > len(values):
        return []
    return [values[-position] if "last" in test.tags else values[position - 1]]


def _address_values(test: Test, values: list[str], state: _State) -> list[str]:
    out: list[str] = []
    for _, address in email.utils.getaddresses(values):
        part = _address_part(test, address, state)
        if part is not None:
            out.append(part)
    return out


def _envelope_values(test: Test, state: _State) -> list[str]:
    out: list[str] = []
    for part in _strings(test.positional[0], state):
        part = part.lower()
        if part == "from":
            address = state.envelope.sender
        elif part == "to":
            address = state.envelope.recipient
        else:
            continue
        # RFC 5228 §5.4: the null reverse-path is "" for :all and matches nothing else.
        if address == "":
            if _part_name(test) == "all":
                out.append("")
            continue
        value = _address_part(test, address, state)
        if value is not None:
            out.append(value)
    return out


def _part_name(test: Test) -> str:
    for name in ("localpart", "domain", "user", "detail"):
        if name in test.tags:
            return name
    return "all"


def _address_part(test: Test, address: str, state: _State) -> str | None:
    part = _part_name(test)
    if part == "all":
        return address
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    if part == "localpart":
        return local
    if part == "domain":
        return domain
    # RFC 5233 §4: :user is before the delimiter, :detail after; no delimiter means
    # :detail matches nothing (but an empty detail, "user+@", matches "").
    user, sep, detail = local.partition(state.envelope.delimiter)
    if part == "user":
        return user
    return detail if sep else None


def _hasflag(test: Test, state: _State) -> bool:
    if len(test.positional) == 2:
        names = [n.lower() for n in _strings(test.positional[0], state)]
        flags = _flag_list(state.variables.get(n, "") for n in names)
    else:
        flags = list(state.flags)
    return _match(test, flags, _flag_list(_keys(test, state)), state)


def _body(test: Test, state: _State) -> bool:
    types: tuple[str, ...] = ()
    if "raw" in test.tags:
        transform = "raw"
    elif "content" in test.tags:
        content = test.tags["content"]
        assert content is not None
        transform = "content"
        types = tuple(_strings(content, state))
    else:
        transform = "text"
    # The body test has no :matches captures worth keeping (RFC 5173 §5: it is a
    # :contains-like search); use the general matcher all the same.
    return _match(test, state.message.body(transform, types), _keys(test, state), state)


# -- matching (RFC 5228 §2.7, RFC 5231) ------------------------------------------------


def _match(
    test: Test,
    values: list[str],
    keys: list[str],
    state: _State,
    count_nonempty: bool = False,
) -> bool:
    comparator = _comparator(test, state)
    count = test.tags.get("count")
    if count is not None:
        # RFC 5231 §4.1: the number of values, compared as a number; for the string test
        # only non-empty strings count (RFC 5229 §5).
        total = len([v for v in values if v]) if count_nonempty else len(values)
        operator = _string(count, state).lower()
        return any(_relate(_numeric(str(total)), _numeric(k), operator) for k in keys)
    relation = test.tags.get("value")
    if relation is not None:
        operator = _string(relation, state).lower()
        for value in values:
            for key in keys:
                if _relate(_order_key(value, comparator), _order_key(key, comparator), operator):
                    return True
        return False
    if "contains" in test.tags:
        if comparator == "i;ascii-numeric":
            raise SieveRuntimeError('":contains" cannot be used with "i;ascii-numeric"')
        return any(_fold(k, comparator) in _fold(v, comparator) for v in values for k in keys)
    if "matches" in test.tags:
        return _matches(values, keys, comparator, state)
    if comparator == "i;ascii-numeric":
        return any(_numeric(v) == _numeric(k) for v in values for k in keys)
    return any(_fold(v, comparator) == _fold(k, comparator) for v in values for k in keys)


def _comparator(test: Test, state: _State) -> str:
    given = test.tags.get("comparator")
    return "i;ascii-casemap" if given is None else _string(given, state).lower()


def _fold(text: str, comparator: str) -> str:
    if comparator == "i;ascii-casemap":
        # RFC 4790 §9.2: only A-Z are folded (str.lower would fold non-ASCII too).
        return text.translate(_ASCII_LOWER)
    return text


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _numeric(text: str) -> float:
    # RFC 4790 §9.1: the leading digits; a string not starting with one is "infinity".
    digits = re.match(r"[0-9]+", text)
    return float(int(digits.group())) if digits else float("inf")


def _order_key(text: str, comparator: str) -> float | str:
    return _numeric(text) if comparator == "i;ascii-numeric" else _fold(text, comparator)


def _relate(left: float | str, right: float | str, operator: str) -> bool:
    if isinstance(left, float) != isinstance(right, float):
        return False
    a, b = left, right
    if operator == "eq":
        return a == b
    if operator == "ne":
        return a != b
    if operator == "gt":
        return a > b  # type: ignore[operator]
    if operator == "ge":
        return a >= b  # type: ignore[operator]
    if operator == "lt":
        return a < b  # type: ignore[operator]
    if operator == "le":
        return a <= b  # type: ignore[operator]
    raise SieveRuntimeError(f'unknown relational operator "{operator}"')


def _matches(values: list[str], keys: list[str], comparator: str, state: _State) -> bool:
    for key in keys:
        pattern = _glob(key, comparator)
        for value in values:
            found = pattern.fullmatch(value)
            if found:
                if "variables" in state.requires:
                    state.matches = [found.group(0), *(g or "" for g in found.groups())][:10]
                return True
    return False


def _glob(key: str, comparator: str) -> re.Pattern[str]:
    """RFC 5228 §2.7.1: ``*`` is any run, ``?`` one character, ``\\`` quotes the next."""
    out: list[str] = []
    chars = iter(key)
    for char in chars:
        if char == "*":
            out.append("(.*?)")
        elif char == "?":
            out.append("(.)")
        elif char == "\\":
            out.append(re.escape(next(chars, "")))
        elif comparator == "i;ascii-casemap" and char.isascii() and char.isalpha():
            out.append(f"[{char.lower()}{char.upper()}]")
        else:
            out.append(re.escape(char))
    return re.compile("".join(out), re.DOTALL)


# -- date (RFC 5260) -------------------------------------------------------------------


def _date(test: Test, state: _State) -> bool:
    positional = test.positional
    zone = _zone(test, state)
    if test.name == "currentdate":
        moments = [state.now]
    else:
        header = _string(positional[0], state)
        values = _indexed(test, state.message.header_values(header), state)
        moments = []
        for value in values:
            text = value.rpartition(";")[2] if header.lower() == "received" else value
            try:
                moment = email.utils.parsedate_to_datetime(text.strip())
            except (TypeError, ValueError, IndexError):
                continue  # RFC 5260 §4: an unparsable date makes the test false
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=datetime.UTC)
            moments.append(moment)
    date_part = _string(positional[-2], state).lower()
    parts = []
    for moment in moments:
        if zone is not None:
            moment = moment.astimezone(zone)
        part = _date_part(moment, date_part)
        if part is None:
            raise SieveRuntimeError(f'unknown date part "{date_part}"')
        parts.append(part)
    return _match(test, parts, _keys(test, state), state)


def _zone(test: Test, state: _State) -> datetime.tzinfo | None:
    """The zone to convert to: :zone "+hhmm", :originalzone keeps it, default local (UTC
    here: a server has no single user's zone)."""
    if "originalzone" in test.tags:
        return None
    given = test.tags.get("zone")
    if given is None:
        return datetime.UTC
    text = _string(given, state)
    found = re.fullmatch(r"([+-])([0-9]{2})([0-9]{2})", text)
    if not found:
        return datetime.UTC  # RFC 5260 §4.1: an invalid zone is treated as none given
    sign = -1 if found.group(1) == "-" else 1
    offset = datetime.timedelta(hours=int(found.group(2)), minutes=int(found.group(3)))
    return datetime.timezone(sign * offset)


def _date_part(moment: datetime.datetime, part: str) -> str | None:
    offset = moment.utcoffset() or datetime.timedelta()
    minutes = int(offset.total_seconds() // 60)
    zone = f"{'-' if minutes < 0 else '+'}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
    if part == "year":
        return f"{moment.year:04d}"
    if part == "month":
        return f"{moment.month:02d}"
    if part == "day":
        return f"{moment.day:02d}"
    if part == "date":
        return moment.strftime("%Y-%m-%d")
    if part == "julian":
        # Modified Julian Day: days since 1858-11-17.
        return str((moment.date() - datetime.date(1858, 11, 17)).days)
    if part == "hour":
        return f"{moment.hour:02d}"
    if part == "minute":
        return f"{moment.minute:02d}"
    if part == "second":
        return f"{moment.second:02d}"
    if part == "time":
        return moment.strftime("%H:%M:%S")
    if part == "iso8601":
        return moment.strftime("%Y-%m-%dT%H:%M:%S") + zone[:3] + ":" + zone[3:]
    if part == "std11":
        return email.utils.format_datetime(moment)
    if part == "zone":
        return zone
    if part == "weekday":
        return str(moment.isoweekday() % 7)  # 0 is Sunday
    return None


def actions_text(actions: Iterator[Action] | Sequence[Action]) -> str:
    """A short description for the log line: ``fileinto:Lists,keep``."""
    out = []
    for action in actions:
        if isinstance(action, FileInto):
            out.append(f"fileinto:{action.folder}")
        elif isinstance(action, Redirect):
            out.append(f"redirect:{action.address}")
        else:
            out.append(type(action).__name__.lower())
    return ",".join(out)
