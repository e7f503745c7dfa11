"""Changes to many completions at once, and the recorded changes they come back from."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from ..models import MetadataChange
from ..validation import ValidationError, clean_metadata
from .completions import CompletionNotFound, PreconditionFailed, get_completion, update_metadata
from .shapes import etag


def get_metadata_change(session: Session, *, change_id: int) -> MetadataChange:
    """Return the recorded metadata change ``change_id``; raise LookupError if there is none."""
    change = session.get(MetadataChange, change_id)
    if change is None:
        raise LookupError(f"No metadata change #{change_id}.")
    return change


@dataclass(frozen=True)
class BulkResult:
    """What a bulk metadata change did: ids changed, ids already as asked, ids refused with the reason."""

    changed: list[str]
    unchanged: list[str]
    refused: list[tuple[str, str]]


def set_metadata_key(
    session: Session,
    *,
    completion_ids: Iterable[str],
    key: str,
    value: str | None,
    actor: str,
) -> BulkResult:
    """Set ``key`` to ``value`` (``None`` removes it) on each completion, recording each change.

    ``key`` and ``value`` must be clean already. A completion whose metadata would break
    a rule (more than 16 pairs) is left as it is and reported in ``refused`` with the
    rule's message, as is an id that is not live. Nothing commits here: the caller's
    transaction holds every change or none.
    """
    changed: list[str] = []
    unchanged: list[str] = []
    refused: list[tuple[str, str]] = []
    for completion_id in completion_ids:
        try:
            outcome = _set_one_key(session, completion_id=completion_id, key=key, value=value, actor=actor)
        except CompletionNotFound:
            refused.append((completion_id, "Not found: deleted meanwhile, or never stored."))
            continue
        except (ValidationError, PreconditionFailed) as exc:
            refused.append((completion_id, exc.message if isinstance(exc, ValidationError) else str(exc)))
            continue
        (changed if outcome else unchanged).append(completion_id)
    return BulkResult(changed=changed, unchanged=unchanged, refused=refused)


def _set_one_key(session: Session, *, completion_id: str, key: str, value: str | None, actor: str) -> bool:
    """Set or remove one key on the current version of one completion; return whether it changed."""
    for _attempt in range(5):
        row = get_completion(session, completion_id=completion_id)
        before = dict(row.metadata_map or {})
        after = dict(before)
        if value is None:
            after.pop(key, None)
        else:
            after[key] = value
        if after == before:
            return False
        try:
            update_metadata(
                session, completion_id=completion_id, metadata=clean_metadata(after), actor=actor, if_match={etag(row)}
            )
            return True
        except PreconditionFailed:
            # Changed by someone else since we read it: apply the change to what they wrote.
            session.expire(row)
    raise PreconditionFailed(get_completion(session, completion_id=completion_id))
