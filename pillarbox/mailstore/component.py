"""The app component of a mail store: one shell for every backend.

The SQLite, PostgreSQL and in-memory stores differ in how they keep mail, not in how
the app runs them: each provides ``services.mail_store`` and ``.mailbox_events`` (the same
object), takes the user's quota from the accounts (its own, else ``[store] quota``, read at
each call so a reload applies at once), has no listeners, starts and closes. So the shell
is written once, here, over what a store must offer for it (:class:`ManagedStore`); each
backend's factory builds its store from the settings and hands it over.

Nothing of pillarbox outside this package is imported (the neutral API's rule): the
context is described by what the shell reads of it, which ``app.AppContext`` has.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from pillarbox.mailstore.api import MailService


class ManagedStore(MailService, Protocol):
    """A mail store the component can run."""

    def set_quota_lookup(self, lookup: Callable[[str], int]) -> None: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...


class QuotaSource(Protocol):
    """The accounts, as far as quotas go: a user's own limit, else ``default``."""

    def quota_of(self, address: str, default: int) -> int: ...


class QuotaDefault(Protocol):
    @property
    def quota(self) -> int: ...  # ``[store] quota``: bytes, 0 for none


class StoreSettings(Protocol):
    @property
    def store(self) -> QuotaDefault: ...


class StoreServices(Protocol):
    """The app's services this component provides (``app.Services`` has them)."""

    mail_store: MailService | None
    mailbox_events: MailService | None


class StoreContext(Protocol):
    @property
    def settings(self) -> StoreSettings: ...

    @property
    def accounts(self) -> QuotaSource: ...

    @property
    def services(self) -> StoreServices: ...


S = TypeVar("S", bound=ManagedStore)


class MailStoreComponent(Generic[S]):
    """Runs ``store`` as the app's mail store; see the module docstring."""

    name = "store"

    def __init__(self, ctx: StoreContext, store: S):
        self.store = store
        store.set_quota_lookup(lambda user: ctx.accounts.quota_of(user, ctx.settings.store.quota))
        ctx.services.mail_store = store
        ctx.services.mailbox_events = store

    def listeners(self) -> list[Any]:  # the app's ListenerSpec: there are none to type
        return []

    async def start(self) -> None:
        await self.store.start()

    async def stop(self) -> None:
        await self.store.close()

    async def reload(self, ctx: StoreContext) -> None:
        return None  # the quota lookup reads the settings at each call
