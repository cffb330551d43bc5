"""Kong's plugin-schema rules, enough to check a dumped schema and a user config.

Kong validates an external plugin's dumped ``Schema`` with its metaschema at start-up and
every plugin config against that schema (``kong/db/schema/metaschema.lua`` and
``kong/db/schema/init.lua``). This module covers the subset of field types and attributes a
Python plugin can reasonably use. An attribute outside :data:`FIELD_ATTRIBUTES` makes the
dump invalid here; Kong knows more attributes (``match``, ``uuid``, ...), so extend the set
before using one.

Error messages are Kong's; nested errors mirror Kong's error tables (array and set element
errors are keyed by their 1-based position).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

FIELD_TYPES = frozenset({"string", "integer", "number", "boolean", "array", "set", "map", "record"})
FIELD_ATTRIBUTES = frozenset(
    {
        "type",
        "required",
        "default",
        "one_of",
        "between",
        "gt",
        "len_min",
        "len_max",
        "elements",
        "fields",
        "keys",
        "values",
        "description",
        "referenceable",
        "encrypted",
    }
)
# Top-level fields a plugin schema may declare (those of the ``plugins`` entity).
PLUGIN_TOP_FIELDS = frozenset({"config", "protocols", "consumer", "route", "service"})

_TYPE_ERRORS = {
    "string": "expected a string",
    "integer": "expected an integer",
    "number": "expected a number",
    "boolean": "expected a boolean",
    "array": "expected an array",
    "set": "expected a set",
    "map": "expected a map",
    "record": "expected a record",
}

Errors = str | dict[Any, Any]


class SchemaError(ValueError):
    """A dumped schema Kong's metaschema would refuse."""


class ConfigRejected(ValueError):
    """A plugin config Kong would refuse; ``errors`` is shaped like Kong's error table."""

    def __init__(self, errors: dict[str, Any]) -> None:
        super().__init__(json.dumps(errors, sort_keys=True, default=str))
        self.errors = errors


# --------------------------------------------------------------------------- metaschema


def config_field(schema: Any) -> dict[str, Any]:
    """Validate a plugin's dumped ``Schema``; return its ``config`` record field."""
    if not isinstance(schema, Mapping):
        raise SchemaError("schema must be a table")
    if not isinstance(schema.get("name"), str):
        raise SchemaError("schema: name: required field missing")
    fields = _fields_of(schema, "schema")
    config: dict[str, Any] | None = None
    for name, field in fields:
        if name not in PLUGIN_TOP_FIELDS:
            raise SchemaError(f"schema: {name}: unknown field")
        check_field(field, name)
        if name == "config":
            config = field
    if config is None:
        raise SchemaError("schema: config: required field missing")
    if config.get("type") != "record":
        raise SchemaError("schema: config: must be a record")
    return config


def check_field(field: Any, path: str) -> None:
    """Validate one field definition (recursively) against the metaschema subset."""
    if not isinstance(field, Mapping):
        raise SchemaError(f"{path}: field definition must be a table")
    unknown = sorted(set(field) - FIELD_ATTRIBUTES)
    if unknown:
        raise SchemaError(f"{path}: {unknown[0]}: unknown field")
    ftype = field.get("type")
    if ftype not in FIELD_TYPES:
        raise SchemaError(f"{path}: type: expected one of: {', '.join(sorted(FIELD_TYPES))}")
    for flag in ("required", "referenceable", "encrypted"):
        if flag in field and not isinstance(field[flag], bool):
            raise SchemaError(f"{path}: {flag}: expected a boolean")
    if "one_of" in field and not isinstance(field["one_of"], list):
        raise SchemaError(f"{path}: one_of: expected an array")
    if "between" in field and not _is_pair_of_numbers(field["between"]):
        raise SchemaError(f"{path}: between: expected an array of two numbers")
    if "gt" in field and not _is_number(field["gt"]):
        raise SchemaError(f"{path}: gt: expected a number")
    for bound in ("len_min", "len_max"):
        if bound in field and not _is_integer(field[bound]):
            raise SchemaError(f"{path}: {bound}: expected an integer")
    if ftype in ("array", "set"):
        if "elements" not in field:
            raise SchemaError(f"{path}: elements: required field missing")
        check_field(field["elements"], f"{path}.elements")
    elif ftype == "map":
        for part in ("keys", "values"):
            if part not in field:
                raise SchemaError(f"{path}: {part}: required field missing")
            check_field(field[part], f"{path}.{part}")
    elif ftype == "record":
        for name, sub in _fields_of(field, path):
            check_field(sub, f"{path}.{name}")
    if "default" in field and field["default"] is not None:
        error = _validate(field, field["default"])[1]
        if error is not None:
            raise SchemaError(f"{path}: default: {error}")


