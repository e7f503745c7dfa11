"""Property-based fuzzing of every stored-completions operation from OpenAI's OpenAPI document.

schemathesis generates valid (positive) and invalid (negative) requests; every answer
must be below 500 and either validate against the document or be the error envelope.
``FUZZ_EXAMPLES`` sets the cases per operation and mode (default 150; the full run in
docs/reliability.md uses 1000).
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from collections.abc import Iterator

from .helpers import LiveServer, completion_body, make_key, seed, start_gunicorn, stop_server
from .openapi import SPEC_PATH, check_response
from .upstream_double import UpstreamDouble

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
SCHEMA = schemathesis.openapi.from_path(SPEC_PATH)
KNOWN_IDS = ["chatcmpl-fuzz-0", "chatcmpl-fuzz-1", "chatcmpl-fuzz-2"]
OPERATIONS = [(path, method) for path, methods in SCHEMA.raw_schema["paths"].items() for method in methods]
CREATE = ("/chat/completions", "post")


@pytest.fixture(scope="module")
def fuzz_server(database_url: str) -> Iterator[LiveServer]:
    """The store in front of an upstream double, so that creating has a model server to reach."""
    double = UpstreamDouble().start()
    server = start_gunicorn({"DATABASE_URL": database_url, "UPSTREAM_BASE_URL": double.url, "UPSTREAM_TIMEOUT": "5"})
    yield server
    stop_server(server)
    double.stop()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
@pytest.mark.parametrize("path, method", OPERATIONS, ids=[f"{m.upper()} {p}" for p, m in OPERATIONS])
def test_fuzz_operation(app, fuzz_server: LiveServer, path: str, method: str, mode: GenerationMode) -> None:  # type: ignore[no-untyped-def]
    seed(*(completion_body(cid, metadata={"k": "v"}) for cid in KNOWN_IDS))
    headers = {"Authorization": f"Bearer {make_key(name='fuzz')}"}
    operation = SCHEMA[path][method.upper()]
    seen: dict[int, int] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode), known=st.sampled_from([None, *KNOWN_IDS]))
    def run(case, known):  # type: ignore[no-untyped-def]
        if known is not None and "completion_id" in (case.path_parameters or {}):
            case.path_parameters["completion_id"] = known
        response = case.call(base_url=fuzz_server.v1, headers=headers, timeout=30)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, (case.as_curl_command(), response.text[:500])
        content_type = (response.headers.get("content-type") or [""])[0]
        if (path, method) == CREATE and content_type.startswith("text/event-stream"):
            assert response.status_code == 200 and response.text.rstrip().endswith("data: [DONE]"), response.text[-300:]
            return
        assert content_type.startswith("application/json"), (response.status_code, content_type)
        check_response(method.upper(), case.formatted_path, response.status_code, response.json())

    run()
    print(f"\nfigures: {method.upper()} {path} {mode.value}: {sum(seen.values())} cases, statuses {dict(sorted(seen.items()))}")
    assert sum(seen.values()) >= min(EXAMPLES, 20)
