"""Bulk changes from the admin list: a confirmation page first, the change in short batches,
recorded as one bulk change that can be undone (except a delete), and the page of recent ones."""

from __future__ import annotations

import re
from typing import Any

import pytest
from sqlalchemy import func, select

from webapp import store
from webapp.extensions import db, write_transaction
from webapp.models import BulkChange, Completion, MetadataChange

from .admin_helpers import Admin, element, form_fields, metadata_of, text
from .helpers import completion_body, seed


def listed(page: str) -> list[str]:
    import html

    return [html.unescape(value) for value in re.findall(r'name="ids" value="([^"]*)"', page)]


def review(admin: Admin, **form: Any) -> Any:
    """Submit the list's bulk form: answers the confirmation page (or the list with errors)."""
    return admin.post("/bulk", {"action": "set", "scope": "selected", "value": "", **form})


def confirm(admin: Admin, **form: Any) -> Any:
    """Review a bulk change, then press the confirmation page's button as a browser would."""
    page = review(admin, **form)
    assert page.status_code == 200, page.get_data(as_text=True)
    return admin.post("/bulk/apply", form_fields(page.get_data(as_text=True), "/bulk/apply"))


def user_changes() -> list[MetadataChange]:
    db.session.rollback()
    return list(db.session.scalars(select(MetadataChange).where(MetadataChange.actor == "user:ann").order_by(MetadataChange.id)))


def batches() -> list[BulkChange]:
    db.session.rollback()
    return list(db.session.scalars(select(BulkChange).order_by(BulkChange.id)))


def test_the_confirmation_page_says_what_and_how_many_and_writes_nothing(admin: Admin, seeded: list) -> None:
    response = review(admin, key="label", value="good", ids=["c1", "c4", "c4"], metadata=["team=red"])
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert element(page, "confirm-title") == "Change 2 completions?"
    assert element(page, "bulk-change") == "Set 'label' to 'good'"
    assert element(page, "bulk-scope") == "the 2 ticked completions"
    assert "you can undo it" in text(page)
    assert user_changes() == [] and batches() == []
    assert metadata_of("c1") == {"team": "red", "n": "1"}


def test_applying_changes_the_ticked_completions_as_one_batch_and_returns_to_the_same_page(admin: Admin, seeded: list) -> None:
    response = confirm(admin, key="label", value="good", ids=["c1", "c4"], metadata=["team=red"], after="c5")
    assert response.status_code == 303 and response.headers["Location"] == "/?metadata=team%3Dred&after=c5"
    page = admin.page(response.headers["Location"])
    assert "Set 'label' to 'good' on 2 completions." in text(page)
    assert 'action="/bulk-changes/1/undo"' in page, "the landing page offers Undo"
    assert metadata_of("c1") == {"team": "red", "n": "1", "label": "good"}
    assert metadata_of("c4")["label"] == "good" and "label" not in metadata_of("c2")
    (batch,) = batches()
    assert (batch.action, batch.key, batch.value, batch.changed, batch.requested, batch.actor) == ("set", "label", "good", 2, 2, "user:ann")
    assert batch.finished_at is not None
    assert sorted(c.completion_id for c in user_changes()) == ["c1", "c4"]
    assert {c.batch_id for c in user_changes()} == {batch.id}


def test_every_match_means_the_filter_the_page_was_loaded_with(admin: Admin, seeded: list) -> None:
    page = admin.page("/?metadata=team%3Dblue")
    fields = form_fields(page, "/bulk")
    # The bulk form carries the page's filter, cleaned, in hidden fields; the filter form is another form.
    assert ("metadata", "team=blue") in fields and not any(name == "model" for name, _ in fields)
    confirmation = review(admin, action="remove", key="n", scope="all", metadata=["team=blue"]).get_data(as_text=True)
    assert element(confirmation, "bulk-scope") == "every completion matching team=blue"
    assert element(confirmation, "bulk-count") == "3 completions"
    admin.post("/bulk/apply", form_fields(confirmation, "/bulk/apply"))
    assert [metadata_of(f"c{i}") for i in range(6)] == [
        {"team": "red", "n": "0"}, {"team": "red", "n": "1"}, {"team": "red", "n": "2"},
        {"team": "blue"}, {"team": "blue"}, {"team": "blue"},
    ]