def _fields_of(owner: Mapping[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    raw = owner.get("fields")
    if not isinstance(raw, list):
        raise SchemaError(f"{path}: fields: expected an array")
    out: list[tuple[str, dict[str, Any]]] = []
    for entry in raw:
        if not isinstance(entry, Mapping) or len(entry) != 1:
            raise SchemaError(f"{path}: fields: each entry must be a table with one field")
        ((name, field),) = entry.items()
        if not isinstance(name, str):
            raise SchemaError(f"{path}: fields: field names must be strings")
        out.append((name, field))
    return out


# --------------------------------------------------------------------------- config


def validate_config(config_record: Mapping[str, Any], config: Any) -> dict[str, Any]:
    """Validate ``config`` like Kong and return it with defaults filled in.

    Missing fields take their ``default``; a missing record without one is built from its
    subfields' defaults; other missing optional fields become ``None`` (JSON null).
    An explicit ``None`` stays null (Kong fills defaults only for absent values).
    """
    value, error = _validate(config_record, {} if config is None else config)
    if error is not None:
        raise ConfigRejected({"config": error})
    assert isinstance(value, dict)
    return value


def _missing(field: Mapping[str, Any]) -> Any:
    if "default" in field:
        return copy.deepcopy(field["default"])
    if field.get("type") == "record":
        return {}
    return None


def _validate(field: Mapping[str, Any], value: Any) -> tuple[Any, Errors | None]:
    ftype = field["type"]
    if not _has_type(ftype, value):
        return value, _TYPE_ERRORS[ftype]
    if ftype == "record":
        return _validate_record(field, value)
    if ftype in ("array", "set"):
        value, error = _validate_elements(field["elements"], value)
    elif ftype == "map":
        value, error = _validate_map(field, value)
    else:
        error = None
    if error is None:
        error = _check_constraints(field, value)
    return value, error


def _validate_record(
    field: Mapping[str, Any], value: Mapping[str, Any]
) -> tuple[Any, Errors | None]:
    subfields = dict(_fields_of(field, "record"))
    errors: dict[Any, Any] = {key: "unknown field" for key in value if key not in subfields}
    out: dict[str, Any] = {}
    for name, sub in subfields.items():
        item = value[name] if name in value else _missing(sub)
        if item is None:
            if sub.get("required"):
                errors[name] = "required field missing"
            out[name] = None
            continue
        out[name], error = _validate(sub, item)
        if error is not None:
            errors[name] = error
    return out, errors or None


def _validate_elements(elements: Mapping[str, Any], value: list[Any]) -> tuple[Any, Errors | None]:
    out: list[Any] = []
    errors: dict[Any, Any] = {}
    for index, item in enumerate(value, start=1):
        checked, error = _validate(elements, item)
        out.append(checked)
        if error is not None:
            errors[index] = error
    return out, errors or None


def _validate_map(field: Mapping[str, Any], value: Mapping[Any, Any]) -> tuple[Any, Errors | None]:
    out: dict[Any, Any] = {}
    errors: dict[Any, Any] = {}
    for key, item in value.items():
        _, key_error = _validate(field["keys"], key)
        checked, error = _validate(field["values"], item)
        out[key] = checked
        if key_error is not None or error is not None:
            errors[key] = key_error if key_error is not None else error
    return out, errors or None


def _check_constraints(field: Mapping[str, Any], value: Any) -> str | None:
    ftype = field["type"]
    if ftype in ("string", "array", "set", "map"):
        length = len(value)
        # Kong refuses empty strings unless the field sets its own len_min.
        len_min = field.get("len_min", 1 if ftype == "string" else None)
        if len_min is not None and length < len_min:
            return f"length must be at least {len_min}"
        if "len_max" in field and length > field["len_max"]:
            return f"length must be at most {field['len_max']}"
    if "one_of" in field and value not in field["one_of"]:
        return "expected one of: " + ", ".join(str(choice) for choice in field["one_of"])
    if "between" in field:
        low, high = field["between"]
        if not low <= value <= high:
            return f"value should be between {low} and {high}"
    if "gt" in field and not value > field["gt"]:
        return f"value must be greater than {field['gt']}"
    return None


def _has_type(ftype: str, value: Any) -> bool:
    if ftype == "string":
        return isinstance(value, str)
    if ftype == "integer":
        return _is_integer(value)
    if ftype == "number":
        return _is_number(value)
    if ftype == "boolean":
        return isinstance(value, bool)
    if ftype in ("array", "set"):
        return isinstance(value, list)
    return isinstance(value, Mapping)  # map, record


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, int) and not isinstance(value, bool)


def _is_pair_of_numbers(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value)
