"""The vacation form as Sieve (pillarbox.web.vacation), pure: RFC 5228 §2.4.2 quoting,
the bounds on every field, and the form's values read back from the script it wrote."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pillarbox.web import vacation as v

FORM = {
    "enabled": "on",
    "subject": "Away",
    "message": "I am away.\r\nBack on Monday.",
    "days": "3",
    "addresses": "bob@example.test, Bob.Other@Example.Test",
}


def test_script_from_the_form() -> None:
    vacation = v.from_form(FORM, previous="filters")
    script = v.to_script(vacation)
    assert 'require ["vacation"];\r\n' in script
    assert (
        'vacation :days 3 :subject "Away" :addresses ["bob@example.test", '
        '"bob.other@example.test"]\r\n  "I am away.\r\nBack on Monday.";\r\n'
    ) in script
    assert v.from_script(script) == vacation
    assert vacation.previous == "filters"


def test_off_keeps_the_values_and_only_keeps_mail() -> None:
    script = v.to_script(v.from_form({**FORM, "enabled": ""}))
    assert "vacation :days" not in script and script.endswith("keep;\r\n")
    restored = v.from_script(script)
    assert restored is not None and not restored.enabled and restored.subject == "Away"


def test_quotes_and_backslashes_are_escaped() -> None:
    script = v.to_script(
        v.from_form({**FORM, "subject": 'say "hi" \\o/', "message": '"; discard;'})
    )
    assert ':subject "say \\"hi\\" \\\\o/"' in script
    assert '"\\"; discard;";' in script


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("subject", "two\r\nlines", "one line"),
        ("subject", "x" * 201, "limited"),
        ("message", "bell\x07", "control"),
        ("message", "x" * 10001, "limited"),
        ("message", "", "message first"),
        ("days", "0", "between"),
        ("days", "366", "between"),
        ("days", "seven", "whole number"),
        ("days", "٣", "whole number"),
        ("addresses", "not-an-address", "Not an address"),
        ("addresses", " ".join(f"u{i}@example.test" for i in range(21)), "At most"),
    ],
)
def test_refused(field: str, value: str, message: str) -> None:
    with pytest.raises(v.VacationError, match=message):
        v.from_form({**FORM, field: value})


def test_other_scripts_are_not_ours() -> None:
    assert v.from_script('require "fileinto";\r\nfileinto "x";\r\n') is None
    assert v.from_script(v.MARKER + "{not json\r\nkeep;\r\n") is None


@given(st.text(max_size=200))
def test_sieve_string_escapes_only_quote_and_backslash(text: str) -> None:
    quoted = v.sieve_string(text)
    assert quoted[0] == quoted[-1] == '"'
    # Undo RFC 5228 §2.4.2's two escapes: the text comes back.
    inner, out, i = quoted[1:-1], [], 0
    while i < len(inner):
        if inner[i] == "\\":
            assert inner[i + 1] in '"\\'
            i += 1
        else:
            assert inner[i] != '"'
        out.append(inner[i])
        i += 1
    assert "".join(out) == text
