"""SQLAlchemy 2.0 typed models: the schema the migrations create.

A completion's place in the list order is ``(created, seq)``: ``seq`` is the insertion
order, so rows sharing one ``created`` second still have a total order. A deleted
completion keeps its row as a tombstone (``deleted`` set, payload cleared) so that a
cursor naming it still knows where it stood.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from .extensions import db

# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL wants room to grow.
BigId = BigInteger().with_variant(Integer(), "sqlite")
# Plain JSON, not JSONB: it keeps the text as given (key order, "\u0000" escapes) and nothing
# queries inside it; the metadata filter has its own indexed table.
Json = JSON()


def utcnow() -> datetime:
    """Return the current time, timezone-aware, in UTC."""
    return datetime.now(timezone.utc)


class Completion(db.Model):
    """One stored chat completion, or the tombstone of a deleted one."""

    __tablename__ = "completions"
    __table_args__ = (
        Index("ix_completions_created_seq", "created", "seq"),
        Index("ix_completions_model_created_seq", "model", "created", "seq"),
        {"sqlite_autoincrement": True},
    )

    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(255), unique=True)
    created: Mapped[int] = mapped_column(BigInteger)
    model: Mapped[str] = mapped_column(String(255))
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    # The completion object as the API returns it, without ``metadata``.
    body: Mapped[dict[str, Any] | None] = mapped_column(Json)
    # The input messages of the create request.
    messages: Mapped[list[Any] | None] = mapped_column(Json)
    metadata_map: Mapped[dict[str, str] | None] = mapped_column("metadata", Json)
    version: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Case-folded searchable text and its CJK grams (store.search.search_columns); NULL once
    # deleted. The search indexes over them are not described here: see SEARCH_INDEX_NAMES.
    search_text: Mapped[str | None] = mapped_column(Text)
    search_grams: Mapped[str | None] = mapped_column(Text)


# The search indexes the migration creates by hand (SQLite FTS5 tables with their shadow
# tables and triggers, PostgreSQL GIN indexes): schema comparisons leave these names alone.
SEARCH_INDEX_NAMES = (
    "completions_search",
    "completions_grams",
    "ix_completions_search_text_grams",  # migration 0010: one GIN index over both columns
    "ix_completions_search_trgm",  # 0004's two, which 0010 replaces (a downgrade makes them again)
    "ix_completions_search_grams",
    "ix_completions_seq_search_text",  # migration 0011: short search texts beside their seq, for counts
    "ix_completions_long_search_text",  # and the longer ones (PostgreSQL)
    "ix_completions_search_words",  # migration 0012: 0010's two columns and the filter words, in one GIN index
    "ix_completions_created_seq_search_text",  # and 0011's short texts by (created, seq), with the words
)
# Also made by hand: SQLite's mark that a batch keeps its derived data itself (migration 0009, store.derived),
# and its list of completions whose derived data is still to be written (0015, store.derived).
# And PostgreSQL's generated column of a completion's filter words (migration 0012, store.search.filter_words).
HAND_MADE_NAMES = (*SEARCH_INDEX_NAMES, "derived_data_deferred", "derived_data_pending", "filter_words")


def is_hand_made(name: str | None) -> bool:
    """Return whether a schema object is one the migrations make by hand (search indexes, the deferral mark)."""
    return name is not None and name.startswith(HAND_MADE_NAMES)


class CompletionMetadata(db.Model):
    """One metadata pair of a live completion, kept beside the JSON copy for the filter."""

    __tablename__ = "completion_metadata"
    # On SQLite a table keyed by its primary key alone (migration 0013): one B-tree less to write.
    __table_args__ = (Index("ix_completion_metadata_key_value", "key", "value", "completion_seq"), {"sqlite_with_rowid": False})

    completion_seq: Mapped[int] = mapped_column(
        BigId, ForeignKey("completions.seq", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(512))


class MetadataPairCount(db.Model):
    """How many live completions hold two metadata pairs together (``key_a`` < ``key_b``).

    Kept by database triggers on ``completion_metadata`` (created by the migration), so
    every write path keeps it right. A filter on two pairs that never meet is answered from
    here at once instead of by walking every row that holds one of them.
    """

    __tablename__ = "metadata_pair_counts"

    key_a: Mapped[str] = mapped_column(String(64), primary_key=True)
    value_a: Mapped[str] = mapped_column(String(512), primary_key=True)
    key_b: Mapped[str] = mapped_column(String(64), primary_key=True)
    value_b: Mapped[str] = mapped_column(String(512), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)


class BulkChange(db.Model):
    """One bulk change made in the admin UI (set or remove a key, delete, or undo another one).

    Its metadata changes carry its id (``MetadataChange.batch_id``), so the whole batch can
    be read back and undone. The counts grow as its short transactions commit;
    ``finished_at`` is set when the last one has.
    """

    __tablename__ = "bulk_changes"
    __table_args__ = (Index("ix_bulk_changes_undoes", "undoes_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    actor: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # "set", "remove", "delete" or "undo".
    action: Mapped[str] = mapped_column(String(16))
    key: Mapped[str | None] = mapped_column(String(64))
    value: Mapped[str | None] = mapped_column(String(512))
    # What it acted on, as people read it: "3 ticked completions", "model gpt-4o, team=red".
    scope: Mapped[str] = mapped_column(Text)
    # How many completions the confirmation page named.
    requested: Mapped[int] = mapped_column(Integer, default=0)
    changed: Mapped[int] = mapped_column(Integer, default=0)
    unchanged: Mapped[int] = mapped_column(Integer, default=0)
    # Completions left alone, with the reason: [[id, reason], ...] (the first MAX_NAMED of them).
    refused: Mapped[list[Any]] = mapped_column(Json, default=list)
    refused_count: Mapped[int] = mapped_column(Integer, default=0)
    undoes_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("bulk_changes.id"))


class MetadataChange(db.Model):
    """A record of one change to a completion's metadata: who, when, before and after."""

    __tablename__ = "metadata_changes"
    __table_args__ = (
        Index("ix_metadata_changes_completion", "completion_id", "id"),
        # Only a bulk change sets batch_id, and only its undo looks one up (migration 0013).
        Index(
            "ix_metadata_changes_batch", "batch_id", "id",
            sqlite_where=text("batch_id IS NOT NULL"), postgresql_where=text("batch_id IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    completion_id: Mapped[str] = mapped_column(String(255))
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))
    before: Mapped[dict[str, str]] = mapped_column(Json)
    after: Mapped[dict[str, str]] = mapped_column(Json)
    # The bulk change this was part of, if any.
    batch_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("bulk_changes.id"))


