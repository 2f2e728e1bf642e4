"""The Sieve grammar and validation (RFC 5228 §8, and each extension's arguments)."""

from __future__ import annotations

import pytest

from pillarbox.sieve import EXTENSIONS, SieveSyntaxError, check, parse
from pillarbox.sieve.parser import Number, StringList, Tag


def error_of(text: str) -> SieveSyntaxError:
    with pytest.raises(SieveSyntaxError) as info:
        check(text)
    return info.value


def test_a_full_script_parses_to_bound_commands() -> None:
    script = parse(
        'require ["fileinto", "imap4flags"];\r\n'
        "# a comment\r\n"
        'if header :contains ["subject", "x-spam"] "offer" {\r\n'
        '  fileinto :flags "\\\\Seen" "Junk"; stop;\r\n'
        '} elsif anyof (size :over 1M, not exists "from") { discard; }\r\n'
        "else { keep; }\r\n"
    )
    assert script.requires == {"fileinto", "imap4flags"}
    first = script.commands[1]
    assert first.name == "if" and first.line == 3 and first.column == 1
    header = first.tests[0]
    assert header.tags == {"contains": None}
    assert [a.values for a in header.positional if isinstance(a, StringList)] == [
        ("subject", "x-spam"),
        ("offer",),
    ]
    assert first.block is not None
    fileinto = first.block[0]
    flags = fileinto.tags["flags"]
    assert isinstance(flags, StringList) and flags.values == ("\\Seen",)
    size = script.commands[2].tests[0].tests[0]
    assert size.name == "size" and size.positional == (Number(1024 * 1024, 5, 27),)


def test_numbers_quantifiers() -> None:
    for text, value in (("1", 1), ("2k", 2048), ("3M", 3 * 2**20), ("1G", 2**30)):
        size = parse(f"if size :under {text} {{ keep; }}").commands[0].tests[0]
        assert isinstance(size.positional[0], Number) and size.positional[0].value == value


def test_strings_escapes_and_multiline_with_dot_stuffing() -> None:
    script = parse(
        'require "variables";\n'
        'set "a" "q\\"b\\\\c\\d";\n'
        'set "b" text: # comment here\n'
        "line one\n"
        "..starts with a dot\n"
        ".\n"
        ";\n"
    )
    a = script.commands[1].positional[1]
    b = script.commands[2].positional[1]
    assert isinstance(a, StringList) and a.values == ('q"b\\cd',)
    assert isinstance(b, StringList) and b.values == ("line one\r\n.starts with a dot\r\n",)


def test_bracket_comments_and_tags_are_case_insensitive() -> None:
    script = parse('/* a\n comment */ IF Header :IS "To" "x" { Keep; }')
    test = script.commands[0].tests[0]
    assert script.commands[0].name == "if" and test.tags == {"is": None}
    assert isinstance(test.arguments[0], Tag) and test.arguments[0].line == 2


