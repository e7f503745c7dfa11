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
from .shapes import build_completion_body, completion_object, etag, message_objects, version_etag
from .users import (
    MAX_SIGN_IN_ATTEMPTS,
    SIGN_IN_WINDOW,
    SignedIn,
    SignInAttempt,
    UserNotFound,
    UserSummary,
    check_password,
    count_sign_in_attempt,
    count_users,
    create_user,
    delete_user,
    end_expired_user_sessions,
    end_user_session,
    end_user_sessions,
    forget_sign_in_attempts,
    get_user,
    list_users,
    set_password,
    start_user_session,
    touch_user_session,
    user_for_session,
    verify_sign_in,
)

__all__ = [
    "BulkResult",
    "CompletionNotFound",
    "MAX_SIGN_IN_ATTEMPTS",
    "NameTaken",
    "Page",
    "PreconditionFailed",
    "SIGN_IN_WINDOW",
    "SignInAttempt",
    "SignedIn",
    "UserNotFound",
    "UserSummary",
    "authenticate_api_key",
    "build_completion_body",
    "check_password",
    "completion_object",
    "completion_values",
    "count_api_keys",
    "count_completions",
    "count_sign_in_attempt",
    "count_users",
    "create_api_key",
    "create_user",
    "delete_completion",
    "delete_user",
    "end_expired_user_sessions",
    "end_user_session",
    "end_user_sessions",
    "etag",
    "forget_sign_in_attempts",
    "get_completion",
    "get_metadata_change",
    "get_user",
    "hash_secret",
    "iter_completions",
    "key_needs_touch",
    "list_api_keys",
    "list_completions",
    "list_messages",
    "list_models",
    "list_users",
    "message_objects",
    "metadata_history",
    "revoke_api_key",
    "save_completion",
    "set_metadata_key",
    "set_password",
    "start_user_session",
    "touch_api_key",
    "touch_user_session",
    "update_metadata",
    "user_for_session",
    "verify_sign_in",
    "version_etag",
]
