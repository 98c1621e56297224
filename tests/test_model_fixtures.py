"""The shared model fixtures (tests/model_fixtures.py) are what the tests using them assume."""

from __future__ import annotations

import pytest
from model_fixtures import bookinfo, close_schema


def test_fixture_is_a_valid_mesh() -> None:
    m = bookinfo()
    assert [s.name for s in m.services] == sorted(s.name for s in m.services)
    reviews = m.service("reviews")
    assert reviews is not None
    split = reviews.routes[1].destinations
    assert sum(d.weight for d in split) == 10_000


def test_close_schema_rejects_unknown_fields() -> None:
    import jsonschema

    schema = close_schema({"type": "object", "properties": {"a": {"type": "string"}}})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"a": "x", "b": 1}, schema)
