"""`GET /api/v1/openapi.json` is built from the application itself (api/openapi.py): it is a valid
OpenAPI 3 document, every route Flask has registered is in it, and what it says (permissions,
request schemas, limits) is read from the code that enforces them."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Blueprint, jsonify

from api.auth import require
from api.schemas import EVENT_SCHEMA

VARIABLE = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")


@pytest.fixture
def spec(client: Any) -> dict[str, Any]:
    response = client.get("/api/v1/openapi.json")  # open, like the health probes
    assert response.status_code == 200
    return response.get_json()


def test_the_document_is_valid_and_holds_every_registered_route(app, spec):
    from openapi_spec_validator import validate

    validate(spec)
    assert spec["openapi"].startswith("3.")
    registered = {(VARIABLE.sub(r"{\1}", rule.rule), method.lower())
                  for rule in app.url_map.iter_rules() if rule.endpoint != "static"
                  for method in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(path, method) for path, operations in spec["paths"].items() for method in operations}
    assert registered == documented
    # the routes of the contract, by name, so a blueprint that stopped registering is noticed too
    for path, method in [("/api/v1/events/sentinel", "post"), ("/api/v1/events", "post"),
                         ("/api/v1/incidents", "get"), ("/api/v1/incidents", "post"),
                         ("/api/v1/incidents/{incident_id}", "patch"),
                         ("/api/v1/incidents/{incident_id}/resolve", "post"),
                         ("/api/v1/integrations/alertmanager", "post"),
                         ("/api/v1/integrations/pagerduty/enqueue", "post"),
                         ("/api/v1/ml/classify", "post"), ("/api/v1/services/{name}", "put"),
                         ("/v1/circuit-breakers/{name}/{action}", "post"), ("/ws/events", "get"),
                         ("/health", "get"), ("/metrics", "get")]:
        assert method in spec["paths"][path], (path, method)


def test_permissions_schemas_and_limits_come_from_the_code(spec):
    sentinel = spec["paths"]["/api/v1/events/sentinel"]["post"]
    assert "Needs permission `event:create`." in sentinel["description"]  # what @require enforces
    assert {"202", "200", "400", "401", "403", "413", "415", "422", "429"} <= set(sentinel["responses"])
    assert sentinel["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Event"}
    event = spec["components"]["schemas"]["Event"]
    assert set(event["required"]) == {name for name, f in EVENT_SCHEMA.fields.items() if f.required}
    title_limit = next(v for v in EVENT_SCHEMA.fields["title"].validators if hasattr(v, "max")).max
    assert event["properties"]["title"]["maxLength"] == title_limit == 500
    batch = spec["paths"]["/api/v1/events"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert batch == {"oneOf": [{"$ref": "#/components/schemas/Event"}, {"$ref": "#/components/schemas/EventBatch"}]}
    listing = spec["paths"]["/api/v1/incidents"]["get"]
    status = next(p for p in listing["parameters"] if p["name"] == "status")
    assert status["schema"]["items"]["enum"] == ["NEW", "ACKNOWLEDGED", "IN_PROGRESS", "ESCALATED", "RESOLVED",
                                                 "CLOSED"]
    incident_id = spec["paths"]["/api/v1/incidents/{incident_id}"]["get"]["parameters"][0]
    assert incident_id["in"] == "path" and incident_id["required"] and incident_id["schema"]["pattern"]
    assert "security" not in spec["paths"]["/health/live"]["get"]  # open probe


def test_a_route_added_to_the_app_is_documented_without_listing_it(db):
    from api import create_app
    from api.openapi import build_spec

    app = create_app()
    extra = Blueprint("extra", __name__)

    @extra.post("/api/v1/extra/<int:number>")
    @require("admin")
    def extra_view(number: int) -> Any:
        """Do the extra thing.

        Only for this test."""
        return jsonify({"number": number})

    app.register_blueprint(extra)
    operation = build_spec(app)["paths"]["/api/v1/extra/{number}"]["post"]
    assert operation["summary"] == "Do the extra thing."
    assert "Only for this test." in operation["description"] and "`admin`" in operation["description"]
    assert operation["parameters"] == [{"name": "number", "in": "path", "required": True,
                                        "schema": {"type": "integer"}}]
    assert {"200", "401", "403", "429"} == set(operation["responses"])
