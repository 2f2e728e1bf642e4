"""SMTP replies as named constants: reply code, enhanced status code, generic text.

Every reply the server sends is one of the constants below (or ``Reply.with_text`` of one,
for texts that carry a value we chose, such as a queue id). Texts are generic on purpose:
they say what the client did wrong, never what happened inside the server (maddy's rule:
"don't include configuration variables"; a failed disk write is "local error in
processing", not an errno).

Enhanced status codes (RFC 3463, RFC 2034 ENHANCEDSTATUSCODES) accompany every reply except
the greeting and the HELO/EHLO answers (RFC 2034 §3). Reply wire bytes are built once at
import time, so the command path does not format strings for the common replies.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    enhanced: str  # "" for the greeting and HELO/EHLO (RFC 2034 §3)
    text: str
    wire: bytes = field(default=b"", compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"bad SMTP reply code {self.code}")
        if any(c in self.text for c in "\r\n\0"):
            raise ValueError("reply text must be one line")
        prefix = f"{self.code} {self.enhanced} " if self.enhanced else f"{self.code} "
        object.__setattr__(self, "wire", (prefix + self.text + "\r\n").encode("utf-8"))

    @property
    def is_success(self) -> bool:
        return self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def with_text(self, text: str) -> Reply:
        """The same codes with another (still generic) text."""
        return Reply(self.code, self.enhanced, text)


def multiline(code: int, lines: list[str]) -> bytes:
    """A multi-line reply (RFC 5321 §4.2.1): ``250-a``, ``250-b``, ``250 c``."""
    out = [f"{code}-{line}\r\n" for line in lines[:-1]]
    out.append(f"{code} {lines[-1]}\r\n")
    return "".join(out).encode("utf-8")


# -- 2xx / 3xx -------------------------------------------------------------------------------
OK = Reply(250, "2.0.0", "OK")
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
RESET_OK = Reply(250, "2.0.0", "Reset OK")
NOOP_OK = Reply(250, "2.0.0", "OK")
MESSAGE_ACCEPTED = Reply(250, "2.0.0", "Message accepted")
CHUNK_OK = Reply(250, "2.0.0", "Chunk received")
CANNOT_VRFY = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
HELP = Reply(214, "2.0.0", "See RFC 5321")
CLOSING = Reply(221, "2.0.0", "Bye")
READY_FOR_TLS = Reply(220, "2.0.0", "Ready to start TLS")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
START_DATA = Reply(354, "", "Start mail input; end with <CRLF>.<CRLF>")

# -- 4xx: try again later --------------------------------------------------------------------
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, try again later")
TIMEOUT = Reply(421, "4.4.2", "Timeout, closing connection")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
TOO_MANY_COMMANDS = Reply(421, "4.7.0", "Too many commands, closing connection")
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later")
OUTBOUND_UNAVAILABLE = Reply(451, "4.3.2", "Outbound delivery unavailable, try again later")
STORAGE_FULL = Reply(452, "4.3.1", "Insufficient system storage")
# RFC 3463 §3.3 X.2.2 "mailbox full": temporary (4xx), the sender retries; never a bounce.
MAILBOX_FULL = Reply(452, "4.2.2", "Mailbox full")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
TLS_NOT_AVAILABLE = Reply(454, "4.7.0", "TLS not available")
AUTH_TEMPORARY = Reply(454, "4.7.0", "Temporary authentication failure")

# -- 5xx: permanent --------------------------------------------------------------------------
SYNTAX_ERROR = Reply(500, "5.5.2", "Syntax error, command unrecognized")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
PARAM_SYNTAX = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
BAD_HELO = Reply(501, "5.5.4", "Invalid domain name")
BAD_SENDER_SYNTAX = Reply(501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT_SYNTAX = Reply(501, "5.1.3", "Bad recipient address syntax")
BAD_AUTH_DATA = Reply(501, "5.5.2", "Cannot decode authentication data")
AUTH_CANCELLED = Reply(501, "5.0.0", "Authentication cancelled")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
HELO_FIRST = Reply(503, "5.5.1", "Send EHLO or HELO first")
MAIL_FIRST = Reply(503, "5.5.1", "Send MAIL first")
RCPT_FIRST = Reply(503, "5.5.1", "Send RCPT first")
NESTED_MAIL = Reply(503, "5.5.1", "Sender already specified")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Already authenticated")
AUTH_NOT_AVAILABLE = Reply(503, "5.5.1", "AUTH not available")
ALREADY_TLS = Reply(503, "5.5.1", "TLS already active")
BDAT_DATA_MIX = Reply(503, "5.5.1", "DATA and BDAT cannot be mixed in one transaction")
UNKNOWN_PARAMETER = Reply(555, "5.5.4", "Unsupported MAIL or RCPT parameter")
PARAM_NOT_IMPLEMENTED = Reply(504, "5.5.4", "Parameter not implemented")
UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication mechanism")
STARTTLS_FIRST = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
MAILBOX_UNKNOWN = Reply(550, "5.1.1", "No such user here")
POLICY_REJECTED = Reply(550, "5.7.1", "Message rejected due to sender policy (DMARC)")
FROM_NOT_OWNED = Reply(550, "5.7.1", "From header address not owned by authenticated user")
NO_FROM_HEADER = Reply(550, "5.6.0", "Message has no valid From header")
SENDER_NOT_OWNED = Reply(553, "5.7.1", "Sender address not owned by authenticated user")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
# A BDAT chunk larger than the whole advertised SIZE: refused before its data is read, and
# the connection closed, since skipping a chunk of any declared size would serve the client.
CHUNK_TOO_BIG = Reply(
    552, "5.3.4", "Chunk exceeds the maximum message size (see SIZE); closing connection"
)
RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
BARE_LINE_ENDING = Reply(521, "5.5.2", "Bare CR or LF in message data; use CRLF line endings")
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "No valid recipients")
UTF8_NOT_ALLOWED = Reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
ADDRESS_NOT_SUPPORTED = Reply(553, "5.1.3", "Mailbox name not allowed")
