"""Every error source answers in the one OpenAI envelope, with an x-request-id header."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from webapp import create_app

from .helpers import TEST_SECRET_KEY, ValidatingClient, seed, completion_body

URL = "/v1/chat/completions"


def assert_envelope(response: Any, status: int, *, type: str = "invalid_request_error", param: Any = None, code: Any = None) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    error = response.get_json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert (error["type"], error["param"], error["code"]) == (type, param, code)
    assert response.headers["x-request-id"].startswith("req_")
    return error


Case = Callable[[FlaskClient, dict, dict], Any]

CASES: list[tuple[str, Case, int, dict[str, Any]]] = [
    ("no-authorization", lambda c, a, r: c.get(URL), 401, {}),
    ("malformed-authorization", lambda c, a, r: c.get(URL, headers={"Authorization": "Basic abc"}), 401, {}),
    ("empty-bearer", lambda c, a, r: c.get(URL, headers={"Authorization": "Bearer "}), 401, {}),
    ("unknown-key", lambda c, a, r: c.get(URL, headers={"Authorization": "Bearer cs-nope"}), 401, {"code": "invalid_api_key"}),
    ("read-only-update", lambda c, a, r: c.post(f"{URL}/c1", json={"metadata": {}}, headers=r), 403, {"code": "insufficient_permissions"}),
    ("read-only-delete", lambda c, a, r: c.delete(f"{URL}/c1", headers=r), 403, {"code": "insufficient_permissions"}),
    ("body-not-json", lambda c, a, r: c.post(f"{URL}/c1", data="{nope", headers={**a, "Content-Type": "application/json"}), 400, {}),
    ("body-not-object", lambda c, a, r: c.post(f"{URL}/c1", json=[1], headers=a), 400, {}),
    ("body-deeply-nested", lambda c, a, r: c.post(f"{URL}/c1", data="[" * 100_000, headers=a), 400, {}),
    ("missing-metadata", lambda c, a, r: c.post(f"{URL}/c1", json={}, headers=a), 400, {"param": "metadata", "code": "missing_required_parameter"}),
    ("unknown-field", lambda c, a, r: c.post(f"{URL}/c1", json={"metadata": {}, "x": 1}, headers=a), 400, {"param": "x", "code": "unknown_parameter"}),
    ("bad-limit", lambda c, a, r: c.get(f"{URL}?limit=0", headers=a), 400, {"param": "limit", "code": "integer_below_min_value"}),
    ("unknown-route", lambda c, a, r: c.get("/v1/nothing-here", headers=a), 404, {}),
    ("unknown-route-no-key", lambda c, a, r: c.get("/v1/nothing-here"), 404, {}),
    ("method-not-allowed", lambda c, a, r: c.put(URL, headers=a), 405, {}),
    ("unknown-completion", lambda c, a, r: c.get(f"{URL}/missing", headers=a), 404, {}),
    ("stale-if-match", lambda c, a, r: c.post(f"{URL}/c1", json={"metadata": {}}, headers={**a, "If-Match": '"999"'}), 412, {"code": "precondition_failed"}),
]


@pytest.mark.parametrize("name, call, status, expected", CASES, ids=[c[0] for c in CASES])
def test_error_envelope(client: FlaskClient, auth: dict, read_only_key: str, name: str, call: Case, status: int, expected: dict) -> None:
    seed(completion_body("c1"))
    assert_envelope(call(client, auth, {"Authorization": f"Bearer {read_only_key}"}), status, **expected)


def test_method_not_allowed_names_the_allowed_methods(client: FlaskClient, auth: dict) -> None:
    response = client.put(URL, headers=auth)
    assert "GET" in response.headers["Allow"]


def test_every_success_has_a_request_id(client: FlaskClient, auth: dict) -> None:
    first = client.get(URL, headers=auth).headers["x-request-id"]
    second = client.get(URL, headers=auth).headers["x-request-id"]
    assert first.startswith("req_") and first != second


@pytest.fixture
def small_app(database_url: str) -> Flask:
    """An app with a 1 KiB body limit and a route that fails, over the test database."""
    app = create_app({"DATABASE_URL": database_url, "SECRET_KEY": TEST_SECRET_KEY, "MAX_CONTENT_LENGTH": 1024})
    app.test_client_class = ValidatingClient

    @app.get("/v1/test-failure")
    def failure() -> None:
        raise RuntimeError("forced failure with a secret: sk-should-not-leak")

    return app


def test_body_too_large_is_413(small_app: Flask, app: Flask, api_key: str) -> None:
    response = small_app.test_client().post(
        f"{URL}/c1", data=b'{"metadata": {"a": "' + b"x" * 4096 + b'"}}', headers={"Authorization": f"Bearer {api_key}"}
    )
    assert_envelope(response, 413)


def test_unexpected_failure_is_500_without_details(small_app: Flask) -> None:
    response = small_app.test_client().get("/v1/test-failure")
    error = assert_envelope(response, 500, type="server_error")
    assert "secret" not in error["message"] and "sk-" not in response.get_data(as_text=True)


def test_database_unreachable_is_503(backend: str, tmp_path) -> None:
    url = (
        f"sqlite:///{tmp_path}/missing-dir/x.db"
        if backend == "sqlite"
        else "postgresql://postgres@127.0.0.1:1/none"
    )
    app = create_app({"DATABASE_URL": url, "SECRET_KEY": TEST_SECRET_KEY, "DATABASE_TIMEOUT": 2})
    client = app.test_client()
    assert_envelope(client.get(URL, headers={"Authorization": "Bearer cs-x"}), 503, type="server_error")
    assert_envelope(client.get("/healthz"), 503, type="server_error")

