"""The one data layer: plain typed functions over a SQLAlchemy session, one module per concern.

- ``shapes``: the OpenAI shapes of stored rows (completion objects, message items, ETags);
- ``completions``: look up, list, save, update metadata, delete, history;
- ``bulk``: changes to many completions at once;
- ``keys``: API keys; ``users``: people, sign-in and their sessions.

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
    update_metadata,
)
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
from .shapes import build_completion_body, completion_object, etag, message_objects, version_etag
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
    "BATCH_SIZE",
    "CompletionNotFound",
    "NameTaken",
    "NotUndoable",
    "Page",
    "PreconditionFailed",
    "Selection",
    "SignInLocked",
    "authenticate_api_key",
    "build_completion_body",
    "check_password",
    "completion_object",
    "completion_values",
    "count_api_keys",
    "count_completions",
    "count_selection",
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
    "hash_secret",
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
    "record_sign_in",
    "revoke_api_key",
    "run_bulk_change",
    "save_completion",
    "start_user_session",
    "touch_api_key",
    "undo_bulk_change",
    "update_metadata",
    "user_for_session",
    "verify_sign_in",
    "version_etag",
]
