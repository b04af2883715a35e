"""The validation vocabulary of the settings: marshmallow fields that read environment strings and
YAML values alike, a schema built from a section's dataclass, and the one place a marshmallow
error becomes a ConfigError naming the key (docs/foundation.md, "Configuration")."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from marshmallow import RAISE, Schema, ValidationError, fields, post_load, pre_load, validate


class ConfigError(ValueError):
    """Invalid configuration; the message names the offending key."""


class Int(fields.Integer):
    """An integer from `"7"` or `7`; refuses booleans and `7.5` (marshmallow would truncate it)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, float) and not value.is_integer():
            raise self.make_error("invalid", input=value)
        return super()._deserialize(value, attr, data, **kwargs)


class Bool(fields.Boolean):
    """true/false, yes/no, on/off, 1/0 in any case; anything else (e.g. "2", "maybe") is an error."""

    truthy = {"1", "true", "yes", "on", 1}  # True == 1 in a set
    falsy = {"0", "false", "no", "off", 0}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        return super()._deserialize(value.strip().lower() if isinstance(value, str) else value, attr, data,
                                    **kwargs)


class StrList(fields.List):
    """A list of strings (a lone string is refused: `fingerprint_fields: title` is a typo)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(fields.String(), **kwargs)


class CommaList(fields.Field):
    """An environment list: comma-separated, blanks dropped."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> tuple[str, ...]:
        if not isinstance(value, str):
            raise ValidationError("expected a comma-separated list")
        return tuple(part.strip() for part in value.split(",") if part.strip())


def always(value: Any, why: str) -> validate.Validator:
    """For a reference key with no setting: only the value that describes what the system does."""
    return validate.Equal(value, error=f"only {value!r} is supported: {why}")


def _field_for(default: Any, metadata: Mapping[str, Any]) -> fields.Field:
    """The marshmallow field of one dataclass field, chosen by its default's type."""
    checks = metadata.get("validate", validate.Range(min=0) if isinstance(default, (int, float))
                          and not isinstance(default, bool) else None)
    kwargs: dict[str, Any] = {"validate": checks} if checks is not None else {}
    if isinstance(default, bool):
        return Bool(**kwargs)
    if isinstance(default, int):
        return Int(**kwargs)
    if isinstance(default, float):
        return fields.Float(**kwargs)
    if isinstance(default, tuple):
        return StrList(**kwargs)
    return fields.String(**kwargs)


def section_schema(cls: type, accepted: Mapping[str, fields.Field] | None = None) -> Schema:
    """A schema for a config.yaml section generated from its frozen dataclass, so each setting is
    declared once (name, type, default, bounds). Unknown keys are errors. `accepted` names keys the
    reference README lists that have no setting here: validated, then dropped (docs/foundation.md)."""
    declared: dict[str, fields.Field | Any] = {}
    for item in dataclasses.fields(cls):
        default = item.default_factory() if callable(item.default_factory) else item.default
        declared[item.name] = _field_for(default, item.metadata)
    for name, field in (accepted or {}).items():
        declared[name] = field

    def build(self: Schema, data: dict[str, Any], **_: Any) -> Any:
        return cls(**{k: v for k, v in data.items() if k not in (accepted or {})})

    declared["_build"] = post_load(build)
    schema_cls = type(f"{cls.__name__}Schema", (Schema,), {**declared, "Meta": type("Meta", (), {"unknown": RAISE})})
    return schema_cls()


def _dotted(path: tuple[str | int, ...]) -> str:
    """`("routing", "rules", 0, "match")` -> `routing.rules[0].match`."""
    text = ""
    for key in path:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else key)
    return text


def _leaves(messages: Any, path: tuple[str | int, ...]) -> list[tuple[str, str]]:
    """Flatten marshmallow's nested messages into (dotted key, message) pairs."""
    if isinstance(messages, Mapping):
        found: list[tuple[str, str]] = []
        for key, value in messages.items():
            found += _leaves(value, path if key == "_schema" else (*path, key))
        return found
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        return [(_dotted(path), " ".join(messages))]
    if isinstance(messages, list):
        return [pair for m in messages for pair in _leaves(m, path)]
    return [(_dotted(path), str(messages))]


def load(schema: Schema, data: Any, prefix: str = "") -> Any:
    """Validate `data` with `schema`; a failure raises ConfigError whose message starts with the
    offending key (`prefix.key`), then lists any further problems."""
    if prefix and not isinstance(data, Mapping):
        raise ConfigError(f"{prefix}: expected a mapping in config.yaml, got {type(data).__name__}")
    try:
        return schema.load(data)
    except ValidationError as exc:
        problems = _leaves(exc.messages, (prefix,) if prefix else ())
        known = ", ".join(sorted(name for name in schema.fields if not name.startswith("_")))
        problems = [(key, message if message != "Unknown field." else "unknown setting"
                     + (f" (known: {known})" if key.rpartition(".")[0] == prefix else ""))
                    for key, message in problems]
        raise ConfigError("; ".join(f"{key}: {message.rstrip('.')}" for key, message in problems)) from None


class SingleValues(Schema):
    """Trigger/condition schemas: a single value stands for a list of one (`severity: P0` is
    `[P0]`); `tags` stays a mapping."""

    @pre_load
    def _singletons(self, data: Any, **_: Any) -> Any:
        if isinstance(data, Mapping):  # `severity: P0` is shorthand for `[P0]`
            return {k: [v] if isinstance(v, str) and k != "tags" else v for k, v in data.items()}
        return data
