"""The flask commands: keys, users, bootstrap, import and export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import Result
from sqlalchemy import func, select

from webapp import store
from webapp.store import completions
from webapp.validation import Filter
from webapp.extensions import db
from webapp.models import ApiKey, Completion, MetadataChange, User

from .cases import BAD_IDS, SEARCH_SECOND
from .helpers import check_fine_tuning_line, completion_body, seed


def last_line(result: Result) -> str:
    return result.output.strip().splitlines()[-1]


def test_keys_create_prints_the_secret_alone_and_stores_a_hash(runner, client) -> None:
    result = runner.invoke(args=["keys", "create", "ci"])
    assert result.exit_code == 0, result.output
    secret = last_line(result)
    assert secret.startswith("cs-") and " " not in secret
    key = db.session.scalars(select(ApiKey)).one()
    assert key.key_hash == store.hash_secret(secret) and secret not in (key.key_hash, key.prefix)
    assert client.get("/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"}).status_code == 200


def test_keys_create_read_only_and_list(runner) -> None:
    assert runner.invoke(args=["keys", "create", "reader", "--read-only"]).exit_code == 0
    assert db.session.scalars(select(ApiKey)).one().read_only
    listing = runner.invoke(args=["keys", "list"]).output
    assert "reader" in listing and "read-only" in listing


def test_keys_create_twice_is_refused(runner) -> None:
    runner.invoke(args=["keys", "create", "ci"])
    result = runner.invoke(args=["keys", "create", "ci"])
    assert result.exit_code != 0 and "exists already" in result.output


def test_keys_revoke_unknown_tells_what_to_do(runner) -> None:
    result = runner.invoke(args=["keys", "revoke", "ghost"])
    assert result.exit_code != 0 and "keys list" in result.output


def test_users_create_with_password_and_prompt(runner) -> None:
    assert runner.invoke(args=["users", "create", "ann", "--password", "pw-1"]).exit_code == 0
    result = runner.invoke(args=["users", "create", "bob"], input="pw-2\npw-2\n")
    assert result.exit_code == 0, result.output
    assert "pw-2" not in result.output
    users = {u.username: u for u in db.session.scalars(select(User))}
    assert store.check_password(users["ann"], "pw-1") and store.check_password(users["bob"], "pw-2")
    assert "pw-1" not in users["ann"].password_hash


def test_bootstrap_creates_once(runner) -> None:
    first = runner.invoke(args=["bootstrap"])
    assert "admin" in first.output and "cs-" in first.output
    second = runner.invoke(args=["bootstrap"])
    assert second.exit_code == 0 and "cs-" not in second.output
    assert db.session.scalar(select(func.count()).select_from(User)) == 1


def api_objects(client, auth) -> list[dict]:
    return client.get("/v1/chat/completions?limit=100", headers=auth).get_json()["data"]


def test_export_then_import_into_an_empty_database_is_identical(runner, client, auth, seeded, tmp_path: Path) -> None:
    from .helpers import empty_database, make_key

    seed(completion_body("multi", messages=[{"role": "user", "content": [{"type": "text", "text": "ünïcode ✓"}]}], metadata={"emoji": "🙂"}))
    before = api_objects(client, auth)
    messages_before = client.get("/v1/chat/completions/multi/messages", headers=auth).get_json()
    out = tmp_path / "export.jsonl"
    result = runner.invoke(args=["export", "-o", str(out)])
    assert result.exit_code == 0, result.output
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 7 and all("messages" in json.loads(line) for line in lines)

    empty_database()
    headers = {"Authorization": f"Bearer {make_key(name='again')}"}
    result = runner.invoke(args=["import", str(out)])
    assert result.exit_code == 0, result.output
    assert "7 new or changed" in result.output
    assert api_objects(client, headers) == before
    assert client.get("/v1/chat/completions/multi/messages", headers=headers).get_json() == messages_before

    second = tmp_path / "second.jsonl"
    runner.invoke(args=["export", "-o", str(second)])
    assert second.read_text(encoding="utf-8") == out.read_text(encoding="utf-8")


def test_importing_twice_changes_nothing(runner, seeded, tmp_path: Path) -> None:
    out = tmp_path / "export.jsonl"
    runner.invoke(args=["export", "-o", str(out)])
    versions = dict(db.session.execute(select(Completion.id, Completion.version)).all())
    changes = db.session.scalar(select(func.count()).select_from(MetadataChange))
    result = runner.invoke(args=["import", str(out)])
    assert result.exit_code == 0 and "0 new or changed, 6 unchanged" in result.output
    db.session.expire_all()
    assert dict(db.session.execute(select(Completion.id, Completion.version)).all()) == versions
    assert db.session.scalar(select(func.count()).select_from(MetadataChange)) == changes


def test_a_broken_line_is_named_and_the_good_lines_land(runner, client, auth, tmp_path: Path) -> None:
    good = [json.dumps(completion_body(f"g{i}")) for i in range(3)]
    bad_metadata = json.dumps(completion_body("bad", metadata={"k" * 65: "v"}))
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join([good[0], "{not json", good[1], bad_metadata, good[2], ""]) + "\n")
    result = runner.invoke(args=["import", str(path)])
    assert result.exit_code == 1
    assert "line 2: not valid JSON" in result.output
    assert "line 4: Invalid 'metadata." in result.output
    assert "3 new or changed" in result.output and "2 bad lines" in result.output
    assert [c["id"] for c in api_objects(client, auth)] == ["g0", "g1", "g2"]


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_a_line_whose_id_breaks_the_id_rule_is_named_and_skipped(runner, client, auth, tmp_path: Path, bad_id: str) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps(completion_body(cid)) for cid in ["imp", bad_id, "imp2"]) + "\n")
    result = runner.invoke(args=["import", str(path)])
    assert result.exit_code == 1
    assert "line 2: Invalid 'id'" in result.output and "1 bad lines" in result.output
    assert [c["id"] for c in api_objects(client, auth)] == ["imp", "imp2"]


def test_import_from_stdin(runner, client, auth) -> None:
    result = runner.invoke(args=["import", "-"], input=json.dumps(completion_body("s1")) + "\n")
    assert result.exit_code == 0, result.output
    assert [c["id"] for c in api_objects(client, auth)] == ["s1"]


def test_export_filters(runner, seeded) -> None:
    result = runner.invoke(args=["export", "--model", "gpt-a", "--metadata", "team=red"])
    assert [json.loads(line)["id"] for line in result.output.splitlines()] == ["c1"]
    result = runner.invoke(args=["export", "--metadata", "team=blue", "--metadata", "n=4"])
    assert [json.loads(line)["id"] for line in result.output.splitlines()] == ["c4"]


@pytest.mark.parametrize(
    "options, expected",
    [
        (["--search", "退款"], ["s-zh"]),
        (["--search", "REFUND", "--model", "gpt-b"], ["s-ticket"]),
        (["--search", "refund", "--created-after", str(SEARCH_SECOND + 1)], ["s-ticket"]),
        (["--created-after", "2023-11-16", "--created-before", str(SEARCH_SECOND + 2)], ["s-refund", "s-ticket"]),
        (["--created-before", "2023-11-16"], []),
    ],
)
def test_export_takes_the_whole_filter(runner, searchable, options: list[str], expected: list[str]) -> None:
    result = runner.invoke(args=["export", *options])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["id"] for line in result.output.splitlines()] == expected


@pytest.mark.parametrize(
    "options, option, message",
    [
        (["--metadata", "team"], "--metadata", "KEY=VALUE"),
        (["--created-after", "yesterday"], "--created-after", "expected a whole number of seconds since 1970-01-01 UTC or a date YYYY-MM-DD"),
        (["--created-before", "2025-02-30"], "--created-before", "but got '2025-02-30'"),
        (["--search", "x" * 257], "--search", "string too long"),
        (["--model", "a\x00b"], "--model", "NUL"),
    ],
)
def test_export_rejects_a_bad_filter(runner, options: list[str], option: str, message: str) -> None:
    result = runner.invoke(args=["export", *options])
    assert result.exit_code == 2 and option in result.output and message in result.output


def test_export_chat_format_is_fine_tuning_ready(runner, app) -> None:
    record = completion_body("t1", content="Hi there")
    record["choices"][0]["message"]["tool_calls"] = [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    seed(record)
    lines = runner.invoke(args=["export", "--format", "chat"]).output.splitlines()
    assert json.loads(lines[0]) == {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hello (t1)"},
            {"role": "assistant", "content": "Hi there", "tool_calls": record["choices"][0]["message"]["tool_calls"]},
        ]
    }
    check_fine_tuning_line(json.loads(lines[0]))


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


def fine_tuning_cases() -> list[dict]:
    """A tool call (with the tools it was given, parallel calls off), a refusal, and a reply cut off by the length limit."""
    calls = completion_body("calls", created=1_700_000_001, content="")
    calls["choices"][0]["message"] = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
    ]}
    calls["choices"][0]["finish_reason"] = "tool_calls"
    calls["tools"], calls["parallel_tool_calls"] = TOOLS, False
    refused = completion_body("refused", created=1_700_000_002)
    refused["choices"][0]["message"] = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
    cut = completion_body("cut", created=1_700_000_003, content="It all began when")
    cut["choices"][0]["finish_reason"] = "length"
    return [calls, refused, cut]


def test_export_chat_format_keeps_tools_tool_calls_and_refusals(runner, app) -> None:
    seed(*fine_tuning_cases())
    lines = [json.loads(line) for line in runner.invoke(args=["export", "--format", "chat"]).output.splitlines()]
    for line in lines:
        check_fine_tuning_line(line)
    calls, refused, cut = lines
    assert calls["tools"] == TOOLS and calls["parallel_tool_calls"] is False
    assert calls["messages"][-1] == {"role": "assistant", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
    ]}
    assert refused["messages"][-1] == {"role": "assistant", "refusal": "I can't help with that."}
    assert "tools" not in refused and "parallel_tool_calls" not in refused
    assert cut["messages"][-1] == {"role": "assistant", "content": "It all began when"}


@pytest.mark.parametrize("fmt", ["chat", "store"])
def test_export_can_leave_out_replies_cut_off_by_the_length_limit(runner, app, fmt: str, tmp_path: Path) -> None:
    seed(*fine_tuning_cases())
    out = tmp_path / "out.jsonl"
    result = runner.invoke(args=["export", "--format", fmt, "--skip-truncated", "-o", str(out)])
    assert result.exit_code == 0 and "Exported 2 completions" in result.output
    assert len(out.read_text().splitlines()) == 2
    assert "It all began when" not in out.read_text()
    assert "--skip-truncated" in runner.invoke(args=["export", "--help"]).output, "documented"


def test_export_streams_in_batches(app, monkeypatch: pytest.MonkeyPatch) -> None:
    """Export reads a bounded page at a time, whatever the size of the store."""
    seed(*(completion_body(f"b{i:03d}") for i in range(25)))
    pages: list[int] = []
    real = completions.list_completions

    def counting(session, *, filter, page):  # type: ignore[no-untyped-def]
        found = real(session, filter=filter, page=page)
        pages.append(len(found.rows))
        return found

    monkeypatch.setattr(completions, "list_completions", counting)
    ids = [row.id for row in store.iter_completions(db.session, filter=Filter(), batch_size=10)]
    assert ids == [f"b{i:03d}" for i in range(25)] and pages == [10, 10, 5]


def test_export_to_a_file_creates_it_even_when_nothing_matches(runner, seeded, tmp_path: Path) -> None:
    out = tmp_path / "none.jsonl"
    result = runner.invoke(args=["export", "--model", "no-such-model", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.exists() and out.read_text() == ""
    assert "Exported 0 completions" in result.output


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# Lines the import must name and skip whole, each with what the report says about it.
BAD_LINES = [
    ("{not json", "not valid JSON"),
    (json.dumps({**completion_body("x"), "id": ""}), "Invalid 'id'"),
    (json.dumps({**completion_body("x"), "id": "i" * 256}), "Invalid 'id'"),
    (json.dumps({**completion_body("x"), "id": "nul\x00id"}), "Invalid 'id'"),
    (json.dumps({**completion_body("x"), "id": "imp/messages"}), "Invalid 'id': an id must not contain '/'"),
    (json.dumps({**completion_body("x"), "id": "has space"}), "Invalid 'id': an id must not contain whitespace"),
    (json.dumps(completion_body("meta", metadata={"k" * 65: "v"})), "Invalid 'metadata."),
    (json.dumps({**completion_body("x"), "messages": "hi"}), "Invalid type for 'messages'"),
    # Valid JSON the validation lets through but no database column can hold: refused by the
    # database in the middle of a batch, the rest of that batch still lands.
    (json.dumps(completion_body("huge-created", created=10**20)), "the database refused it"),
]


def test_a_large_import_in_batches_names_every_bad_line_and_lands_every_good_one(runner, client, auth, tmp_path: Path) -> None:
    from webapp.cli.data import IMPORT_BATCH

    total = IMPORT_BATCH * 2 + 500
    bad_at = {37: 0, 999: 1, 1000: 2, 1001: 3, 1200: 4, 1300: 5, 1500: 6, 2001: 7, 2400: 8}  # line index -> BAD_LINES row
    lines = [
        BAD_LINES[bad_at[i]][0] if i in bad_at else json.dumps(completion_body(f"big-{i:05d}", created=1_700_000_000 + i, metadata={"i": str(i)}))
        for i in range(total)
    ]
    result = runner.invoke(args=["import", str(write_jsonl(tmp_path / "big.jsonl", lines))])
    assert result.exit_code == 1
    for index, row in bad_at.items():
        assert f"line {index + 1}: {BAD_LINES[row][1]}" in result.output
    good = total - len(bad_at)
    assert f"Imported {good} completions ({good} new or changed, 0 unchanged); {len(bad_at)} bad lines skipped." in result.output
    db.session.rollback()
    rows = dict(db.session.execute(select(Completion.id, Completion.metadata_map)).all())
    assert rows == {f"big-{i:05d}": {"i": str(i)} for i in range(total) if i not in bad_at}
    assert db.session.scalar(select(func.count()).select_from(MetadataChange)) == good
    assert client.get("/v1/chat/completions/big-00036/messages", headers=auth).get_json()["data"][1]["content"] == "Say hello (big-00036)"

    again = runner.invoke(args=["import", str(tmp_path / "big.jsonl")])
    assert f"(0 new or changed, {good} unchanged); {len(bad_at)} bad lines skipped." in again.output
    db.session.rollback()
    assert db.session.scalar(select(func.count()).select_from(MetadataChange)) == good


def test_a_repeated_id_applies_in_file_order_with_its_history(runner, client, auth, tmp_path: Path) -> None:
    lines = [
        json.dumps(completion_body("twice", metadata={"v": "1"})),
        json.dumps(completion_body("other")),
        json.dumps(completion_body("twice", content="Changed", metadata={"v": "2"})),
    ]
    result = runner.invoke(args=["import", str(write_jsonl(tmp_path / "twice.jsonl", lines))])
    assert result.exit_code == 0 and "3 new or changed" in result.output
    got = client.get("/v1/chat/completions/twice", headers=auth).get_json()
    assert got["metadata"] == {"v": "2"} and got["choices"][0]["message"]["content"] == "Changed"
    assert [(c.before, c.after) for c in reversed(store.metadata_history(db.session, completion_id="twice"))] == [
        ({}, {"v": "1"}),
        ({"v": "1"}, {"v": "2"}),
    ]
    assert client.get("/v1/chat/completions?metadata[v]=1", headers=auth).get_json()["data"] == []


def test_import_changes_metadata_and_brings_a_deleted_completion_back(runner, client, auth, seeded, tmp_path: Path) -> None:
    assert client.delete("/v1/chat/completions/c1", headers=auth).status_code == 200
    lines = [
        json.dumps({**seeded[1], "metadata": {"back": "yes"}}),
        json.dumps({**seeded[2], "metadata": {"team": "green"}}),
        json.dumps(seeded[3]),
    ]
    result = runner.invoke(args=["import", str(write_jsonl(tmp_path / "changes.jsonl", lines))])
    assert "2 new or changed, 1 unchanged" in result.output
    assert client.get("/v1/chat/completions/c1", headers=auth).get_json()["metadata"] == {"back": "yes"}
    assert [c["id"] for c in client.get("/v1/chat/completions?metadata[team]=green", headers=auth).get_json()["data"]] == ["c2"]
    assert [c["id"] for c in client.get("/v1/chat/completions?metadata[team]=red", headers=auth).get_json()["data"]] == ["c0"]
    latest = store.metadata_history(db.session, completion_id="c2")[0]
    assert (latest.actor, latest.before, latest.after) == ("import", {"team": "red", "n": "2"}, {"team": "green"})
    assert store.metadata_history(db.session, completion_id="c1")[0].before == {}


def test_purge_takes_the_search_and_dates_too(runner, searchable) -> None:
    result = runner.invoke(args=["purge", "--older-than", "1", "--search", "退款", "--created-before", str(SEARCH_SECOND + 6), "--yes"])
    assert result.exit_code == 0, result.output
    assert "Purged 1 completions" in result.output
    left = [json.loads(line)["id"] for line in runner.invoke(args=["export"]).output.splitlines()]
    assert "s-zh" not in left and "s-refund" in left and len(left) == len(searchable) - 2
