"""Validate API response bodies against OpenAI's published OpenAPI document.

Two documented relaxations (DESIGN.md): message-list items keep their original role
(the schema lists only ``assistant``), and ``first_id``/``last_id`` are null on an empty page.
"""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

# A copy of ../shared/spec/stored-completions.openapi.yml (OpenAI, MIT), kept here so a clone tests alone.
SPEC_PATH = Path(__file__).resolve().parent / "spec" / "stored-completions.openapi.yml"
SPEC_URI = "urn:openai-spec"


@functools.cache
def _spec() -> dict[str, Any]:
    spec = yaml.safe_load(SPEC_PATH.read_text())
    schemas = spec["components"]["schemas"]
    any_role = copy.deepcopy(schemas["ChatCompletionResponseMessage"])
    any_role["properties"]["role"] = {"type": "string"}
    schemas["ChatCompletionStoredMessage"] = any_role
    message_list = schemas["ChatCompletionMessageList"]
    message_list["properties"]["data"]["items"]["allOf"][0] = {"$ref": "#/components/schemas/ChatCompletionStoredMessage"}
    for name in ("ChatCompletionList", "ChatCompletionMessageList"):
        for key in ("first_id", "last_id"):
            schemas[name]["properties"][key] = {"type": ["string", "null"]}
    return spec


@functools.cache
def _validator(schema_name: str) -> Draft202012Validator:
    registry = Registry().with_resource(SPEC_URI, Resource.from_contents(_spec(), default_specification=DRAFT202012))
    return Draft202012Validator({"$ref": f"{SPEC_URI}#/components/schemas/{schema_name}"}, registry=registry)


def _operation(method: str, path: str) -> dict[str, Any] | None:
    path = "/" + path.split("/v1/", 1)[-1].split("?", 1)[0]
    for template, operations in _spec()["paths"].items():
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        if re.match(pattern, path) and method.lower() in operations:
            return operations[method.lower()]
    return None


def schema_for(method: str, path: str, status: int) -> str | None:
    """Return the schema name a response must validate against, or None when the spec has none."""
    if status >= 400:
        return "ErrorResponse"
    operation = _operation(method, path)
    if operation is None:
        return None
    content = operation["responses"].get(str(status), {}).get("content", {}).get("application/json")
    if not content:
        return None
    return content["schema"]["$ref"].rsplit("/", 1)[-1]


def assert_valid(body: Any, schema_name: str) -> None:
    """Raise AssertionError listing every way ``body`` breaks the schema."""
    errors = sorted(_validator(schema_name).iter_errors(body), key=lambda e: list(e.path))
    if errors:
        details = "\n".join(f"- {'/'.join(map(str, e.path))}: {e.message}" for e in errors[:10])
        raise AssertionError(f"response does not match {schema_name}:\n{details}")
    if schema_name == "ErrorResponse":
        assert set(body["error"]) == {"message", "type", "param", "code"}, body


def check_response(method: str, path: str, status: int, body: Any) -> None:
    """Validate one ``/v1`` JSON response against the document (errors against the envelope)."""
    name = schema_for(method, path, status)
    if name is not None:
        assert_valid(body, name)
