"""The JSON Schemas shipped in avatardoctor/schemas (draft 2020-12), loaded as one registry: a schema
names another by its $id (check/1's machine is avatardoctor.machine/1), as a consumer would load them."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

import jsonschema
from referencing import Registry, Resource

SCHEMAS = resources.files("avatardoctor") / "schemas"


@cache
def schemas() -> dict[str, dict]:
    """{document name, e.g. "avatardoctor.check/1": its schema}, each checked against the metaschema."""
    found = {}
    for path in SCHEMAS.iterdir():
        if path.name.endswith(".schema.json"):
            schema = json.loads(path.read_text(encoding="utf-8"))
            jsonschema.Draft202012Validator.check_schema(schema)
            found[schema["title"]] = schema
    return found


@cache
def validator(name: str) -> jsonschema.Draft202012Validator:
    """The validator for one document, e.g. "avatardoctor.plan/1"."""
    registry = Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in schemas().values())
    return jsonschema.Draft202012Validator(schemas()[name], registry=registry)


def problems(name: str, doc) -> list[str]:
    """Every place the document breaks its schema, as path: message."""
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(name).iter_errors(doc)]


def assert_valid(doc: dict) -> None:
    """The document is valid against the schema its own "schema" field names."""
    assert problems(doc["schema"], doc) == []
