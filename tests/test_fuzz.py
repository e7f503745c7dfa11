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

from .conftest import LiveServer, completion_body, make_key, seed
from .openapi import SPEC_PATH, check_response

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
SCHEMA = schemathesis.openapi.from_path(SPEC_PATH)
KNOWN_IDS = ["chatcmpl-fuzz-0", "chatcmpl-fuzz-1", "chatcmpl-fuzz-2"]
# Creating needs a model server; tests/test_api_create.py fuzz-free covers it against a double.
OPERATIONS = [
    (path, method)
    for path, methods in SCHEMA.raw_schema["paths"].items()
    for method in methods
    if (path, method) != ("/chat/completions", "post")
]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
@pytest.mark.parametrize("path, method", OPERATIONS, ids=[f"{m.upper()} {p}" for p, m in OPERATIONS])
def test_fuzz_operation(live_server: LiveServer, path: str, method: str, mode: GenerationMode) -> None:
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
        response = case.call(base_url=live_server.v1, headers=headers, timeout=30)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, (case.as_curl_command(), response.text[:500])
        content_type = (response.headers.get("content-type") or [""])[0]
        assert content_type.startswith("application/json"), (response.status_code, content_type)
        check_response(method.upper(), case.formatted_path, response.status_code, response.json())

    run()
    print(f"\nfigures: {method.upper()} {path} {mode.value}: {sum(seen.values())} cases, statuses {dict(sorted(seen.items()))}")
    assert sum(seen.values()) >= min(EXAMPLES, 20)
