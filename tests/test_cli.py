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

from .admin_helpers import PASSWORD, USERNAME, make_user, sign_in
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


@pytest.mark.parametrize(
    "seconds, said",
    [(2.0, "requests using it get 401 within 2 s (each server process remembers a key for API_KEY_CACHE_SECONDS)."), (0, "requests using it now get 401.")],
)
def test_keys_revoke_says_when_every_server_refuses_it(app, database_url: str, seconds: float, said: str) -> None:
    from webapp import create_app

    from .helpers import TEST_SECRET_KEY

    configured = create_app({"DATABASE_URL": database_url, "SECRET_KEY": TEST_SECRET_KEY, "API_KEY_CACHE_SECONDS": seconds})
    runner = configured.test_cli_runner()
    with configured.app_context():  # the commands run in the app context already pushed
        assert runner.invoke(args=["keys", "create", "old"]).exit_code == 0
        result = runner.invoke(args=["keys", "revoke", "old"])
    assert result.exit_code == 0 and f"Revoked API key 'old': {said}" in result.output


def test_keys_revoke_unknown_tells_what_to_do(runner) -> None:
    result = runner.invoke(args=["keys", "revoke", "ghost"])
    assert result.exit_code != 0 and "keys list" in result.output


def users(runner, *args: str, input: str | None = None) -> Result:  # type: ignore[no-untyped-def]
    """Run ``flask users ARGS...``."""
    return runner.invoke(args=["users", *args], input=input)


def password_of(username: str, password: str) -> bool:
    db.session.rollback()
    return store.check_password(store.get_user(db.session, username=username), password)


def test_users_create_takes_the_password_from_an_option_stdin_or_a_hidden_prompt(runner) -> None:
    assert users(runner, "create", "ann", "--password", "pw-1 long enough").exit_code == 0
    assert users(runner, "create", "bob", "--password-stdin", input="pw-2 long enough\n").exit_code == 0
    prompted = users(runner, "create", "cy", input="pw-3 long enough\npw-3 long enough\n")
    assert prompted.exit_code == 0 and "pw-3" not in prompted.output
    assert "Password (at least 12 characters)" in prompted.output
    assert password_of("ann", "pw-1 long enough") and password_of("bob", "pw-2 long enough") and password_of("cy", "pw-3 long enough")
    assert "pw-1" not in store.get_user(db.session, username="ann").password_hash


@pytest.mark.parametrize(
    "username, password, message",
    [
        ("ann", "short", "The password must be at least 12 characters long."),
        ("annabel-lee-1849", "Annabel-Lee-1849 ", "The password must not be the username."),
        (" ann", "a long enough password", "Invalid 'username': expected 1 to 150 printable characters"),
    ],
)
@pytest.mark.parametrize("how", ["option", "stdin"])
def test_users_create_refuses_a_weak_password_or_a_bad_name(runner, username: str, password: str, message: str, how: str) -> None:
    args = ["--password", password] if how == "option" else ["--password-stdin"]
    result = users(runner, "create", username, *args, input=password + "\n" if how == "stdin" else None)
    assert result.exit_code == 2 and message in result.output
    assert store.count_users(db.session) == 0


def test_the_prompt_asks_again_until_the_password_is_acceptable(runner) -> None:
    result = users(runner, "create", "ann", input="short\na long enough password\na long enough password\n")
    assert result.exit_code == 0, result.output
    assert "The password must be at least 12 characters long." in result.output
    assert password_of("ann", "a long enough password")


def test_users_passwd_sets_a_new_password_and_ends_every_session(runner, app, client, user) -> None:
    assert sign_in(client).status_code == 303
    result = users(runner, "passwd", USERNAME, "--password-stdin", input="a brand new password\n")
    assert result.exit_code == 0 and f"Changed the password of '{USERNAME}'; 1 session ended." in result.output
    assert client.get("/").status_code == 302, "signed out"
    assert password_of(USERNAME, "a brand new password") and not password_of(USERNAME, PASSWORD)
    prompted = users(runner, "passwd", USERNAME, input="another new password\nanother new password\n")
    assert prompted.exit_code == 0 and password_of(USERNAME, "another new password")


