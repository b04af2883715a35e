"""Payload templates: the guide's §8 template renders valid JSON whatever the incident holds, and
templates reaching for Python internals are refused (at load time and by the sandbox)."""

from __future__ import annotations

import json

import pytest

from app.services.templates import TemplateError, compile_template
from tests.outbound import GUIDE_TEMPLATE

INCIDENT = {"id": "INC-20251111-00042", "title": "Latency Spike Detected", "severity": "P1", "status": "NEW",
            "event_count": 3, "tags": {"env": "prod"}, "assignee": None}


def test_the_guides_template_renders_exactly():
    text = compile_template(GUIDE_TEMPLATE, "guide").render(
        {"event_type": "incident_created", "incident": INCIDENT, "timestamp": "2025-11-11T10:30:00Z"})
    assert json.loads(text) == {
        "event_type": "incident_created",
        "incident": {"id": "INC-20251111-00042", "title": "Latency Spike Detected", "severity": "P1",
                     "status": "NEW", "url": "https://incidents.example.com/incidents/INC-20251111-00042"},
        "timestamp": "2025-11-11T10:30:00Z"}


def test_values_are_escaped_for_json_strings():
    nasty = {**INCIDENT, "title": 'He said "hi"\\ and\nleft </script>'}
    text = compile_template(GUIDE_TEMPLATE, "guide").render(
        {"event_type": "incident_created", "incident": nasty, "timestamp": "t"})
    assert json.loads(text)["incident"]["title"] == nasty["title"]


def test_numbers_mappings_and_none_print_as_json():
    template = compile_template('{"n": {{incident.event_count}}, "tags": {{incident.tags}}, '
                                '"a": "{{incident.assignee}}", "j": {{incident.tags|tojson}}}', "t")
    assert json.loads(template.render({"incident": INCIDENT})) == {
        "n": 3, "tags": {"env": "prod"}, "a": "", "j": {"env": "prod"}}


@pytest.mark.parametrize("source, what", [
    ('{"x": "{{ incident.__class__ }}"}', "__class__"),
    ('{"x": "{{ incident.items.__globals__ }}"}', "__globals__"),
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "__subclasses__"),
    ("{{ incident['__class__'] }}", "__class__"),
    ("{{ incident|attr('__class__') }}", "|attr"),
    ("{{ _private }}", "_private"),
])
def test_templates_reaching_for_internals_are_refused_at_load(source, what):
    with pytest.raises(TemplateError) as refused:
        compile_template(source, "integrations.webhooks[0].payload_template")
    message = str(refused.value)
    assert "line 1" in message and repr(what) in message and "integrations.webhooks[0]" in message


def test_the_sandbox_refuses_what_the_load_check_cannot_see():
    # a computed name is only known at render time: the sandbox refuses it then
    template = compile_template('{"x": "{{ incident[name] }}"}', "computed")
    assert json.loads(template.render({"incident": INCIDENT, "name": "title"}))["x"] == "Latency Spike Detected"
    for name in ("__class__", "__init__", "__len__"):
        with pytest.raises(TemplateError, match="template computed: refused by the sandbox: .*unsafe"):
            compile_template("{{ x[name] }}", "computed").render({"x": "text", "name": name}, as_json=False)


def test_the_immutable_sandbox_refuses_mutation_and_huge_outputs():
    with pytest.raises(TemplateError, match="refused by the sandbox"):
        compile_template("{{ incident.tags.update({'a': 1}) }}", "mutate").render({"incident": INCIDENT},
                                                                                   as_json=False)
    with pytest.raises(TemplateError, match="refused by the sandbox"):
        compile_template("{{ 'x' * 100000000 }}", "huge").render({}, as_json=False)
    with pytest.raises(TemplateError, match="refused by the sandbox"):
        compile_template("{{ 9 ** 999999 }}", "power").render({}, as_json=False)


def test_syntax_errors_and_undefined_values_are_named():
    with pytest.raises(TemplateError, match=r"template t: line 2: "):
        compile_template('{\n"x": "{{ incident.id }"\n}', "t")
    with pytest.raises(TemplateError, match="has no attribute 'nope'"):
        compile_template('{"x": "{{ incident.nope }}"}', "t").render({"incident": INCIDENT})
    with pytest.raises(TemplateError, match="not valid JSON"):
        compile_template('{"x": {{ incident.title }}}', "t").render({"incident": INCIDENT})