def test_no_filter_means_every_completion_and_says_so(admin: Admin, seeded: list) -> None:
    confirmation = review(admin, key="team", value="red", scope="all").get_data(as_text=True)
    assert element(confirmation, "bulk-scope") == "every completion matching no filter (every stored completion)"
    assert element(confirmation, "bulk-count") == "6 completions"


def test_completions_stored_after_the_confirmation_are_left_out(admin: Admin, seeded: list) -> None:
    confirmation = review(admin, key="label", value="x", scope="all", metadata=["team=red"]).get_data(as_text=True)
    seed(completion_body("late", created=1_700_000_100, metadata={"team": "red"}))
    admin.post("/bulk/apply", form_fields(confirmation, "/bulk/apply"))
    assert metadata_of("late") == {"team": "red"}
    assert all(metadata_of(f"c{i}")["label"] == "x" for i in range(3))


def test_a_change_that_moves_completions_out_of_the_filter_still_reaches_every_one(admin: Admin, many: list[str], monkeypatch) -> None:
    monkeypatch.setattr(store.bulk, "BATCH_SIZE", 7)  # many short transactions
    confirm(admin, key="even", value="moved", scope="all", metadata=["even=False"])
    odd = [i for i in many if int(i[1:]) % 2]
    assert all(metadata_of(i)["even"] == "moved" for i in odd)
    assert all(metadata_of(i)["even"] == "True" for i in many if int(i[1:]) % 2 == 0)
    (batch,) = batches()
    assert batch.changed == len(odd) and batch.requested == len(odd)


def test_reports_what_was_already_so(admin: Admin, seeded: list) -> None:
    response = confirm(admin, key="team", value="red", scope="all")
    assert "Set 'team' to 'red' on 3 completions; 3 had it already." in text(admin.page(response.headers["Location"]))
    assert len(user_changes()) == 3


def test_never_breaks_the_pair_limit_and_says_so(admin: Admin, seeded: list) -> None:
    seed(completion_body("full", created=1_600_000_000, metadata={f"k{i}": "v" for i in range(16)}))
    confirm(admin, key="label", value="good", ids=["full", "c0"])
    page = text(admin.page("/"))
    assert "Set 'label' to 'good' on 1 completion." in page
    assert "Left unchanged: full. Invalid 'metadata': too many properties." in page
    assert metadata_of("full") == {f"k{i}": "v" for i in range(16)} and metadata_of("c0")["label"] == "good"


def test_reports_completions_deleted_meanwhile(admin: Admin, seeded: list) -> None:
    confirmation = review(admin, key="label", value="x", ids=["c0", "c1"]).get_data(as_text=True)
    with write_transaction() as tx:
        store.delete_completion(tx, completion_id="c1")
    admin.post("/bulk/apply", form_fields(confirmation, "/bulk/apply"))
    assert "Left unchanged: c1. Not found: deleted meanwhile, or never stored." in text(admin.page("/"))


@pytest.mark.parametrize(
    "form, field, message",
    [
        ({"key": "k" * 65, "value": "v"}, "key", "property name too long"),
        ({"key": "topic", "value": "x" * 513}, "value", "Invalid 'metadata.topic': string too long."),
        ({"key": "", "value": "v"}, "key", "Invalid 'metadata': keys must be non-empty strings."),
        ({"key": "  ", "action": "remove"}, "key", "Invalid 'metadata': keys must be non-empty strings."),
        ({"key": "label", "value": "v", "ids": []}, "scope", "Tick at least one completion"),
    ],
)
def test_a_bad_bulk_change_is_refused_beside_its_field(admin: Admin, seeded: list, form: dict, field: str, message: str) -> None:
    form = {"ids": ["c1"], **form}
    response = review(admin, **form)
    page = response.get_data(as_text=True)
    assert response.status_code == 400
    assert message in element(page, f"{field}-error")
    assert '<details class="bulk" id="bulk" open>' in page, "the bulk bar opens to show the error"
    assert listed(page) == ["c5", "c4", "c3", "c2", "c1", "c0"]
    assert ('name="ids" value="c1" id="pick-5" checked' in page) == bool(form["ids"]), "ticks are kept"
    assert user_changes() == [] and batches() == []