def test_users_unlock_lets_a_throttled_name_sign_in_at_once(runner, client, user) -> None:
    for _ in range(store.MAX_SIGN_IN_ATTEMPTS):
        sign_in(client, USERNAME, "guess")
    assert sign_in(client).status_code == 429
    result = users(runner, "unlock", USERNAME)
    assert result.exit_code == 0 and f"Cleared the sign-in attempts for '{USERNAME}' from 1 address." in result.output
    assert sign_in(client).status_code == 303


def test_users_list_shows_live_sessions_and_throttled_addresses(runner, client, user) -> None:
    make_user("bob", "bob's long password")
    assert sign_in(client).status_code == 303
    for _ in range(store.MAX_SIGN_IN_ATTEMPTS):
        sign_in(client, "bob", "guess")
    lines = [line.split() for line in users(runner, "list").output.splitlines()]
    assert lines[0] == ["USERNAME", "CREATED", "SESSIONS", "THROTTLED", "ADDRESSES"]
    assert [(row[0], row[-2], row[-1]) for row in lines[1:]] == [(USERNAME, "1", "0"), ("bob", "0", "1")]


def test_users_list_without_users_says_how_to_make_one(runner) -> None:
    assert "flask --app webapp users create NAME" in users(runner, "list").output


def test_users_sign_out_ends_every_session_of_that_user(runner, app, client, user) -> None:
    assert sign_in(client).status_code == 303
    with app.app_context():  # a second browser (its own context, as in a server)
        other = app.test_client()
        assert sign_in(other).status_code == 303
    result = users(runner, "sign-out", USERNAME)
    assert result.exit_code == 0 and f"Signed '{USERNAME}' out everywhere; 2 sessions ended." in result.output
    assert client.get("/").status_code == 302 and other.get("/").status_code == 302


def test_users_delete_asks_then_ends_the_sessions(runner, client, user) -> None:
    assert sign_in(client).status_code == 303
    kept = users(runner, "delete", USERNAME, input="n\n")
    assert kept.exit_code == 1 and client.get("/").status_code == 200
    result = users(runner, "delete", USERNAME, input="y\n")
    assert result.exit_code == 0 and f"Deleted user '{USERNAME}'; their sessions ended." in result.output
    assert client.get("/").status_code == 302
    assert store.count_users(db.session) == 0
    assert users(runner, "create", USERNAME, "--password", PASSWORD).exit_code == 0, "the name is free again"


@pytest.mark.parametrize(
    "command", [["passwd", "ghost", "--password", "a long enough password"], ["unlock", "ghost"], ["sign-out", "ghost"], ["delete", "ghost", "--yes"]]
)
def test_users_commands_name_an_unknown_user(runner, command: list[str]) -> None:
    result = users(runner, *command)
    assert result.exit_code == 1 and "No user named 'ghost'." in result.output


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


def test_a_repeated_id_in_many_batches_ends_as_its_last_line(runner, client, auth, tmp_path: Path, monkeypatch) -> None:
    """Small batches, each holding the id again: written at once by several writers (PostgreSQL), still in file order."""
    monkeypatch.setattr("webapp.cli.data.IMPORT_BATCH", 3)
    lines = []
    for n in range(30):
        lines.append(json.dumps(completion_body("often", content=f"Version {n}", metadata={"v": str(n)})))
        lines.extend(json.dumps(completion_body(f"once-{n}-{k}", metadata={"n": str(n)})) for k in range(2))
    result = runner.invoke(args=["import", str(write_jsonl(tmp_path / "often.jsonl", lines))])
    assert "Imported 90 completions (90 new or changed, 0 unchanged); 0 bad lines skipped." in result.output, result.output
    got = client.get("/v1/chat/completions/often", headers=auth).get_json()
    assert got["metadata"] == {"v": "29"} and got["choices"][0]["message"]["content"] == "Version 29"
    history = [(c.before, c.after) for c in reversed(store.metadata_history(db.session, completion_id="often"))]
    assert history == [({}, {"v": "0"})] + [({"v": str(n - 1)}, {"v": str(n)}) for n in range(1, 30)]


