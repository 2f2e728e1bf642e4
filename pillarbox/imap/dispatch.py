"""The IMAP command table: every command, the states it is allowed in, and its handler.

One screen, as the SMTP session's ``ALLOWED``/``HANDLERS`` and POP3's ``_HANDLERS``: the
parser (``commands.py``) knows no state, the handlers (``session_*.py``) know no routing,
and :meth:`Session.execute` looks the command's class up here, answers ``BAD`` when the
connection's state is not among the route's states (RFC 3501 §3, §6), and awaits the
handler. A command class missing here is a bug the tests catch
(``test_imap_parse.test_every_command_has_a_route``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from pillarbox.imap import commands as c
from pillarbox.imap import session_connection as conn
from pillarbox.imap import session_mailboxes as boxes
from pillarbox.imap import session_notify as notify
from pillarbox.imap import session_quota as quota
from pillarbox.imap import session_selected as sel
from pillarbox.imap.outcome import Result

if TYPE_CHECKING:
    from pillarbox.imap.session import Session

Handler = Callable[["Session", Any], Awaitable[Result]]
States = frozenset[c.State]

# Connection states (RFC 3501 §3): any, before login, after login (a mailbox selected or
# not), and with a mailbox selected.
ANY: Final[States] = frozenset({c.State.NOT_AUTHENTICATED, c.State.AUTHENTICATED, c.State.SELECTED})
NOT_AUTHENTICATED: Final[States] = frozenset({c.State.NOT_AUTHENTICATED})
AUTHENTICATED: Final[States] = frozenset({c.State.AUTHENTICATED, c.State.SELECTED})
SELECTED: Final[States] = frozenset({c.State.SELECTED})

COMMANDS: Final[dict[type[c.Command], tuple[Handler, States]]] = {
    # any state (RFC 3501 §6.1; ID RFC 2971)
    c.Capability: (conn.do_capability, ANY),
    c.Noop: (conn.do_noop, ANY),
    c.Logout: (conn.do_logout, ANY),
    c.Id: (conn.do_id, ANY),
    # not authenticated (RFC 3501 §6.2)
    c.StartTLS: (conn.do_starttls, NOT_AUTHENTICATED),
    c.Login: (conn.do_login, NOT_AUTHENTICATED),
    c.Authenticate: (conn.do_authenticate, NOT_AUTHENTICATED),
    # authenticated (RFC 3501 §6.3 and extensions)
    c.Enable: (conn.do_enable, AUTHENTICATED),  # RFC 5161
    c.Compress: (conn.do_compress, AUTHENTICATED),  # RFC 4978
    c.Select: (boxes.do_select, AUTHENTICATED),
    c.Examine: (boxes.do_select, AUTHENTICATED),
    c.Create: (boxes.do_create, AUTHENTICATED),
    c.Delete: (boxes.do_delete, AUTHENTICATED),
    c.Rename: (boxes.do_rename, AUTHENTICATED),
    c.Subscribe: (boxes.do_subscribe, AUTHENTICATED),
    c.Unsubscribe: (boxes.do_subscribe, AUTHENTICATED),
    c.List: (boxes.do_list, AUTHENTICATED),
    c.Lsub: (boxes.do_lsub, AUTHENTICATED),
    c.Status: (boxes.do_status, AUTHENTICATED),
    c.Append: (boxes.do_append, AUTHENTICATED),
    c.Namespace: (boxes.do_namespace, AUTHENTICATED),  # RFC 2342
    c.GetQuota: (quota.do_getquota, AUTHENTICATED),  # RFC 9208
    c.GetQuotaRoot: (quota.do_getquotaroot, AUTHENTICATED),
    c.SetQuota: (quota.do_setquota, AUTHENTICATED),
    c.Idle: (sel.do_idle, AUTHENTICATED),  # RFC 2177
    c.Notify: (notify.do_notify, AUTHENTICATED),  # RFC 5465
    # selected (RFC 3501 §6.4 and extensions)
    c.Check: (conn.do_noop, SELECTED),
    c.Close: (sel.do_close, SELECTED),
    c.Unselect: (sel.do_unselect, SELECTED),  # RFC 3691
    c.Expunge: (sel.do_expunge, SELECTED),
    c.Search: (sel.do_search, SELECTED),
    c.Sort: (sel.do_sort, SELECTED),  # RFC 5256
    c.Thread: (sel.do_thread, SELECTED),  # RFC 5256
    c.Fetch: (sel.do_fetch, SELECTED),
    c.Store: (sel.do_store, SELECTED),
    c.Copy: (sel.do_copy, SELECTED),
    c.Move: (sel.do_copy, SELECTED),  # RFC 6851
}
