"""What the commands and tests of the supported extensions accept, and the check of a
parsed script against it.

The grammar (``parser.py``) accepts any identifier with any arguments; this module knows
every command and test, their tagged arguments (grouped where only one of a group may be
given: the match type, the address part, ...), their positional arguments, and which
extension each belongs to. Validation refuses, with the line and column of the culprit:
an unknown command or test, unknown or repeated tags, wrong argument types or counts, a
``require`` of an extension we do not implement, an extension used without ``require``
(RFC 5228 §3.2), ``require`` after another command, and ``elsif``/``else`` without ``if``.

The result is the same tree with each node's ``tags`` (name -> value, None for a flag) and
``positional`` arguments bound, which is what the interpreter reads.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from pillarbox.sieve.parser import (
    Argument,
    Command,
    Number,
    Script,
    SieveSyntaxError,
    StringList,
    Tag,
    Test,
)

ArgKind = Literal["string", "strings", "number"]


@dataclass(frozen=True, slots=True)
class TagSpec:
    name: str
    value: ArgKind | None = None  # the kind of the argument that follows, None for a flag
    group: str | None = None  # at most one tag of a group in one command
    extension: str | None = None  # the capability that must be required to use it


@dataclass(frozen=True, slots=True)
class Spec:
    name: str
    kind: Literal["command", "test"]
    positional: tuple[ArgKind, ...] = ()
    tags: tuple[TagSpec, ...] = ()
    extension: str | None = None
    tests: Literal["none", "one", "list"] = "none"
    block: bool = False
    # How many leading positional arguments may be left out, and the extension their
    # presence needs (setflag's variable name comes with "variables", RFC 5232 §3).
    optional_leading: int = 0
    optional_extension: str | None = None
    required_group: str | None = None  # a group of which one tag must be given


# Comparators (RFC 5228 §2.7.3, RFC 4790): "i;octet" and "i;ascii-casemap" are always
# there; "i;ascii-numeric" needs "comparator-i;ascii-numeric".
COMPARATORS = {
    "i;octet": None,
    "i;ascii-casemap": None,
    "i;ascii-numeric": "comparator-i;ascii-numeric",
}
RELATIONAL_OPERATORS = frozenset({"gt", "ge", "lt", "le", "eq", "ne"})  # RFC 5231 §5
DATE_PARTS = frozenset(  # RFC 5260 §4.2
    {
        "year",
        "month",
        "day",
        "date",
        "julian",
        "hour",
        "minute",
        "second",
        "time",
        "iso8601",
        "std11",
        "zone",
        "weekday",
    }
)
ENVELOPE_PARTS = frozenset({"from", "to"})  # RFC 5228 §5.4

_COMPARATOR = TagSpec("comparator", "string", "comparator")
_MATCH = (
    TagSpec("is", group="match"),
    TagSpec("contains", group="match"),
    TagSpec("matches", group="match"),
    TagSpec("count", "string", "match", "relational"),
    TagSpec("value", "string", "match", "relational"),
)
_ADDRESS_PART = (
    TagSpec("all", group="address-part"),
    TagSpec("localpart", group="address-part"),
    TagSpec("domain", group="address-part"),
    TagSpec("user", group="address-part", extension="subaddress"),
    TagSpec("detail", group="address-part", extension="subaddress"),
)
_INDEX = (
    TagSpec("index", "number", "index", "index"),
    TagSpec("last", extension="index"),
)
_MATCHING = (_COMPARATOR, *_MATCH)
_ZONE = (
    TagSpec("zone", "string", "zone"),
    TagSpec("originalzone", group="zone"),
)
_FLAGS = TagSpec("flags", "strings", extension="imap4flags")
_COPY = TagSpec("copy", extension="copy")

SPECS: dict[tuple[str, str], Spec] = {
    (spec.kind, spec.name): spec
    for spec in (
        # RFC 5228 §3: control
        Spec("require", "command", ("strings",)),
        Spec("if", "command", tests="one", block=True),
        Spec("elsif", "command", tests="one", block=True),
        Spec("else", "command", block=True),
        Spec("stop", "command"),
        # RFC 5228 §4: actions
        Spec("keep", "command", tags=(_FLAGS,)),
        Spec("discard", "command"),
        Spec("redirect", "command", ("string",), tags=(_COPY,)),
        Spec(
            "fileinto",
            "command",
            ("string",),
            (_FLAGS, _COPY, TagSpec("create", extension="mailbox")),  # RFC 5490 §3.2
            "fileinto",
        ),
        Spec("reject", "command", ("string",), extension="reject"),
        # RFC 5230
        Spec(
            "vacation",
            "command",
            ("string",),
            (
                TagSpec("days", "number", "period"),
                TagSpec("seconds", "number", "period", "vacation-seconds"),  # RFC 6131
                TagSpec("subject", "string"),
                TagSpec("from", "string"),
                TagSpec("addresses", "strings"),
                TagSpec("mime"),
                TagSpec("handle", "string"),
            ),
            "vacation",
        ),
        # RFC 5232
        *(
            Spec(
                name,
                "command",
                ("string", "strings"),
                extension="imap4flags",
                optional_leading=1,
                optional_extension="variables",
            )
            for name in ("setflag", "addflag", "removeflag")
        ),
        # RFC 5229 §4: set [MODIFIER] name value; one modifier per precedence level
        Spec(
            "set",
            "command",
            ("string", "string"),
            (
                TagSpec("lower", group="case"),
                TagSpec("upper", group="case"),
                TagSpec("lowerfirst", group="first"),
                TagSpec("upperfirst", group="first"),
                TagSpec("quotewildcard", group="quote"),
                TagSpec("length", group="length"),
            ),
            "variables",
        ),
        # RFC 5228 §5: tests
        Spec("address", "test", ("strings", "strings"), (*_MATCHING, *_ADDRESS_PART, *_INDEX)),
        Spec("envelope", "test", ("strings", "strings"), (*_MATCHING, *_ADDRESS_PART), "envelope"),
        Spec("header", "test", ("strings", "strings"), (*_MATCHING, *_INDEX)),
        Spec("exists", "test", ("strings",)),
        Spec(
            "size",
            "test",
            ("number",),
            (TagSpec("over", group="size"), TagSpec("under", group="size")),
            required_group="size",
        ),
        Spec("allof", "test", tests="list"),
        Spec("anyof", "test", tests="list"),
        Spec("not", "test", tests="one"),
        Spec("true", "test"),
        Spec("mailboxexists", "test", ("strings",), extension="mailbox"),  # RFC 5490 §3.1
        Spec("false", "test"),
        # RFC 5232 §4: hasflag [MATCH-TYPE] [COMPARATOR] [variable-list] list-of-flags
        Spec(
            "hasflag",
            "test",
            ("strings", "strings"),
            _MATCHING,
            "imap4flags",
            optional_leading=1,
            optional_extension="variables",
        ),
        # RFC 5229 §5
        Spec("string", "test", ("strings", "strings"), _MATCHING, "variables"),
        # RFC 5173
        Spec(
            "body",
            "test",
            ("strings",),
            (
                *_MATCHING,
                TagSpec("raw", group="transform"),
                TagSpec("content", "strings", "transform"),
                TagSpec("text", group="transform"),
            ),
            "body",
        ),
        # RFC 5260 §4, §5
        Spec(
            "date", "test", ("string", "string", "strings"), (*_MATCHING, *_ZONE, *_INDEX), "date"
        ),
        Spec(
            "currentdate",
            "test",
            ("string", "strings"),
            (*_MATCHING, TagSpec("zone", "string", "zone")),
            "date",
        ),
    )
}

# Everything a "require" may name: the extensions above and the comparator capabilities.
KNOWN_CAPABILITIES = frozenset(
    {spec.extension for spec in SPECS.values() if spec.extension}
    | {tag.extension for spec in SPECS.values() for tag in spec.tags if tag.extension}
    | {ext for ext in COMPARATORS.values() if ext}
    | {"comparator-i;octet", "comparator-i;ascii-casemap"}
)

_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def validate(script: Script, supported: frozenset[str]) -> Script:
    """Check ``script`` against the specs; ``supported`` is what ``require`` may name."""
    requires: set[str] = set()
    commands = script.commands
    bound: list[Command] = []
    while len(bound) < len(commands) and commands[len(bound)].name == "require":
        command = _bind(commands[len(bound)], requires, supported)
        assert isinstance(command, Command)
        for capability in _strings(command.positional[0]):
            if capability not in supported:
                raise _error(command.positional[0], f'unsupported extension "{capability}"')
            requires.add(capability)
        bound.append(command)
    bound += _block(commands[len(bound) :], requires, supported)
    return Script(tuple(bound), frozenset(requires))


def _block(
    commands: Sequence[Command], requires: set[str], supported: frozenset[str]
) -> list[Command]:
    out: list[Command] = []
    previous = ""
    for command in commands:
        if command.name == "require":
            raise _error(command, '"require" must come before every other command')
        if command.name in ("elsif", "else") and previous not in ("if", "elsif"):
            raise _error(command, f'"{command.name}" without a preceding "if"')
        result = _bind(command, requires, supported)
        assert isinstance(result, Command)
        out.append(result)
        previous = command.name
    return out


def _bind(node: Command | Test, requires: set[str], supported: frozenset[str]) -> Command | Test:
    kind: Literal["command", "test"] = "command" if isinstance(node, Command) else "test"
    spec = SPECS.get((kind, node.name))
    if spec is None:
        other = "test" if kind == "command" else "command"
        hint = f' ("{node.name}" is a {other})' if (other, node.name) in SPECS else ""
        raise _error(node, f'unknown {kind} "{node.name}"{hint}')
    if spec.extension:
        _need(node, spec.extension, requires, f'"{node.name}"')
    tags, positional = _arguments(node, spec, requires)
    _check_values(node, tags, positional, requires)
    tests = _tests(node, spec, requires, supported)
    if isinstance(node, Command):
        block = node.block
        if spec.block and block is None:
            raise _error(node, f'"{node.name}" needs a block {{ ... }}')
        if not spec.block and block is not None:
            raise _error(node, f'"{node.name}" takes no block; end it with ";"')
        if block is not None:
            block = tuple(_block(block, requires, supported))
        return dataclasses.replace(
            node,
            tests=tests,
            block=block,
            tags=MappingProxyType(tags),
            positional=tuple(positional),
        )
    return dataclasses.replace(
        node, tests=tests, tags=MappingProxyType(tags), positional=tuple(positional)
    )


def _arguments(
    node: Command | Test, spec: Spec, requires: set[str]
) -> tuple[dict[str, Argument | None], list[Argument]]:
    tags: dict[str, Argument | None] = {}
    groups: dict[str, str] = {}
    positional: list[Argument] = []
    by_name = {tag.name: tag for tag in spec.tags}
    arguments = list(node.arguments)
    index = 0
    while index < len(arguments):
        argument = arguments[index]
        index += 1
        if not isinstance(argument, Tag):
            positional.append(argument)
            continue
        if positional:
            # RFC 5228 §2.6.2: tagged arguments come before positional ones.
            raise _error(
                argument, f'":{argument.name}" must come before "{node.name}"\'s other arguments'
            )
        tag = by_name.get(argument.name)
        if tag is None:
            raise _error(argument, f'"{node.name}" has no ":{argument.name}" argument')
        if tag.extension:
            _need(argument, tag.extension, requires, f'":{argument.name}"')
        if argument.name in tags:
            raise _error(argument, f'":{argument.name}" given twice')
        if tag.group:
            if tag.group in groups:
                raise _error(
                    argument, f'":{argument.name}" cannot be combined with ":{groups[tag.group]}"'
                )
            groups[tag.group] = argument.name
        value: Argument | None = None
        if tag.value is not None:
            if index >= len(arguments) or not _is_kind(arguments[index], tag.value):
                raise _error(
                    argument, f'":{argument.name}" must be followed by {_KIND_TEXT[tag.value]}'
                )
            value = arguments[index]
            index += 1
        tags[argument.name] = value
    if spec.required_group and spec.required_group not in groups:
        options = " or ".join(f'":{t.name}"' for t in spec.tags if t.group == spec.required_group)
        raise _error(node, f'"{node.name}" needs {options}')
    if "last" in tags and "index" not in tags:
        raise _error(node, '":last" needs ":index"')  # RFC 5260 §6
    expected = spec.positional
    if spec.optional_leading and len(positional) == len(expected) - spec.optional_leading:
        expected = expected[spec.optional_leading :]
    elif spec.optional_leading and spec.optional_extension and len(positional) == len(expected):
        _need(node, spec.optional_extension, requires, f'"{node.name}" with a variable')
    if len(positional) != len(expected):
        want = len(expected)
        raise _error(
            node,
            f'"{node.name}" takes {want} positional argument{"s" if want != 1 else ""}, '
            f"not {len(positional)}",
        )
    for argument, kind in zip(positional, expected, strict=True):
        if not _is_kind(argument, kind):
            raise _error(argument, f'"{node.name}" expects {_KIND_TEXT[kind]} here')
    return tags, positional


def _check_values(
    node: Command | Test,
    tags: dict[str, Argument | None],
    positional: list[Argument],
    requires: set[str],
) -> None:
    """Values fixed by the RFCs, checked where the script spells them out."""
    comparator = tags.get("comparator")
    if isinstance(comparator, StringList):
        name = comparator.values[0].lower()
        if name not in COMPARATORS:
            raise _error(comparator, f'unknown comparator "{comparator.values[0]}"')
        needed = COMPARATORS[name]
        if needed:
            _need(comparator, needed, requires, f'comparator "{name}"')
    for relational in ("count", "value"):
        operator = tags.get(relational)
        if (
            isinstance(operator, StringList)
            and operator.values[0].lower() not in RELATIONAL_OPERATORS
        ):
            raise _error(
                operator,
                f'unknown relational operator "{operator.values[0]}" (one of '
                f"{', '.join(sorted(RELATIONAL_OPERATORS))})",
            )
    if node.name == "envelope" and positional and "variables" not in requires:
        for part in _strings(positional[0]):
            if part.lower() not in ENVELOPE_PARTS:
                raise _error(positional[0], f'unknown envelope part "{part}" (use "from" or "to")')
    if node.name in ("date", "currentdate") and positional:
        date_part = positional[-2]
        written = _strings(date_part)[0]
        if "variables" not in requires and written.lower() not in DATE_PARTS:
            raise _error(date_part, f'unknown date part "{written}"')
    if node.name == "set" and positional:
        name = _strings(positional[0])[0]
        if not _VARIABLE_NAME.match(name):
            raise _error(positional[0], f'"{name}" is not a variable name')
    if node.name == "vacation":
        days = tags.get("days")
        if isinstance(days, Number) and days.value < 1:
            raise _error(days, '":days" must be at least 1 (RFC 5230 §4.1)')


def _tests(
    node: Command | Test, spec: Spec, requires: set[str], supported: frozenset[str]
) -> tuple[Test, ...]:
    if spec.tests == "none" and node.tests:
        raise _error(node.tests[0], f'"{node.name}" takes no test')
    if spec.tests == "one" and (len(node.tests) != 1 or node.test_list):
        raise _error(node, f'"{node.name}" needs one test (not a list in parentheses)')
    if spec.tests == "list" and not node.test_list:
        raise _error(node, f'"{node.name}" needs a list of tests in parentheses')
    bound = []
    for test in node.tests:
        result = _bind(test, requires, supported)
        assert isinstance(result, Test)
        bound.append(result)
    return tuple(bound)


def _need(node: Argument | Command | Test, extension: str, requires: set[str], what: str) -> None:
    if extension not in requires:
        raise _error(node, f'{what} needs require "{extension}"')


def _is_kind(argument: Argument, kind: ArgKind) -> bool:
    if kind == "number":
        return isinstance(argument, Number)
    if not isinstance(argument, StringList):
        return False
    return kind == "strings" or not argument.is_list


_KIND_TEXT = {"string": "a string", "strings": "a string or string list", "number": "a number"}


def _strings(argument: Argument) -> tuple[str, ...]:
    return argument.values if isinstance(argument, StringList) else ()


def _error(node: Argument | Command | Test, message: str) -> SieveSyntaxError:
    return SieveSyntaxError(message, node.line, node.column)