def test_spaces_around_the_key_are_dropped(admin: Admin, seeded: list) -> None:
    confirm(admin, key=" label ", value="good", ids=["c0"])
    assert metadata_of("c0") == {"team": "red", "n": "0", "label": "good"}


def test_an_altered_confirmation_changes_nothing(admin: Admin, seeded: list) -> None:
    fields = form_fields(review(admin, key="label", value="x", scope="all").get_data(as_text=True), "/bulk/apply")
    for broken in ([(n, v) for n, v in fields if n != "upto"], [(n, "-1" if n == "upto" else v) for n, v in fields]):
        response = admin.post("/bulk/apply", broken)
        assert response.status_code == 303
        assert "nothing was changed" in text(admin.page("/"))
    assert user_changes() == [] and batches() == []


# --- Delete ---------------------------------------------------------------------------


def test_bulk_delete_asks_first_says_it_cannot_be_undone_then_deletes(admin: Admin, seeded: list) -> None:
    confirmation = review(admin, action="delete", scope="all", metadata=["team=red"], model="gpt-a").get_data(as_text=True)
    assert element(confirmation, "confirm-title") == "Delete 1 completion?"
    assert "Deletes cannot be undone." in text(confirmation)
    assert metadata_of("c1")
    response = admin.post("/bulk/apply", form_fields(confirmation, "/bulk/apply"))
    page = admin.page(response.headers["Location"])
    assert "Deleted 1 completion." in text(page)
    assert "/undo" not in page, "a delete offers no Undo"
    assert listed(admin.page("/")) == ["c5", "c4", "c3", "c2", "c0"]
    assert "deletes cannot be undone" in text(admin.page("/bulk-changes"))
    assert admin.post(f"/bulk-changes/{batches()[0].id}/undo").status_code == 303
    assert "A bulk delete cannot be undone." in text(admin.page("/bulk-changes"))


# --- Undo -----------------------------------------------------------------------------


def test_undo_puts_back_every_completion_except_one_changed_since_which_it_names(admin: Admin, seeded: list) -> None:
    confirm(admin, key="team", value="green", scope="all")
    assert {metadata_of(f"c{i}")["team"] for i in range(6)} == {"green"}
    with write_transaction() as tx:  # someone else edits c2 after the bulk change
        store.update_metadata(tx, completion_id="c2", metadata={"team": "purple"}, actor="user:bob")
    (batch,) = batches()
    response = admin.post(f"/bulk-changes/{batch.id}/undo", {"next": "/?model=gpt-a"})
    assert response.status_code == 303 and response.headers["Location"] == "/?model=gpt-a"
    page = text(admin.page("/?model=gpt-a"))
    assert f"Undid bulk change #{batch.id}: 5 completions put back as before it." in page
    assert "Left unchanged: c2. Changed again since the bulk change by user:bob: left as it is now." in page
    assert [metadata_of(f"c{i}")["team"] for i in range(6)] == ["red", "red", "purple", "blue", "blue", "blue"]
    undo = batches()[-1]
    assert (undo.action, undo.undoes_id, undo.changed, undo.refused_count) == ("undo", batch.id, 5, 1)
    assert len([c for c in user_changes() if c.batch_id == undo.id]) == 5, "the undo is itself recorded"