def test_a_batch_that_loses_a_deadlock_is_written_again_and_counted_once(runner, tmp_path: Path, monkeypatch) -> None:
    """PostgreSQL ends one of two transactions that wait for each other (writers locking shared rows
    in a different order) with a deadlock error: that batch is written again, and counted once."""
    import psycopg
    from sqlalchemy.exc import OperationalError

    from webapp.cli import data

    monkeypatch.setattr(data, "IMPORT_BATCH", 5)
    write, lost = data.write_completions, []

    def losing_once(batch, **kwargs):
        if batch[0][0] == "6" and not lost:
            lost.append(batch)
            raise OperationalError("COPY completions ...", None, psycopg.errors.DeadlockDetected("deadlock detected"))
        write(batch, **kwargs)

    monkeypatch.setattr(data, "write_completions", losing_once)
    lines = [json.dumps(completion_body(f"dl-{i:02d}", metadata={"i": str(i)})) for i in range(20)]
    result = runner.invoke(args=["import", str(write_jsonl(tmp_path / "dl.jsonl", lines))])
    assert lost and "Imported 20 completions (20 new or changed, 0 unchanged); 0 bad lines skipped." in result.output, result.output
    db.session.rollback()
    assert db.session.scalar(select(func.count()).select_from(Completion)) == 20
    assert db.session.scalar(select(func.count()).select_from(MetadataChange)) == 20


def test_an_import_whose_reading_fails_says_so_and_keeps_the_batches_read_before(runner, tmp_path: Path, monkeypatch) -> None:
    """The input is read in a process of its own: what stops it reaches the user, and what it read before is written."""
    import multiprocessing

    from webapp.cli import data

    read = data._read_batches

    def failing_after_one_batch(file, dialect):
        for item in read(file, dialect):
            yield item
            raise OSError("Input/output error")

    monkeypatch.setattr(data, "IMPORT_BATCH", 2)
    monkeypatch.setattr(data, "_read_batches", failing_after_one_batch)
    lines = [json.dumps(completion_body(f"rf-{i}")) for i in range(5)]
    result = runner.invoke(args=["import", str(write_jsonl(tmp_path / "rf.jsonl", lines))])
    assert result.exit_code == 1
    assert "Could not read the input (OSError: Input/output error): check the file and run the import again" in result.output
    db.session.rollback()
    assert set(db.session.scalars(select(Completion.id))) == {"rf-0", "rf-1"}
    assert not multiprocessing.active_children()


def test_an_import_whose_writer_fails_stops_its_reading_process(runner, tmp_path: Path, monkeypatch) -> None:
    import multiprocessing

    from sqlalchemy.exc import OperationalError

    from webapp.cli import data

    def database_gone(batch, **kwargs):
        raise OperationalError("COMMIT", None, Exception("disk I/O error"))

    monkeypatch.setattr(data, "IMPORT_BATCH", 2)
    monkeypatch.setattr(data, "write_completions", database_gone)
    lines = [json.dumps(completion_body(f"wf-{i}")) for i in range(40)]
    result = runner.invoke(args=["import", str(write_jsonl(tmp_path / "wf.jsonl", lines))])
    assert result.exit_code != 0 and isinstance(result.exception, OperationalError)
    assert not multiprocessing.active_children()
    db.session.rollback()
    assert db.session.scalar(select(func.count()).select_from(Completion)) == 0


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
