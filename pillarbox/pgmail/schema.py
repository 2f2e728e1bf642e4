"""The mailbox index's tables in PostgreSQL (component ``mail`` of ``postgres.migrate``).

- ``mail_users``: one row per user with mail; ``last_uidvalidity`` makes every new
  mailbox's UIDVALIDITY higher than any before it (RFC 9051 §2.3.1.1: a name deleted and
  created again is a new mailbox to a client's cache). Created with the default mailboxes.
- ``mail_mailboxes``: UIDNEXT, HIGHESTMODSEQ, the \\Recent mark and every keyword ever
  stored (the FLAGS list). Its row is the mailbox's lock: every writer takes it
  ``FOR UPDATE`` first, so UIDs and MODSEQs are allocated in commit order on any node.
- ``mail_messages``: one row per message: flags, sizes, dates, the file (``path`` under
  the mail directory), the parsed envelope and body structure (JSON text, as pillarbox.mime
  makes them: ``json`` keeps key order, ``jsonb`` would not), the header bytes, and the
  case-folded texts SEARCH compares (header lines, body text, header text).
- ``mail_tombstones``: the UID ranges each expunge removed, under its MODSEQ, for
  QRESYNC's VANISHED (RFC 7162 §3.2.5.1): an expunge of 100,000 messages in a row is
  one row.
- ``path``: a file under the mail directory, or ``blob:`` and the key of a body in the
  blob store (``[store] blobs = "s3://..."``), which several rows may share (a COPY).
- ``mail_subscriptions``: LSUB / LIST (SUBSCRIBED), independent of the mailboxes (RFC 9051
  §6.3.7: a name can be subscribed without existing).
"""

from __future__ import annotations

from typing import Final

COMPONENT: Final = "mail"
CHANNEL: Final = "pillarbox_mail"  # NOTIFY payload: {"node", "user", "mailbox"} JSON

MIGRATIONS: Final = [
    """
    CREATE TABLE mail_users (
        user_address text PRIMARY KEY,
        last_uidvalidity bigint NOT NULL DEFAULT 0
    );
    CREATE TABLE mail_mailboxes (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        user_address text NOT NULL REFERENCES mail_users ON DELETE CASCADE,
        name text NOT NULL,
        special_use text,
        uidvalidity bigint NOT NULL,
        uidnext bigint NOT NULL DEFAULT 1,
        highestmodseq bigint NOT NULL DEFAULT 1,
        recent_uid bigint NOT NULL DEFAULT 1,
        keywords text[] NOT NULL DEFAULT '{}',
        UNIQUE (user_address, name)
    );
    CREATE TABLE mail_messages (
        mailbox_id bigint NOT NULL REFERENCES mail_mailboxes ON DELETE CASCADE,
        uid bigint NOT NULL,
        modseq bigint NOT NULL,
        mask smallint NOT NULL,
        keywords text[] NOT NULL DEFAULT '{}',
        internal_date bigint NOT NULL,
        size bigint NOT NULL,
        sent_date integer,
        path text NOT NULL,
        envelope text NOT NULL,
        structure text NOT NULL,
        header bytea NOT NULL,
        search_text text NOT NULL,
        body_text text NOT NULL,
        header_text text NOT NULL,
        PRIMARY KEY (mailbox_id, uid)
    );
    CREATE INDEX mail_messages_modseq ON mail_messages(mailbox_id, modseq);
    CREATE TABLE mail_tombstones (
        mailbox_id bigint NOT NULL REFERENCES mail_mailboxes ON DELETE CASCADE,
        modseq bigint NOT NULL,
        uid_lo bigint NOT NULL,
        uid_hi bigint NOT NULL,
        PRIMARY KEY (mailbox_id, modseq, uid_lo)
    );
    CREATE TABLE mail_subscriptions (
        user_address text NOT NULL,
        name text NOT NULL,
        PRIMARY KEY (user_address, name)
    );
    """,
    # 2: bodies in a blob store (pillarbox.blobs): such a row's path is "blob:" + the key.
    # Deleting a body, and the sweeper, ask which keys rows still name; the partial index
    # answers that without indexing the Maildir rows' paths, which nothing looks up.
    """
    CREATE INDEX mail_messages_blob ON mail_messages(path) WHERE path LIKE 'blob:%';
    """,
]
