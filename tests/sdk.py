"""The official openai SDK pointed at a live server, every JSON answer checked against the spec."""

from __future__ import annotations

import httpx
from openai import OpenAI

from .openapi import check_response


def _validate(response: httpx.Response) -> None:
    if response.request.url.path.startswith("/v1") and response.headers.get("content-type", "").startswith("application/json"):
        response.read()
        check_response(response.request.method, response.request.url.path, response.status_code, response.json())


def _drop_authorization(request: httpx.Request) -> None:
    request.headers.pop("Authorization", None)


def sdk_client(base_url: str, api_key: str | None) -> OpenAI:
    """Return an OpenAI client for ``base_url`` that validates every answer and never retries.

    ``api_key=None`` sends no Authorization header at all (the SDK itself insists on a key).
    """
    hooks = {"response": [_validate], "request": [] if api_key else [_drop_authorization]}
    return OpenAI(
        base_url=base_url,
        api_key=api_key or "unused",
        max_retries=0,
        http_client=httpx.Client(event_hooks=hooks, timeout=30),
    )