class SyncSource(db.Model):
    """Where ``flask sync`` stands with one source: a base URL, the key used there, and a filter."""

    __tablename__ = "sync_sources"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # SHA-256 of (base URL, key fingerprint, filter): the source's identity, short enough to index.
    source_key: Mapped[str] = mapped_column(String(64), unique=True)
    base_url: Mapped[str] = mapped_column(Text)
    selection: Mapped[str] = mapped_column(Text)  # the filter, as canonical JSON
    # The last completion mirrored in the source's order (the cursor of the next incremental run).
    last_id: Mapped[str | None] = mapped_column(String(255))
    # Where an unfinished ``--full`` walk stopped (resumed by the next ``--full``), or None.
    full_after: Mapped[str | None] = mapped_column(String(255))
    mirrored: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKey(db.Model):
    """A bearer key for ``/v1``; only the SHA-256 of its secret is kept."""

    __tablename__ = "api_keys"
    # A name is unique among live keys only: a revoked key's name can be given to a new one.
    __table_args__ = (
        Index(
            "ux_api_keys_live_name",
            "name",
            unique=True,
            sqlite_where=text("revoked_at IS NULL"),
            postgresql_where=text("revoked_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    read_only: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class User(db.Model):
    """A person who signs in to the admin UI."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(150), unique=True)
    password_hash: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SignInAttempts(db.Model):
    """The sign-in attempts of one username from one client address in the current window.

    Kept in the database so that every worker and server counts the same attempts, and
    counted before the password is checked, so concurrent guesses cannot pass the limit.
    Throttling by address as well as name keeps a stranger's guesses from locking the
    real user out; any username gets a row, so the answers never tell which ones exist.
    """

    __tablename__ = "sign_in_attempts"

    username: Mapped[str] = mapped_column(String(150), primary_key=True)
    address: Mapped[str] = mapped_column(String(64), primary_key=True)
    attempts: Mapped[int] = mapped_column(Integer)
    window_started: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class UserSession(db.Model):
    """A signed-in browser: the cookie carries this id, so signing out ends it everywhere."""

    __tablename__ = "user_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(Integer, ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Moved forward as the browser is used (at most once a minute): a session idle for
    # SESSION_IDLE_TIMEOUT is over even inside its lifetime.
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CompletionRollup(db.Model):
    """Live completions and their tokens per hour (``span`` 3600) and per day (86400), per model.

    Database triggers on ``completions`` keep it (migration 0007), and a batch import's own
    statement while those triggers stand aside (``store.derived``, migration 0009).
    ``start`` is the bucket's first second (unix time, UTC).
    """

    __tablename__ = "completion_rollup"

    span: Mapped[int] = mapped_column(Integer, primary_key=True)
    start: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    model: Mapped[str] = mapped_column(String(255), primary_key=True)
    completions: Mapped[int] = mapped_column(BigInteger)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    completion_tokens: Mapped[int] = mapped_column(BigInteger)
    # Bounds of the seqs of the completions counted here (migration 0014), kept on SQLite only
    # (NULL on PostgreSQL, and where unknown): the INSERT triggers widen them, nothing narrows
    # them. A date range narrows a SQLite search to the seqs its buckets span (store.completions).
    first_seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