def test_undo_twice_is_refused_and_the_undo_itself_can_be_undone(admin: Admin, seeded: list) -> None:
    confirm(admin, action="remove", key="n", ids=["c0", "c1"])
    first = batches()[0].id
    admin.post(f"/bulk-changes/{first}/undo")
    assert metadata_of("c0") == {"team": "red", "n": "0"}
    admin.post(f"/bulk-changes/{first}/undo")
    assert f"was undone already (by #{first + 1})" in text(admin.page("/bulk-changes"))
    admin.post(f"/bulk-changes/{first + 1}/undo")
    assert metadata_of("c0") == {"team": "red"} and metadata_of("c1") == {"team": "red"}


def test_undo_names_a_completion_deleted_since(admin: Admin, seeded: list) -> None:
    confirm(admin, key="x", value="1", ids=["c0", "c1"])
    with write_transaction() as tx:
        store.delete_completion(tx, completion_id="c0")
    admin.post(f"/bulk-changes/{batches()[0].id}/undo")
    assert "Left unchanged: c0. Deleted since the bulk change." in text(admin.page("/"))
    assert metadata_of("c1") == {"team": "red", "n": "1"}


def test_undo_of_an_unknown_bulk_change_is_404(admin: Admin) -> None:
    assert admin.post("/bulk-changes/99/undo").status_code == 404


def test_undo_needs_the_csrf_token(admin: Admin, seeded: list) -> None:
    confirm(admin, key="x", value="1", ids=["c0"])
    assert admin.post(f"/bulk-changes/{batches()[0].id}/undo", csrf=False).status_code in (400, 403)
    assert metadata_of("c0")["x"] == "1"


def test_the_bulk_changes_page_says_who_when_what_and_how_many(admin: Admin, seeded: list) -> None:
    confirm(admin, key="label", value="good", scope="all", metadata=["team=red"])
    confirm(admin, action="remove", key="n", ids=["c4"])
    page = admin.page("/bulk-changes")
    raw = re.findall(r'<tr id="batch-\d+">.*?</tr>', page, re.S)
    rows = [text(row) for row in raw]
    assert len(rows) == 2
    assert rows[0].startswith("2 just now user ann Remove the key 'n' on the 1 ticked completion 1 changed")
    assert rows[1].startswith("1 just now user ann Set 'label' to 'good' on every completion matching team=red 3 changed")
    assert all("/undo" in row for row in raw)


def test_bulk_work_runs_in_short_transactions(admin: Admin, many: list[str], monkeypatch) -> None:
    """Each batch commits on its own: a writer queued behind the bulk change waits for one batch, not all."""
    commits = 0
    original = store.bulk._tally

    def counting(*args: Any, **kwargs: Any) -> None:
        nonlocal commits
        commits += 1
        original(*args, **kwargs)

    monkeypatch.setattr(store.bulk, "BATCH_SIZE", 10)
    monkeypatch.setattr(store.bulk, "_tally", counting)
    confirm(admin, key="k", value="v", scope="all")
    assert commits == -(-len(many) // 10) + 1  # one per batch, and the finish
    assert db.session.scalar(select(func.count()).select_from(Completion).where(Completion.metadata_map.is_not(None))) == len(many)


@pytest.mark.parametrize("action", ["set", "delete"])
def test_a_slow_batch_commits_early_and_the_next_carries_on(admin: Admin, many: list[str], monkeypatch, action: str) -> None:
    """However slow the machine, no transaction runs past MAX_BATCH_SECONDS by more than one slice of work."""
    monkeypatch.setattr(store.bulk, "MAX_BATCH_SECONDS", 0.0)
    monkeypatch.setattr(store.bulk, "SLICE", 5)
    confirm(admin, action=action, key="k", value="v", scope="all")
    (batch,) = batches()
    assert batch.changed == len(many) and batch.refused_count == 0
    if action == "set":
        assert all(metadata_of(i)["k"] == "v" for i in many)
    else:
        assert listed(admin.page("/")) == []
