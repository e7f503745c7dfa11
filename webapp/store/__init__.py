"""The one data layer: plain typed functions over a SQLAlchemy session, one module per concern.

- ``shapes``: the OpenAI shapes of stored rows (completion objects, message items, ETags);
- ``search``: the searchable text of a completion, how the search indexes narrow, excerpts;
- ``completions``: look up, list, count, save, update metadata, delete, history;
- ``bulk``: changes to many completions at once;
- ``imports``: upserting many completions in one batch of statements (import, sync);
- ``retention``: purging old completions in short batches;
- ``sources``: where ``sync`` stands with each store it mirrors;
- ``keys``: API keys; ``users``: people, sign-in and their sessions;
- ``overview``: completions and tokens per hour or day and model (the rollup the triggers keep).

Nothing here reads the request, ``g`` or the Flask session, and nothing here commits: the
caller decides the transaction (see ``extensions.write_transaction``). Callers write
``from webapp import store`` and call ``store.list_completions(...)``; every public name
of the modules is available here.
"""

from .base import NameTaken, Page, hash_secret
from .bulk import (
    BATCH_SIZE,
    NotUndoable,
    Selection,
    count_selection,
    get_bulk_change,
    get_metadata_change,
    latest_seq,
    list_bulk_changes,
    run_bulk_change,
    undo_bulk_change,
)
from .completions import (
    COUNT_CAP,
    CompletionNotFound,
    PreconditionFailed,
    completion_values,
    count_completions,
    delete_completion,
    get_completion,
    iter_completions,
    list_completions,
    list_messages,
    list_models,
    metadata_history,
    save_completion,
    tombstone_values,
    update_metadata,
)
from .imports import ROW_REFUSALS, BatchOutcome, IncomingCompletion, upsert_completions
from .keys import (
    authenticate_api_key,
    count_api_keys,
    create_api_key,
    get_live_api_key,
    key_needs_touch,
    list_api_keys,
    revoke_api_key,
    touch_api_key,
)
from .overview import Usage, UsageSeries, read_rollup, recount_rollup, usage_series
from .retention import count_purgeable, purge_batch, purge_deleted_history_batch
from .shapes import build_completion_body, completion_object, etag, input_message, message_objects, version_etag
from .sources import get_sync_source, save_sync_position, stored_messages
from .users import (
    SignInLocked,
    check_password,
    count_users,
    create_user,
    end_expired_user_sessions,
    end_user_session,
    record_sign_in,
    start_user_session,
    user_for_session,
    verify_sign_in,
)

__all__ = [
    "COUNT_CAP",
    "BATCH_SIZE",
    "BatchOutcome",
    "CompletionNotFound",
    "IncomingCompletion",
    "NameTaken",
    "NotUndoable",
    "Page",
    "PreconditionFailed",
    "Selection",
    "ROW_REFUSALS",
    "SignInLocked",
    "Usage",
    "UsageSeries",
    "authenticate_api_key",
    "build_completion_body",
    "check_password",
    "completion_object",
    "completion_values",
    "count_api_keys",
    "count_completions",
    "count_selection",
    "count_purgeable",
    "count_users",
    "create_api_key",
    "create_user",
    "delete_completion",
    "end_expired_user_sessions",
    "end_user_session",
    "etag",
    "get_bulk_change",
    "get_completion",
    "get_live_api_key",
    "get_metadata_change",
    "get_sync_source",
    "hash_secret",
    "input_message",
    "iter_completions",
    "key_needs_touch",
    "latest_seq",
    "list_bulk_changes",
    "list_api_keys",
    "list_completions",
    "list_messages",
    "list_models",
    "message_objects",
    "metadata_history",
    "purge_batch",
    "purge_deleted_history_batch",
    "read_rollup",
    "recount_rollup",
    "record_sign_in",
    "revoke_api_key",
    "run_bulk_change",
    "save_completion",
    "save_sync_position",
    "start_user_session",
    "stored_messages",
    "tombstone_values",
    "touch_api_key",
    "undo_bulk_change",
    "update_metadata",
    "upsert_completions",
    "usage_series",
    "user_for_session",
    "verify_sign_in",
    "version_etag",
]
