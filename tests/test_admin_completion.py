"""A completion's page: the transcript, editing its metadata, its history and restore, and delete."""

from __future__ import annotations

import html
import re
from typing import Any

import pytest
from webapp import store, validation
from webapp.extensions import db
from webapp.models import MetadataChange
from webapp.validation import MAX_METADATA_PAIRS

from .admin_helpers import Admin, detail_url, element, metadata_form, metadata_of, text
from .cases import BAD_METADATA, BadMetadata, message_of
from .helpers import completion_body, seed

XSS = "<img src=x onerror=alert(1)>"


def history_of(completion_id: str) -> list[MetadataChange]:
    db.session.expire_all()
    return store.metadata_history(db.session, completion_id=completion_id)


# --- Reading ------------------------------------------------------------------------------


@pytest.fixture
def rich(app) -> dict[str, Any]:
    """A completion with every kind of message: system, multi-part user, tool call and result, two replies."""
    record = completion_body(
        "rich",
        metadata={"team": "red"},
        messages=[
            {"role": "system", "content": "You are a weather bot."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is the weather here?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/sky.png", "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": "javascript:alert(1)"}},
                    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
        ],
    )
    record["choices"] = [
        {"index": 0, "message": {"role": "assistant", "content": "Sunny, 21 °C.", "refusal": None}, "logprobs": None, "finish_reason": "stop"},
        {"index": 1, "message": {"role": "assistant", "content": None, "refusal": "I can't say."}, "logprobs": None, "finish_reason": "length"},
    ]
    record["usage"] = {"prompt_tokens": 50, "completion_tokens": 7, "total_tokens": 57, "completion_tokens_details": {"reasoning_tokens": 3}}
    record["temperature"] = 0.2
    record["seed"] = 42
    record["tools"] = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    seed(record)
    return record


def test_the_transcript_shows_each_message_by_role(admin: Admin, rich: dict) -> None:
    page = admin.page("/completions/rich")
    transcript = page[page.index('class="transcript"') : page.index('id="reply-title"')]
    assert re.findall(r'class="message (role-\w+)"', transcript) == ["role-system", "role-user", "role-assistant", "role-tool"]
    readable = text(transcript)
    assert "You are a weather bot." in readable and "What is the weather here?" in readable
    assert "calls get_weather call_1" in readable and '"city": "Paris"' in readable, "tool calls, arguments indented"
    assert "result of get_weather call_1" in readable and '"temp_c": 21' in readable
    assert '<a class="url" href="https://example.com/sky.png" rel="noreferrer noopener">' in transcript
    assert "detail: low" in readable and "audio wav" in readable


def test_only_web_links_are_links(admin: Admin, rich: dict) -> None:
    page = admin.page("/completions/rich")
    assert 'href="javascript:' not in page
    assert "javascript:alert(1)" in text(page), "shown as text"


def test_the_replies_usage_and_settings_are_shown(admin: Admin, rich: dict) -> None:
    page = admin.page("/completions/rich")
    replies = text(page[page.index('id="reply-title"') : page.index('class="detail-side"')])
    assert "Replies" in replies
    assert "assistant · reply 1 of 2 Sunny, 21 °C. Raw text Sunny, 21 °C. Finish reason: stop" in replies
    assert "assistant · reply 2 of 2 refusal I can't say. Finish reason: length" in replies
    usage = text(page[page.index('id="usage-title"') : page.index('id="settings-title"')])
    assert "prompt tokens 50" in usage and "total tokens 57" in usage and "completion tokens details · reasoning tokens 3" in usage
    settings = text(page[page.index('id="settings-title"') : page.index('id="history-title"')])
    assert "temperature 0.2" in settings and "seed 42" in settings and "top p 1.0" in settings
    assert "tool choice not set" in settings and "1 tool: get_weather" in settings and '"name": "get_weather"' in settings
    assert "Finish stop , length" in text(page[: page.index('class="detail-grid"')])


def test_hostile_text_is_shown_as_text(admin: Admin) -> None:
    seed(completion_body(XSS, content=XSS, metadata={XSS[:60]: XSS}, messages=[{"role": "user", "content": XSS, "name": XSS}]))
    for url in ("/", detail_url(XSS), "/delete/" + detail_url(XSS).split("/completions/", 1)[1]):
        page = admin.page(url)
        assert "<img" not in page
        assert XSS in text(page)


@pytest.mark.parametrize("completion_id", ["with/slash", "q?uestion#hash%25", "ünïcode ✓", "it's \"quoted\"", "dots.and..more"])
def test_any_id_has_a_working_page(admin: Admin, completion_id: str) -> None:
    seed(completion_body(completion_id, metadata={"a": "b"}))
    url = detail_url(completion_id)
    assert completion_id in text(admin.page(url))
    assert admin.post(url, metadata_form({"a": "c"}, version=1, save="1")).status_code == 303
    assert metadata_of(completion_id) == {"a": "c"}
    assert admin.post("/delete/" + url.split("/completions/", 1)[1]).status_code == 303
    assert admin.get(url).status_code == 404


# --- Editing the metadata -----------------------------------------------------------------


def test_the_form_shows_each_pair_and_a_spare_row(admin: Admin) -> None:
    seed(completion_body("c1", metadata={"team": "red", "n": "1"}))
    page = admin.page("/completions/c1")
    assert re.findall(r'id="rows-(\d)-key"[^>]*value="([^"]*)"', page) == [("0", "team"), ("1", "n"), ("2", "")]
    assert '<label for="rows-0-key" class="visually-hidden">Key 1</label>' in page
    assert '<label for="rows-0-value" class="visually-hidden">Value 1</label>' in page
    assert 'name="version" type="hidden" value="1"' in page


def test_enter_in_a_field_saves_rather_than_removing_a_row(admin: Admin) -> None:
    seed(completion_body("c1", metadata={"team": "red"}))
    page = admin.page("/completions/c1")
    form = page[page.index('class="metadata-form"') :]
    first_button = re.search(r"<button[^>]*>", form).group(0)  # type: ignore[union-attr]
    assert 'type="submit"' in first_button and 'name="save"' in first_button


def test_save_replaces_the_metadata_and_redirects_with_a_message(admin: Admin, api_key: str) -> None:
    seed(completion_body("c1", metadata={"team": "red", "n": "1"}))
    form = metadata_form([("team", "blue"), ("label", "good"), ("", "")], version=1, save="1")
    response = admin.post("/completions/c1", form)
    assert response.status_code == 303 and response.headers["Location"] == "/completions/c1"
    page = admin.page("/completions/c1")
    assert "Saved the metadata (2 pairs)." in text(page)
    assert metadata_of("c1") == {"team": "blue", "label": "good"}
    change = history_of("c1")[0]
    assert (change.actor, change.before, change.after) == ("user:ann", {"team": "red", "n": "1"}, {"team": "blue", "label": "good"})
    api = admin.get("/v1/chat/completions/c1", headers={"Authorization": f"Bearer {api_key}"})
    assert api.get_json()["metadata"] == {"team": "blue", "label": "good"} and api.headers["ETag"] == '"2"'


def test_removing_every_row_clears_the_metadata(admin: Admin) -> None:
    seed(completion_body("c1", metadata={"team": "red"}))
    assert admin.post("/completions/c1", metadata_form([("", "")], version=1, save="1")).status_code == 303
    assert metadata_of("c1") == {}


def test_add_row_and_remove_work_without_javascript_and_save_nothing(admin: Admin) -> None:
    seed(completion_body("c1", metadata={"a": "1", "b": "2"}))
    added = admin.post("/completions/c1", metadata_form([("a", "1"), ("b", "2"), ("c", "typed")], version=1, add="1"))
    assert added.status_code == 200
    rows = re.findall(r'id="rows-(\d+)-key"[^>]*value="([^"]*)"', added.get_data(as_text=True))
    assert rows == [("0", "a"), ("1", "b"), ("2", "c"), ("3", "")], "typed text kept, one more row"
    removed = admin.post("/completions/c1", metadata_form([("a", "1"), ("b", "2"), ("c", "typed")], version=1, remove="0"))
    page = removed.get_data(as_text=True)
    assert re.findall(r'id="rows-(\d+)-key"[^>]*value="([^"]*)"', page) == [("0", "b"), ("1", "c")]
    assert 'name="version" type="hidden" value="1"' in page
    assert metadata_of("c1") == {"a": "1", "b": "2"} and len(history_of("c1")) == 1
    for response in (added, removed):
        assert "Not saved yet: your changes are kept in the form until you press Save metadata." in element(
            response.get_data(as_text=True), "unsaved"
        )


def test_removing_a_row_keeps_the_other_rows_unsaved_edits(admin: Admin) -> None:
    seed(completion_body("c1", metadata={"a": "1", "b": "2", "c": "3"}))
    page = admin.post("/completions/c1", metadata_form([("a", "edited"), ("b", "2"), ("c", "3"), ("new", "typed")], version=1, remove="1"))
    rows = page.get_data(as_text=True)
    assert re.findall(r'id="rows-(\d+)-key"[^>]*value="([^"]*)"', rows) == [("0", "a"), ("1", "c"), ("2", "new")]
    assert re.search(r'id="rows-0-value"[^>]*>\s*edited</textarea>', rows)
    assert re.search(r'id="rows-2-value"[^>]*>\s*typed</textarea>', rows)
    assert metadata_of("c1") == {"a": "1", "b": "2", "c": "3"}


def test_spaces_around_keys_are_dropped_and_a_padded_twin_is_a_duplicate(admin: Admin) -> None:
    seed(completion_body("c1"))
    assert admin.post("/completions/c1", metadata_form([(" team ", "red")], version=1, save="1")).status_code == 303
    assert metadata_of("c1") == {"team": "red"}
    response = admin.post("/completions/c1", metadata_form([("team", "red"), ("team ", "blue")], version=2, save="1"))
    assert response.status_code == 400
    assert "The key 'team' is already used in another row" in element(response.get_data(as_text=True), "rows-1-key-error")


def test_values_are_textareas_and_line_breaks_survive_a_save(admin: Admin) -> None:
    seed(completion_body("c1", metadata={"note": "line one\nline two"}))
    page = admin.page("/completions/c1")
    assert re.search(r'<textarea[^>]*id="rows-0-value"[^>]*>\s*line one\nline two</textarea>', page)
    # Browsers send a textarea's line breaks as CRLF: the value keeps the LF it was shown with.
    assert admin.post("/completions/c1", metadata_form({"note": "line one\r\nline two"}, version=1, save="1")).status_code == 303
    assert metadata_of("c1") == {"note": "line one\nline two"}


def test_add_row_stops_at_the_pair_limit(admin: Admin) -> None:
    seed(completion_body("c1"))
    full = [(f"k{i}", "v") for i in range(MAX_METADATA_PAIRS)]
    page = admin.post("/completions/c1", metadata_form(full, version=1, add="1")).get_data(as_text=True)
    assert len(re.findall(r'id="rows-\d+-key"', page)) == MAX_METADATA_PAIRS
    assert re.search(r'name="add" value="1" class="button" disabled', page)


FORM_CASES = [c for c in BAD_METADATA if isinstance(c.metadata, dict) and all(isinstance(v, str) for v in c.metadata.values())]


@pytest.mark.parametrize("case", FORM_CASES, ids=lambda c: c.id)
def test_the_form_refuses_bad_metadata_with_the_apis_message(admin: Admin, case: BadMetadata) -> None:
    seed(completion_body("c1", metadata={"keep": "me"}))
    message = message_of(validation.clean_metadata, case.metadata)
    response = admin.post("/completions/c1", metadata_form(case.metadata, version=1, save="1"))
    page = response.get_data(as_text=True)
    assert response.status_code == 400
    # A whole-map error goes above the rows; a pair's (each such case has one pair) beside its key or value.
    where = "metadata-error" if case.part is None else f"rows-0-{case.part}-error"
    assert element(page, where) == message
    if where != "metadata-error":
        field = where.removesuffix("-error")
        assert re.search(rf'<(?:input|textarea)[^>]*aria-describedby="{where}"[^>]*aria-invalid="true"[^>]*id="{field}"', page)
    assert metadata_of("c1") == {"keep": "me"}, "nothing saved"


def test_the_same_key_twice_is_refused(admin: Admin) -> None:
    seed(completion_body("c1"))
    response = admin.post("/completions/c1", metadata_form([("a", "1"), ("a", "2")], version=1, save="1"))
    assert response.status_code == 400
    assert "The key 'a' is already used in another row" in element(response.get_data(as_text=True), "rows-1-key-error")
    assert metadata_of("c1") == {}


def test_a_stale_edit_is_refused_showing_the_current_values(admin: Admin, auth: dict) -> None:
    seed(completion_body("c1", metadata={"team": "red"}))
    admin.page("/completions/c1")  # loaded at version 1 ...
    changed = admin.client.post("/v1/chat/completions/c1", json={"metadata": {"team": "blue", "by": "api"}}, headers=auth)
    assert changed.status_code == 200  # ... changed elsewhere: version 2
    response = admin.post("/completions/c1", metadata_form({"team": "green"}, version=1, save="1"))
    page = response.get_data(as_text=True)
    assert response.status_code == 412
    conflict = text(page[page.index('class="conflict"') : page.index("</div>", page.index('class="conflict"'))])
    assert "Not saved: someone changed this metadata after you loaded the page (API key test" in conflict
    assert "team blue" in conflict and "by api" in conflict
    assert metadata_of("c1") == {"team": "blue", "by": "api"}, "never silently overwritten"
    assert re.search(r'id="rows-0-value"[^>]*>\s*green</textarea>', page), "the edit is kept in the form"
    assert 'name="version" type="hidden" value="2"' in page
    # Saving the kept edit again is a deliberate overwrite of what is now current.
    assert admin.post("/completions/c1", metadata_form({"team": "green"}, version=2, save="1")).status_code == 303
    assert metadata_of("c1") == {"team": "green"}


# --- History and restore ---------------------------------------------------------------------


def test_history_lists_every_change_with_who_and_what(admin: Admin, auth: dict) -> None:
    seed(completion_body("c1", metadata={"team": "red"}))
    admin.client.post("/v1/chat/completions/c1", json={"metadata": {"team": "blue"}}, headers=auth)
    admin.post("/completions/c1", metadata_form({"team": "blue", "label": "good"}, version=2, save="1"))
    page = admin.page("/completions/c1")
    history = page[page.index('id="history-title"') :]
    entries = [text(e) for e in re.split(r'<li class="change">', history)[1:]]
    assert len(entries) == 3
    assert "user ann" in entries[0] and "+ label = good" in entries[0]
    assert "API key test" in entries[1] and "~ team : red → blue" in entries[1]
    assert "test" in entries[2] and "+ team = red" in entries[2]


def test_restore_puts_back_an_earlier_state_and_is_recorded(admin: Admin) -> None:
    seed(completion_body("c1", metadata={"team": "red"}))
    admin.post("/completions/c1", metadata_form({"team": "blue", "label": "x"}, version=1, save="1"))
    first = history_of("c1")[-1]
    assert first.after == {"team": "red"}
    response = admin.post(f"/history/{first.id}/restore", {"state": "after", "version": "2"})
    assert response.status_code == 303 and response.headers["Location"] == "/completions/c1"
    assert "Restored the metadata as it was after the change of" in text(admin.page("/completions/c1"))
    assert metadata_of("c1") == {"team": "red"}
    newest = history_of("c1")[0]
    assert (newest.actor, newest.before, newest.after) == ("user:ann", {"team": "blue", "label": "x"}, {"team": "red"})
    # And the state before the very first change (nothing) can be restored too.
    admin.post(f"/history/{first.id}/restore", {"state": "before", "version": "3"})
    assert metadata_of("c1") == {}


def test_restore_of_a_stale_page_changes_nothing(admin: Admin) -> None:
    seed(completion_body("c1", metadata={"team": "red"}))
    admin.post("/completions/c1", metadata_form({"team": "blue"}, version=1, save="1"))
    first = history_of("c1")[-1]
    response = admin.post(f"/history/{first.id}/restore", {"state": "after", "version": "1"})
    assert response.status_code == 303
    assert "changed since you loaded the page, so nothing was restored" in text(admin.page("/completions/c1"))
    assert metadata_of("c1") == {"team": "blue"} and len(history_of("c1")) == 2


def test_the_current_state_offers_no_restore(admin: Admin) -> None:
    seed(completion_body("c1", metadata={"team": "red"}))
    page = text(admin.page("/completions/c1"))
    assert "After: the current metadata" in page and "Restore the state before" in page


@pytest.mark.parametrize("form", [{"state": "sideways", "version": "1"}, {"state": "after"}])
def test_a_malformed_restore_is_a_400(admin: Admin, form: dict) -> None:
    seed(completion_body("c1", metadata={"team": "red"}))
    change = history_of("c1")[0]
    assert admin.post(f"/history/{change.id}/restore", form).status_code == 400


def test_restoring_an_unknown_change_is_a_404(admin: Admin) -> None:
    assert admin.post("/history/999/restore", {"state": "after", "version": "1"}).status_code == 404


# --- Delete -----------------------------------------------------------------------------


def test_delete_asks_on_a_page_of_its_own_then_returns_to_the_list(admin: Admin, auth: dict) -> None:
    seed(completion_body("c1", metadata={"team": "red"}), completion_body("c2", created=1_700_000_001))
    assert 'href="/delete/c1"' in admin.page("/completions/c1")
    confirm = admin.page("/delete/c1")
    assert "Delete this completion?" in text(confirm) and "c1" in text(confirm)
    assert re.search(r'<form method="post" class="actions">\s*<input type="hidden" name="csrf_token"', confirm)
    assert metadata_of("c1") == {"team": "red"}, "asking deletes nothing"
    response = admin.post("/delete/c1")
    assert response.status_code == 303 and response.headers["Location"] == "/"
    page = admin.page("/")
    assert "Deleted completion c1." in text(page) and 'value="c1"' not in page and 'value="c2"' in page
    assert admin.get("/v1/chat/completions/c1", headers=auth).status_code == 404
    assert admin.get("/completions/c1").status_code == 404
    assert admin.post("/delete/c1").status_code == 404


# --- Markdown, folding, tool results, direction ----------------------------------------

MARKDOWN = """# Plan

Some **bold** and `code`, a [link](https://example.com/docs).

1. first
2. second

```python
print("hi")
```

| name | value |
| ---- | ----- |
| a    | 1     |
"""


def test_replies_and_messages_render_as_markdown_with_the_raw_text_beside(admin: Admin) -> None:
    seed(completion_body("md", content=MARKDOWN, messages=[{"role": "user", "content": MARKDOWN}]))
    page = admin.page("/completions/md")
    for html_snippet in (
        '<h1 dir="auto">Plan</h1>',
        "<strong>bold</strong>",
        "<code>code</code>",
        '<a href="https://example.com/docs" rel="noreferrer noopener nofollow">link</a>',
        '<ol dir="auto">\n<li>first</li>',
        '<span class="md-lang">python</span><pre class="code"><code>print(&#34;hi&#34;)',
        '<div class="md-table"><table dir="auto">',
        "<td>a</td>",
    ):
        assert page.count(html_snippet) == 2, html_snippet  # the message and the reply
    raw = re.findall(r'<pre class="raw-text" dir="auto">(.*?)</pre>', page, re.S)
    assert [html.unescape(r) for r in raw] == [MARKDOWN, MARKDOWN], "the raw view shows the exact text"


def test_a_long_message_folds_past_a_screenful_but_the_reply_does_not(admin: Admin) -> None:
    long = "\n".join(f"line {i}" for i in range(60))
    seed(completion_body("long", content=long, messages=[{"role": "user", "content": long}, {"role": "user", "content": "short"}]))
    page = admin.page("/completions/long")
    assert page.count('<details class="fold">') == 1
    assert "Show the whole message (60 lines)" in text(page)


def test_a_tool_result_names_the_function_it_answers(admin: Admin) -> None:
    seed(completion_body("tools", messages=[
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
        {"role": "tool", "tool_call_id": "call_unknown", "content": "?"},
    ]))
    page = admin.page("/completions/tools")
    assert 'result of <code class="fn">get_weather</code> <span class="call-id">call_1</span>' in page
    assert "result of <code>call_unknown</code>" in page


def test_right_to_left_text_gets_its_direction(admin: Admin) -> None:
    seed(completion_body("rtl", content="مرحبا بالعالم", messages=[{"role": "user", "content": "שלום עולם"}]))
    page = admin.page("/completions/rtl")
    assert '<p dir="auto">מרחבא' not in page and '<p dir="auto">שלום עולם</p>' in page and '<p dir="auto">مرحبا بالعالم</p>' in page
