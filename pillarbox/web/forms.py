"""Form bodies: ``application/x-www-form-urlencoded`` only (what a plain HTML form
posts), parsed with bounds. The https front already caps the body at 64 KiB."""

from __future__ import annotations

from urllib.parse import parse_qsl

MAX_FIELDS = 50
FORM_TYPE = "application/x-www-form-urlencoded"


class FormError(Exception):
    pass


def parse_form(content_type: str | None, body: bytes) -> dict[str, str]:
    """The fields of a posted form; the last value wins for a repeated name."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != FORM_TYPE:
        raise FormError(f"expected a form ({FORM_TYPE}), got {media or 'no content type'}")
    try:
        text = body.decode("ascii")  # urlencoded bodies are ASCII (WHATWG URL §5.2)
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=MAX_FIELDS,
            encoding="utf-8",
            errors="strict",
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormError(f"malformed form: {exc}") from None
    return dict(pairs)
