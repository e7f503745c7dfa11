"""The rules of webapp.validation, called directly."""

from __future__ import annotations

import pytest

from webapp import validation
from webapp.validation import ValidationError

from .cases import BAD_IDS, BAD_LIST_QUERIES, BAD_METADATA, GOOD_IDS, GOOD_METADATA, BadMetadata, BadQuery


@pytest.mark.parametrize("case", BAD_METADATA, ids=lambda c: c.id)
def test_bad_metadata_is_rejected_with_param_and_code(case: BadMetadata) -> None:
    with pytest.raises(ValidationError) as info:
        validation.clean_metadata(case.metadata)
    assert (info.value.param, info.value.code, info.value.part) == (case.param, case.code, case.part)
    assert info.value.message


@pytest.mark.parametrize("case", BAD_METADATA, ids=lambda c: c.id)
def test_update_body_applies_the_same_metadata_rules(case: BadMetadata) -> None:
    with pytest.raises(ValidationError) as info:
        validation.clean_update_body({"metadata": case.metadata})
    with pytest.raises(ValidationError) as direct:
        validation.clean_metadata(case.metadata)
    assert info.value.message == direct.value.message


@pytest.mark.parametrize("metadata", GOOD_METADATA)
def test_metadata_at_the_limits_is_accepted(metadata: object) -> None:
    assert validation.clean_metadata(metadata) == (metadata or {})


@pytest.mark.parametrize("case", BAD_LIST_QUERIES, ids=lambda c: c.id)
def test_bad_list_query_is_rejected(case: BadQuery) -> None:
    with pytest.raises(ValidationError) as info:
        validation.clean_list_query(case.query)
    assert (info.value.param, info.value.code) == (case.param, case.code)


def test_list_query_defaults_and_filters() -> None:
    query = validation.clean_list_query([("metadata[team]", "red"), ("model", "gpt-a"), ("limit", "7"), ("order", "desc"), ("after", "x")])
    assert query == validation.ListQuery(
        filter=validation.Filter(model="gpt-a", metadata={"team": "red"}),
        page=validation.PageQuery(after="x", limit=7, order="desc"),
    )
    assert validation.clean_list_query([]) == validation.ListQuery()


@pytest.mark.parametrize(
    "body, param, code",
    [
        ({}, "metadata", "missing_required_parameter"),
        ({"metadata": {}, "model": "x"}, "model", "unknown_parameter"),
        ([], None, None),
        ("metadata", None, None),
    ],
)
def test_update_body_shape(body: object, param: str | None, code: str | None) -> None:
    with pytest.raises(ValidationError) as info:
        validation.clean_update_body(body)
    assert (info.value.param, info.value.code) == (param, code)


@pytest.mark.parametrize("body", [{"metadata": None}, {"metadata": {}}])
def test_null_and_empty_metadata_clear(body: dict) -> None:
    assert validation.clean_update_body(body) == {}


@pytest.mark.parametrize(
    "body, param, code",
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "model", "missing_required_parameter"),
        ({"model": "m"}, "messages", "missing_required_parameter"),
        ({"model": 3, "messages": [{"role": "user"}]}, "model", "invalid_type"),
        ({"model": "", "messages": [{"role": "user"}]}, "model", "invalid_value"),
        ({"model": "m", "messages": []}, "messages", "empty_array"),
        ({"model": "m", "messages": ["hi"]}, "messages[0]", "invalid_type"),
        ({"model": "m", "messages": [{"role": "user"}], "store": "yes"}, "store", "invalid_type"),
        ({"model": "m", "messages": [{"role": "user"}], "metadata": {"a": 1}}, "metadata.a", "invalid_type"),
    ],
)
def test_create_request_rules(body: dict, param: str, code: str) -> None:
    with pytest.raises(ValidationError) as info:
        validation.clean_create_request(body)
    assert (info.value.param, info.value.code) == (param, code)


def test_create_request_forwards_everything_but_store_and_metadata() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "store": True, "metadata": {"a": "b"}, "new_param": 1}
    cleaned = validation.clean_create_request(body)
    assert cleaned.forward == {"model": "m", "messages": [{"role": "user", "content": "hi"}], "new_param": 1}
    assert cleaned.store and not cleaned.stream and cleaned.metadata == {"a": "b"}


@pytest.mark.parametrize(
    "text, expected",
    [("team=red", ("team", "red")), ("note=a=b", ("note", "a=b")), ("empty=", ("empty", ""))],
)
def test_metadata_filter_text(text: str, expected: tuple[str, str]) -> None:
    assert validation.parse_metadata_filter(text) == expected


def test_metadata_filter_text_without_equals_sign() -> None:
    with pytest.raises(ValidationError, match="KEY=VALUE"):
        validation.parse_metadata_filter("team")


def test_the_same_filter_twice_is_fine_but_two_values_for_one_key_are_refused() -> None:
    assert validation.clean_filters(metadata=[("team", "red"), ("team", "red")]).metadata == {"team": "red"}
    with pytest.raises(ValidationError) as info:
        validation.clean_filters(metadata=[("team", "red"), ("team", "blue")])
    assert info.value.param == "metadata.team"


@pytest.mark.parametrize("completion_id", BAD_IDS)
def test_ids_that_break_the_id_rule_are_refused(completion_id: str) -> None:
    assert validation.completion_id_fault(completion_id) is not None
    with pytest.raises(ValidationError) as caught:
        validation.clean_completion_id(completion_id)
    assert (caught.value.param, caught.value.code) == ("id", "invalid_value")


@pytest.mark.parametrize("completion_id", GOOD_IDS)
def test_ids_within_the_rule_are_kept(completion_id: str) -> None:
    assert validation.clean_completion_id(completion_id) == completion_id


@pytest.mark.parametrize("raw, limit", [("1", 1), ("100", 100), ("007", 7)])
def test_limit_in_ascii_digits(raw: str, limit: int) -> None:
    assert validation.clean_page_query([("limit", raw)]).limit == limit
