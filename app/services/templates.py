"""Payload templates (`payload_template` of a webhook, guide §8 syntax: `{{incident.id}}`), rendered by
Jinja2's immutable sandbox.

A template sees plain data only (the incident as the REST API shows it, the event type, a
timestamp): no Python objects. Names and attributes starting with `_` are refused when the template
is loaded (so `{{ incident.__class__ }}` stops start-up with the line named) and again by the
sandbox at render time (`|attr('__class__')`, computed names). Values printed with `{{ }}` are
escaped for a JSON string, so a title with quotes or newlines keeps the payload valid JSON; lists
and mappings print as JSON. docs/notifications.md, "Payload templates".
"""

from __future__ import annotations

import functools
import json
import operator
from dataclasses import dataclass
from typing import Any, Mapping

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, UndefinedError, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup

MAX_OUTPUT_CHARS = 1_000_000  # a rendered payload larger than this is refused


class TemplateError(ValueError):
    """A template that cannot be loaded or rendered; the message names the template and the line."""


def _json_value(value: Any) -> Any:
    """`finalize`: how `{{ value }}` prints inside the JSON text of a payload."""
    if isinstance(value, Markup):  # already JSON (the `tojson` filter)
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(value, default=str, ensure_ascii=False)
    return json.dumps(str(value), ensure_ascii=False)[1:-1]


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with `*` and `**` bounded (a template cannot build a huge string)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
        if op == "**" and isinstance(right, (int, float)) and abs(right) > 64:
            raise SecurityError("exponents above 64 are not allowed in templates")
        if op == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(count, int) \
                        and len(seq) * count > MAX_OUTPUT_CHARS:
                    raise SecurityError(f"a repetition longer than {MAX_OUTPUT_CHARS} is not allowed in templates")
            return operator.mul(left, right)
        return super().call_binop(context, op, left, right)


_env = _Sandbox(undefined=StrictUndefined, autoescape=False, finalize=_json_value, keep_trailing_newline=True)


def _forbidden(tree: nodes.Template) -> tuple[int, str] | None:
    """The first name, attribute or constant key reaching for Python internals (`_...`)."""
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Name, nodes.Filter)):
        if isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
            return node.lineno, node.attr
        if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) \
                and isinstance(node.arg.value, str) and node.arg.value.startswith("_"):
            return node.lineno, node.arg.value
        if isinstance(node, nodes.Name) and node.name.startswith("_"):
            return node.lineno, node.name
        if isinstance(node, nodes.Filter) and node.name == "attr":
            return node.lineno, "|attr"
    return None


@functools.lru_cache(maxsize=512)
def _compiled(source: str) -> Template:
    """A template's compiled form, once per process (compiling costs ~40x a render; a compiled
    template renders safely from many threads)."""
    return _env.from_string(source)


@dataclass(frozen=True)
class PayloadTemplate:
    name: str
    source: str

    def render(self, context: Mapping[str, Any], as_json: bool = True) -> str:
        """Render with `context`; with `as_json` the result must parse as JSON."""
        try:
            text = _compiled(self.source).render(**context)
        except SecurityError as exc:
            raise TemplateError(f"template {self.name}: refused by the sandbox: {exc}") from None
        except UndefinedError as exc:
            raise TemplateError(f"template {self.name}: {exc}") from None
        except Exception as exc:  # a template's own runtime error (division by zero, bad filter argument)
            raise TemplateError(f"template {self.name}: {type(exc).__name__}: {exc}") from None
        if len(text) > MAX_OUTPUT_CHARS:
            raise TemplateError(f"template {self.name}: rendered payload exceeds {MAX_OUTPUT_CHARS} characters")
        if as_json:
            try:
                json.loads(text)
            except ValueError as exc:
                raise TemplateError(f"template {self.name}: the rendered payload is not valid JSON: {exc}") from None
        return text


def compile_template(source: str, name: str) -> PayloadTemplate:
    """Check a template once (syntax, no reaching for `_` internals); raises TemplateError."""
    try:
        tree = _env.parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template {name}: line {exc.lineno}: {exc.message}") from None
    found = _forbidden(tree)
    if found is not None:
        line, what = found
        raise TemplateError(f"template {name}: line {line}: access to {what!r} is not allowed "
                            "(templates see the incident's data, not Python objects)")
    return PayloadTemplate(name, source)