@pytest.mark.parametrize(
    ("text", "line", "column", "words"),
    [
        ("keep", 1, 5, "expected ';'"),
        ('keep;\nif header "a" "b" {\n  keep;\n', 4, 1, "expected '}'"),
        ('keep;\n  fileinto "x";', 2, 3, 'needs require "fileinto"'),
        ('require "nosuch";', 1, 9, 'unsupported extension "nosuch"'),
        ('keep;\nrequire "fileinto";', 2, 1, "must come before"),
        ("frobnicate;", 1, 1, 'unknown command "frobnicate"'),
        ('if frob "x" { keep; }', 1, 4, 'unknown test "frob"'),
        ('header :is "a" "b";', 1, 1, "is a test"),
        ('if header :is :contains "a" "b" { keep; }', 1, 15, "cannot be combined"),
        ('if header "a" { keep; }', 1, 4, "takes 2 positional"),
        ('if header "a" :is "b" { keep; }', 1, 15, "must come before"),
        ("keep :copy;", 1, 6, 'no ":copy"'),
        ('require "fileinto";\nfileinto :copy "x";', 2, 10, 'needs require "copy"'),
        ('if header :count "ge" "a" "1" { keep; }', 1, 11, 'needs require "relational"'),
        (
            'require "relational";\nif header :count "big" "a" "1" { keep; }',
            2,
            18,
            "relational operator",
        ),
        ('if header :comparator "i;nosuch" "a" "b" { keep; }', 1, 23, "unknown comparator"),
        (
            'if header :comparator "i;ascii-numeric" "a" "1" { keep; }',
            1,
            23,
            "comparator-i;ascii-numeric",
        ),
        ('if address :user "to" "a" { keep; }', 1, 12, 'require "subaddress"'),
        ("if size 10 { keep; }", 1, 4, '":over" or ":under"'),
        ("if (true) { keep; }", 1, 1, "one test"),
        ("if allof true { keep; }", 1, 4, "list of tests"),
        ("else { keep; }", 1, 1, 'without a preceding "if"'),
        ("if true;", 1, 1, "needs a block"),
        ("keep { }", 1, 1, "takes no block"),
        ('x "abc', 1, 3, "unterminated string"),
        ("/* open", 1, 1, "unterminated /* comment"),
        ('require "variables";\nset "a" text:\nno end\n', 2, 9, 'unterminated "text:"'),
        ("if size :over 1X { keep; }", 1, 16, "after a number"),
        ("if size :over 99999999999999999999 { keep; }", 1, 15, "too large"),
        ('require "fileinto";\nfileinto ["a", "b"];', 2, 10, "expects a string"),
        ('require "variables";\nset "1x" "y";', 2, 5, "not a variable name"),
        ('require "vacation";\nvacation :days 0 "away";', 2, 16, "at least 1"),
        ('require "imap4flags";\nsetflag "v" "x";', 2, 1, 'require "variables"'),
        ('if envelope "from" "x" { keep; }', 1, 4, 'require "envelope"'),
        ('require "envelope";\nif envelope "cc" "x" { keep; }', 2, 13, "envelope part"),
        ('require "index";\nif header :last "a" "b" { keep; }', 2, 4, '":last" needs ":index"'),
        ("keep; @", 1, 7, "unexpected character"),
        ("if " * 40 + "true", 1, 1, None),
    ],
)
def test_errors_name_the_line_and_column(
    text: str, line: int, column: int, words: str | None
) -> None:
    error = error_of(text)
    if words is None:
        return  # only that it is refused (the nesting case: where depends on the depth)
    assert (error.line, error.column) == (line, column), str(error)
    assert words in error.message
    assert str(error).startswith(f"line {line}, column {column}: ")


def test_deep_nesting_is_refused_not_a_crash() -> None:
    error = error_of("if not " * 100 + "true { keep; }")
    assert "nested deeper" in error.message
    error = error_of("if true {" * 100 + "}" * 100)
    assert "nested deeper" in error.message


def test_every_extension_can_be_required() -> None:
    check("require [" + ", ".join(f'"{e}"' for e in EXTENSIONS) + "];")
    check('require ["comparator-i;octet", "comparator-i;ascii-casemap"];')


def test_extension_commands_validate_when_required() -> None:
    check(
        'require ["fileinto", "reject", "envelope", "imap4flags", "vacation", "variables",'
        ' "body", "subaddress", "copy", "relational", "comparator-i;ascii-numeric", "date",'
        ' "index"];\n'
        'if envelope :detail "to" "lists" { fileinto :copy :flags ["\\\\Seen"] "Lists"; }\n'
        'if body :content "text" :contains "unsubscribe" { addflag "$Bulk"; }\n'
        'if header :value "ge" :comparator "i;ascii-numeric" "x-score" "5" { reject "no"; }\n'
        'if date :zone "+0000" :index 1 "received" "year" "2026" { removeflag "x" "y"; }\n'
        'if currentdate :value "lt" "hour" "09" { setflag "a"; }\n'
        'if hasflag :contains "a" "\\\\Seen" { keep :flags "x"; }\n'
        'if string :matches "${a}" "*" { set :lower :upperfirst "b" "${1}"; }\n'
        'vacation :days 3 :subject "away" :from "a@example.com" :addresses ["b@example.com"]'
        ' :mime :handle "h" "I am away";\n'
        'redirect :copy "x@example.org";\n'
    )
