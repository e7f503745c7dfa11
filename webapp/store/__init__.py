"""The one data layer: plain typed functions over a SQLAlchemy session, one module per concern.

- ``shapes``: the OpenAI shapes of stored rows (completion objects, message items, ETags);
- ``completions``: look up, list, save, update metadata, delete, history;
- ``bulk``: changes to many completions at once;
- ``keys``: API keys; ``users``: people, sign-in and their sessions;
- ``overview``: completions and tokens per hour or day and model (the rollup the triggers keep).

Nothing here reads the request, ``g`` or the Flask session, and nothing here commits: the
caller decides the transaction (see ``extensions.write_transaction``). Callers write
``from webapp import store`` and call ``store.list_completions(...)``; every public name
of the modules is available here.
"""

from .base import NameTaken, Page, hash_secret
from .bulk import BulkResult, get_metadata_change, set_metadata_key
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
    key_needs_touch,
    list_api_keys,
    revoke_api_key,
    touch_api_key,
)
from .overview import Usage, UsageSeries, read_rollup, recount_rollup, usage_series
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
    "BulkResult",
    "CompletionNotFound",
    "NameTaken",
    "Page",
    "PreconditionFailed",
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
    "count_users",
    "create_api_key",
    "create_user",
    "delete_completion",
    "end_expired_user_sessions",
    "end_user_session",
    "etag",
    "get_completion",
    "get_metadata_change",
    "hash_secret",
    "iter_completions",
    "key_needs_touch",
    "list_api_keys",
    "list_completions",
    "list_messages",
    "list_models",
    "message_objects",
    "metadata_history",
    "read_rollup",
    "recount_rollup",
    "record_sign_in",
    "revoke_api_key",
    "save_completion",
    "set_metadata_key",
    "start_user_session",
    "touch_api_key",
    "update_metadata",
    "usage_series",
    "user_for_session",
    "verify_sign_in",
    "version_etag",
]
