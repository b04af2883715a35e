"""The gRPC door, spoken to by a client generated in the test from the guide's own proto text (§3),
against a real grpcio server on loopback, real Postgres and Redis."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest
from grpc_tools import protoc
from sqlalchemy import func, select

from app.adapters.db import read_session
from app.adapters.models import Event, Incident, TimelineEntry
from app.config import reset_settings_cache
from app.services.auth import create_token
from tests.conftest import wait_for

# Integration guide §3, verbatim; the two request messages the guide's service names but never
# spells out are declared as the smallest wire-compatible messages.
GUIDE_PROTO = '''
syntax = "proto3";

package incident_manager;

service IncidentService {
  rpc CreateIncident(CreateIncidentRequest) returns (CreateIncidentResponse);
  rpc GetIncident(GetIncidentRequest) returns (Incident);
  rpc UpdateIncident(UpdateIncidentRequest) returns (Incident);
  rpc StreamIncidents(StreamIncidentsRequest) returns (stream Incident);
}

message CreateIncidentRequest {
  string event_id = 1;
  string source = 2;
  string source_version = 3;
  string timestamp = 4;
  string event_type = 5;
  string category = 6;
  string title = 7;
  string description = 8;
  string severity = 9;
  Resource resource = 10;
  map<string, double> metrics = 11;
  map<string, string> tags = 12;
  bytes encrypted_payload = 13;  // Encrypted sensitive data
}

message Resource {
  string type = 1;
  string id = 2;
  string name = 3;
  map<string, string> metadata = 4;
}

message CreateIncidentResponse {
  string status = 1;
  string incident_id = 2;
  string message = 3;
  map<string, string> links = 4;
}

message GetIncidentRequest {
  string incident_id = 1;
}

message Incident {
  string id = 1;
  string status = 2;
  string severity = 3;
  string title = 4;
  string description = 5;
  string created_at = 6;
  string updated_at = 7;
  // ... other fields
}

message UpdateIncidentRequest { string incident_id = 1; }
message StreamIncidentsRequest {}
'''

ENCRYPTED = b"\x8f\x02ciphertext-from-shield\x00\xff" * 3


class GuideStub:
    """A client stub for the guide's IncidentService, built from its descriptors (what the
    generated *_pb2_grpc stub does), so it can live beside our own generated code in one process."""

    def __init__(self, service: Any, messages: Any, channel: grpc.Channel) -> None:
        for method in service.methods:
            call = channel.unary_stream if method.server_streaming else channel.unary_unary
            setattr(self, method.name, call(
                f"/{service.full_name}/{method.name}",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=getattr(messages, method.output_type.name).FromString,
            ))


@pytest.fixture(scope="module")
def guide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """(messages, stub factory) compiled from the guide's proto text with protoc, loaded into a
    private descriptor pool (our own generated code holds the same names in the default pool)."""
    from types import SimpleNamespace

    from google.protobuf import descriptor_pb2, descriptor_pool
    from google.protobuf.message_factory import GetMessageClass

    out = tmp_path_factory.mktemp("guide_proto")
    (out / "shield_guide.proto").write_text(GUIDE_PROTO)
    include = str(Path(protoc.__file__).resolve().parent / "_proto")
    assert protoc.main(["protoc", f"-I{out}", f"-I{include}", "--include_imports",
                        f"--descriptor_set_out={out / 'guide.pb'}", str(out / "shield_guide.proto")]) == 0
    files = descriptor_pb2.FileDescriptorSet.FromString((out / "guide.pb").read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file_proto in files.file:
        pool.Add(file_proto)
    file = pool.FindFileByName("shield_guide.proto")
    messages = SimpleNamespace(**{name: GetMessageClass(d) for name, d in file.message_types_by_name.items()})
    service = file.services_by_name["IncidentService"]
    return messages, SimpleNamespace(IncidentServiceStub=lambda channel: GuideStub(service, messages, channel))


@pytest.fixture(scope="module")
def ours() -> tuple[Any, Any]:
    import proto

    return proto.load()


@pytest.fixture
def grpc_server(db: None) -> Iterator[str]:
    from api.grpc.server import build_server

    server, port = build_server(address="127.0.0.1:0", stream_idle_secs=0.2)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None).wait()


@pytest.fixture
def channel(grpc_server: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(grpc_server) as chan:
        yield chan


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def shield_request(pb2: Any, **overrides: Any) -> Any:
    """The Go example of guide §3, field for field."""
    fields: dict[str, Any] = dict(
        event_id="shield-2025-005678", source="llm-shield", source_version="2.1.0", timestamp="2025-11-11T10:35:00Z",
        event_type="violation", category="security", title="Prompt Injection Detected",
        description="Malicious prompt injection attempt blocked", severity="critical",
        resource=pb2.Resource(type="model", id="model-gpt4-prod", name="GPT-4 Production",
                              metadata={"model_version": "gpt-4-0613", "deployment_id": "dep-12345"}),
        metrics={"confidence_score": 0.95, "attack_vectors": 3},
        tags={"environment": "production", "user_id": "user-789", "session_id": "sess-abc123"},
        encrypted_payload=ENCRYPTED,
    )
    fields.update(overrides)
    return pb2.CreateIncidentRequest(**fields)


def counts() -> tuple[int, int]:
    with read_session() as session:
        return (session.scalar(select(func.count()).select_from(Event)) or 0,
                session.scalar(select(func.count()).select_from(Incident)) or 0)


def test_guide_client_creates_and_reads_an_incident(guide, channel, caplog):
    pb2, pb2_grpc = guide
    stub = pb2_grpc.IncidentServiceStub(channel)
    token = create_token("llm-shield", 300)
    caplog.set_level("DEBUG")
    response = stub.CreateIncident(shield_request(pb2), metadata=bearer(token), timeout=10)
    assert response.status == "accepted"
    assert response.incident_id.startswith("INC-")
    assert response.links["api"].endswith(f"/api/v1/incidents/{response.incident_id}")
    # Durable before the answer: the rows are there the moment the call returns.
    with read_session() as session:
        event = session.scalars(select(Event)).one()
        incident = session.get(Incident, response.incident_id)
    assert event.encrypted_payload == ENCRYPTED
    assert "encrypted_payload" not in event.payload
    assert event.payload["resource"]["metadata"]["deployment_id"] == "dep-12345"
    assert incident is not None and incident.severity == "P0" and incident.category == "security"
    got = stub.GetIncident(pb2.GetIncidentRequest(incident_id=response.incident_id), metadata=bearer(token), timeout=10)
    assert (got.id, got.status, got.severity) == (response.incident_id, "NEW", "P0")
    assert got.title == "Prompt Injection Detected"
    again = stub.CreateIncident(shield_request(pb2), metadata=bearer(token), timeout=10)
    assert (again.status, again.incident_id) == ("duplicate", response.incident_id)
    assert counts() == (1, 1)
    logged = caplog.text
    assert token not in logged and "ciphertext-from-shield" not in logged


def test_api_key_in_bearer_metadata_and_x_api_key(guide, channel, make_key):
    pb2, pb2_grpc = guide
    stub = pb2_grpc.IncidentServiceStub(channel)
    key = make_key("event:create")
    assert stub.CreateIncident(shield_request(pb2), metadata=bearer(key), timeout=10).status == "accepted"
    second = shield_request(pb2, event_id="shield-2", title="Data leakage")
    assert stub.CreateIncident(second, metadata=(("x-api-key", key),), timeout=10).status == "accepted"


@pytest.mark.parametrize("metadata, code", [
    ((), grpc.StatusCode.UNAUTHENTICATED),
    ((("authorization", "Bearer not-a-jwt"),), grpc.StatusCode.UNAUTHENTICATED),
    ((("authorization", "Bearer im_00000000_unknownkeyunknownkeyunknown"),), grpc.StatusCode.UNAUTHENTICATED),
    ("read-only", grpc.StatusCode.PERMISSION_DENIED),
])
def test_refused_callers_write_nothing(guide, channel, make_key, metadata, code):
    pb2, pb2_grpc = guide
    if metadata == "read-only":
        metadata = bearer(make_key("incident:read"))
    with pytest.raises(grpc.RpcError) as info:
        pb2_grpc.IncidentServiceStub(channel).CreateIncident(shield_request(pb2), metadata=metadata, timeout=10)
    assert info.value.code() == code
    assert counts() == (0, 0)


@pytest.mark.parametrize("overrides, needle", [
    ({"title": ""}, "title: Missing data for required field."),
    ({"event_id": ""}, "event_id: Missing data for required field."),
    ({"severity": ""}, "severity: Missing data for required field."),
    ({"timestamp": "yesterday"}, "timestamp: Not a valid datetime."),
])
def test_invalid_requests_are_invalid_argument(guide, channel, overrides, needle):
    pb2, pb2_grpc = guide
    with pytest.raises(grpc.RpcError) as info:
        pb2_grpc.IncidentServiceStub(channel).CreateIncident(
            shield_request(pb2, **overrides), metadata=bearer(create_token("t", 60)), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in info.value.details()
    assert counts() == (0, 0)


def test_stream_receives_incidents_created_after_subscribing(ours, channel):
    pb2, pb2_grpc = ours
    stub = pb2_grpc.IncidentServiceStub(channel)
    token = create_token("watcher", 300)
    stream = stub.StreamIncidents(pb2.StreamIncidentsRequest(severities=["P0"]), metadata=bearer(token), timeout=30)
    assert dict(stream.initial_metadata())["x-subscribed"] == "1"  # the subscription is live
    stub.CreateIncident(shield_request(pb2, event_id="low", title="Minor", severity="low"), metadata=bearer(token))
    created = stub.CreateIncident(shield_request(pb2, event_id="crit"), metadata=bearer(token))
    first = next(stream)
    stream.cancel()
    assert first.id == created.incident_id  # the P3 one was filtered out
    assert (first.severity, first.change, first.source) == ("P0", "incident_created", "llm-shield")


def test_stream_rejects_unknown_severity(ours, channel):
    pb2, pb2_grpc = ours
    stream = pb2_grpc.IncidentServiceStub(channel).StreamIncidents(
        pb2.StreamIncidentsRequest(severities=["SEV1"]), metadata=bearer(create_token("w", 60)), timeout=10)
    with pytest.raises(grpc.RpcError) as info:
        next(stream)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_update_incident_through_the_state_machine(ours, channel, make_key):
    pb2, pb2_grpc = ours
    stub = pb2_grpc.IncidentServiceStub(channel)
    md = bearer(make_key("event:create", "incident:read", "incident:write"))
    incident_id = stub.CreateIncident(shield_request(pb2), metadata=md).incident_id
    acked = stub.UpdateIncident(pb2.UpdateIncidentRequest(incident_id=incident_id, status="ACKNOWLEDGED",
                                                          actor="alice", assignee="alice"), metadata=md)
    assert (acked.status, acked.acknowledged_by, acked.assignee) == ("ACKNOWLEDGED", "alice", "alice")
    resolved = stub.UpdateIncident(pb2.UpdateIncidentRequest(incident_id=incident_id, status="RESOLVED",
                                                             resolution_notes="blocked user", root_cause="jailbreak"),
                                   metadata=md)
    assert resolved.status == "RESOLVED" and resolved.resolved_at
    for request, code in [
        (pb2.UpdateIncidentRequest(incident_id=incident_id, status="RESOLVED"), grpc.StatusCode.FAILED_PRECONDITION),
        (pb2.UpdateIncidentRequest(incident_id=incident_id, status="DONE"), grpc.StatusCode.INVALID_ARGUMENT),
        (pb2.UpdateIncidentRequest(incident_id=incident_id, severity="SEV1"), grpc.StatusCode.INVALID_ARGUMENT),
        (pb2.UpdateIncidentRequest(incident_id=incident_id), grpc.StatusCode.INVALID_ARGUMENT),
        (pb2.UpdateIncidentRequest(incident_id="INC-20000101-00001", status="RESOLVED"), grpc.StatusCode.NOT_FOUND),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            stub.UpdateIncident(request, metadata=md)
        assert info.value.code() == code
    with pytest.raises(grpc.RpcError) as info:
        stub.UpdateIncident(pb2.UpdateIncidentRequest(incident_id=incident_id, status="CLOSED"),
                            metadata=bearer(create_token("reader", 60)))  # JWT default: no incident:write
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with read_session() as session:
        kinds = [t.new_value for t in session.scalars(
            select(TimelineEntry).where(TimelineEntry.incident_id == incident_id).order_by(TimelineEntry.id))
            if t.field == "status"]
    assert kinds == ["NEW", "ACKNOWLEDGED", "RESOLVED"]


def test_analyze_correlations_finds_incidents_sharing_service(ours, channel):
    pb2, pb2_grpc = ours
    stub = pb2_grpc.IncidentServiceStub(channel)
    md = bearer(create_token("analyst", 300))
    ids = [stub.CreateIncident(shield_request(pb2, event_id=f"e{i}", title=title, service=service, source=source),
                               metadata=md).incident_id
           for i, (title, service, source) in enumerate([
               ("Prompt injection", "chat-api", "llm-shield"), ("Latency spike", "chat-api", "llm-sentinel"),
               ("Disk full", "billing", "llm-sentinel")])]
    result = stub.AnalyzeCorrelations(pb2.AnalyzeCorrelationsRequest(incident_id=ids[0]), metadata=md)
    related = {c.incident_id: c for c in result.correlations}
    assert set(related) == {ids[1]}
    assert "service" in related[ids[1]].reasons and related[ids[1]].score > 0
    with pytest.raises(grpc.RpcError) as info:
        stub.AnalyzeCorrelations(pb2.AnalyzeCorrelationsRequest(incident_id="INC-20000101-00009"), metadata=md)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_and_health(channel):
    from google.protobuf import json_format
    from google.protobuf.descriptor_pool import DescriptorPool
    from google.protobuf.message_factory import GetMessageClass
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    check = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="incident_manager.IncidentService"), timeout=5)
    assert check.status == health_pb2.HealthCheckResponse.SERVING
    database = ProtoReflectionDescriptorDatabase(channel)
    assert "incident_manager.IncidentService" in database.get_services()
    # What grpcurl does with `-d @ < shield-event.json`: resolve the type by reflection, parse JSON.
    pool = DescriptorPool(database)
    method = pool.FindServiceByName("incident_manager.IncidentService").FindMethodByName("CreateIncident")
    request_class = GetMessageClass(method.input_type)
    response_class = GetMessageClass(method.output_type)
    message = json_format.Parse(
        '{"event_id": "shield-json-1", "source": "llm-shield", "title": "Policy violation", "severity": "high",'
        ' "event_type": "violation", "encrypted_payload": "c2VjcmV0"}', request_class())
    call = channel.unary_unary("/incident_manager.IncidentService/CreateIncident",
                               request_serializer=lambda m: m.SerializeToString(),
                               response_deserializer=response_class.FromString)
    answer = call(message, metadata=bearer(create_token("grpcurl", 60)), timeout=10)
    assert answer.status == "accepted" and answer.incident_id.startswith("INC-")


def test_shield_auto_page_and_priority_routing(ours, channel, tmp_path, monkeypatch):
    config = tmp_path / "config.yaml"
    config.write_text(
        "integrations:\n"
        "  llm-shield:\n"
        "    enabled: true\n"
        "    routing:\n"
        "      default_team: security-team\n"
        "      escalation_policy: security-critical\n"
        "      auto_page: true  # Auto-page on-call for P0/P1\n"
    )
    monkeypatch.setenv("CONFIG_FILE", str(config))
    reset_settings_cache()
    try:
        pb2, pb2_grpc = ours
        stub = pb2_grpc.IncidentServiceStub(channel)
        md = bearer(create_token("llm-shield", 60))
        critical = stub.CreateIncident(shield_request(pb2), metadata=md).incident_id
        low = stub.CreateIncident(shield_request(pb2, event_id="low-1", title="Odd prompt", severity="low"),
                                  metadata=md).incident_id
    finally:
        monkeypatch.delenv("CONFIG_FILE")
        reset_settings_cache()
    with read_session() as session:
        paged = session.get(Incident, critical)
        quiet = session.get(Incident, low)
        entries = list(session.scalars(select(TimelineEntry).where(TimelineEntry.kind == "auto_page")))
    assert paged is not None and quiet is not None
    assert (paged.team, paged.escalation_policy) == ("security-team", "security-critical")
    assert paged.next_escalation_at is not None
    assert quiet.next_escalation_at is None and quiet.team == "security-team"
    assert [e.incident_id for e in entries] == [critical]


# ------------------------------------------------------------------------------------------ mTLS

def _certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for localhost, clients: allowed, unlisted, and one from another CA."""
    import ipaddress
    from datetime import datetime, timedelta, timezone

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(timezone.utc)

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def ca(cn: str) -> tuple[Any, Any]:
        k = key()
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn)).public_key(k.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
                .not_valid_after(now + timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(k, hashes.SHA256()))
        return k, cert

    def leaf(cn: str, issuer: tuple[Any, Any], sans: list[x509.GeneralName]) -> tuple[Any, Any]:
        k = key()
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(issuer[1].subject)
                .public_key(k.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .sign(issuer[0], hashes.SHA256()))
        return k, cert

    def write(label: str, pair: tuple[Any, Any]) -> None:
        (directory / f"{label}.key").write_bytes(pair[0].private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        (directory / f"{label}.crt").write_bytes(pair[1].public_bytes(serialization.Encoding.PEM))

    main_ca, other_ca = ca("Incident Manager CA"), ca("Somebody Else CA")
    write("ca", main_ca)
    write("server", leaf("incidents.example.com", main_ca,
                         [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]))
    write("shield", leaf("llm-shield", main_ca, [x509.DNSName("shield.internal")]))
    write("unlisted", leaf("random-service", main_ca, [x509.DNSName("random.internal")]))
    write("foreign", leaf("llm-shield", other_ca, [x509.DNSName("shield.internal")]))
    return {p.stem + p.suffix: p for p in directory.iterdir()}


@pytest.fixture
def mtls_server(db: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    from api.grpc.server import build_server

    _certificates(tmp_path)
    monkeypatch.setenv("GRPC_TLS_CERT", str(tmp_path / "server.crt"))
    monkeypatch.setenv("GRPC_TLS_KEY", str(tmp_path / "server.key"))
    monkeypatch.setenv("GRPC_CLIENT_CA", str(tmp_path / "ca.crt"))
    monkeypatch.setenv("GRPC_ALLOWED_IDENTITIES", "shield.internal,ops-console")
    reset_settings_cache()
    server, port = build_server(address="127.0.0.1:0")
    server.start()
    try:
        yield f"localhost:{port}", tmp_path
    finally:
        server.stop(grace=None).wait()
        for name in ("GRPC_TLS_CERT", "GRPC_TLS_KEY", "GRPC_CLIENT_CA", "GRPC_ALLOWED_IDENTITIES"):
            monkeypatch.delenv(name)
        reset_settings_cache()


def _mtls_call(ours: tuple[Any, Any], address: str, certs: Path, client: str | None) -> Any:
    pb2, pb2_grpc = ours
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.crt").read_bytes(),
        private_key=(certs / f"{client}.key").read_bytes() if client else None,
        certificate_chain=(certs / f"{client}.crt").read_bytes() if client else None,
    )
    with grpc.secure_channel(address, credentials) as chan:
        return pb2_grpc.IncidentServiceStub(chan).CreateIncident(shield_request(pb2), timeout=10)


def test_mtls_allows_listed_identity(ours, mtls_server):
    address, certs = mtls_server
    answer = _mtls_call(ours, address, certs, "shield")
    assert answer.status == "accepted"
    assert counts() == (1, 1)


@pytest.mark.parametrize("client, codes", [
    (None, {grpc.StatusCode.UNAVAILABLE}),       # no certificate: the TLS handshake is refused
    ("foreign", {grpc.StatusCode.UNAVAILABLE}),  # signed by another CA: refused at the handshake
    ("unlisted", {grpc.StatusCode.PERMISSION_DENIED}),
])
def test_mtls_refuses(ours, mtls_server, client, codes):
    address, certs = mtls_server
    with pytest.raises(grpc.RpcError) as info:
        _mtls_call(ours, address, certs, client)
    assert info.value.code() in codes
    if client == "unlisted":
        assert "random-service" in info.value.details() and "GRPC_ALLOWED_IDENTITIES" in info.value.details()
    assert counts() == (0, 0)


def test_concurrent_creates_of_one_event_give_one_incident(guide, channel):
    pb2, pb2_grpc = guide
    stub = pb2_grpc.IncidentServiceStub(channel)
    md = bearer(create_token("race", 60))
    answers: list[Any] = []
    threads = [threading.Thread(target=lambda: answers.append(stub.CreateIncident(shield_request(pb2), metadata=md)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len({a.incident_id for a in answers}) == 1
    assert sorted(a.status for a in answers).count("accepted") == 1
    assert counts() == (1, 1)


def test_analyze_correlations_reports_the_pipelines_correlation_group(ours, channel, worker):
    from app.adapters.pipeline_models import CorrelationMember

    pb2, pb2_grpc = ours
    stub = pb2_grpc.IncidentServiceStub(channel)
    md = bearer(create_token("analyst", 300))
    ids = [stub.CreateIncident(shield_request(pb2, event_id=f"gpu-{i}", title=f"GPU memory exhausted on node {i}",
                                              service="inference", source="llm-sentinel", event_type="anomaly",
                                              resource=pb2.Resource(type="node", id=f"node-{i}")),
                               metadata=md).incident_id for i in (1, 2)]

    def grouped() -> list[Any]:
        with read_session() as session:
            members = list(session.scalars(select(CorrelationMember).where(CorrelationMember.incident_id.in_(ids))))
        return members if len(members) == 2 else []

    members = wait_for(grouped, 30, 0.2, "the pipeline's correlation stage to group the two incidents")
    result = stub.AnalyzeCorrelations(pb2.AnalyzeCorrelationsRequest(incident_id=ids[0]), metadata=md)
    assert result.group_id == members[0].group_id
    [other] = [c for c in result.correlations if c.incident_id == ids[1]]
    assert other.reasons[0] == "group" and other.score == pytest.approx(
        next(m.score for m in members if m.incident_id == ids[1]), abs=1e-3)


def test_streams_are_capped_so_unary_calls_keep_their_threads(ours, db):
    import dataclasses

    from api.grpc.server import build_server
    from app.config import get_settings

    pb2, pb2_grpc = ours
    server, port = build_server(dataclasses.replace(get_settings(), grpc_max_workers=4), address="127.0.0.1:0",
                                stream_idle_secs=0.2)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as chan:
            stub = pb2_grpc.IncidentServiceStub(chan)
            md = bearer(create_token("watcher", 60))
            open_streams = [stub.StreamIncidents(pb2.StreamIncidentsRequest(), metadata=md, timeout=30)
                            for _ in range(2)]
            for stream in open_streams:
                assert dict(stream.initial_metadata())["x-subscribed"] == "1"
            refused = stub.StreamIncidents(pb2.StreamIncidentsRequest(), metadata=md, timeout=10)
            with pytest.raises(grpc.RpcError) as info:
                next(refused)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert stub.CreateIncident(shield_request(pb2), metadata=md, timeout=10).status == "accepted"
            open_streams[0].cancel()

            def another_stream_opens() -> bool:
                stream = stub.StreamIncidents(pb2.StreamIncidentsRequest(), metadata=md, timeout=10)
                try:
                    return dict(stream.initial_metadata()).get("x-subscribed") == "1"
                finally:
                    stream.cancel()

            wait_for(another_stream_opens, 10, 0.2, "a stream slot to free up after a cancel")
            open_streams[1].cancel()
    finally:
        server.stop(grace=None).wait()


def test_the_procfile_grpc_process_serves_and_stops_on_sigterm(test_env):
    """`incident-manager grpc serve` (the Procfile's grpc line): health SERVING, clean exit on SIGTERM."""
    import os
    import signal
    import subprocess

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from tests.conftest import ROOT
    from tests.integration.test_ws import free_port

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "cli", "grpc", "serve", "--address", f"127.0.0.1:{port}"],
                               cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as chan:
            grpc.channel_ready_future(chan).result(timeout=30)
            answer = health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output.decode()[-2000:]


def test_tls_without_client_ca_takes_bearer_metadata(ours, db, tmp_path, monkeypatch):
    """GRPC_TLS_CERT/KEY alone: TLS as the guide's grpcurl example expects (no -plaintext), bearer auth."""
    from api.grpc.server import build_server

    _certificates(tmp_path)
    monkeypatch.setenv("GRPC_TLS_CERT", str(tmp_path / "server.crt"))
    monkeypatch.setenv("GRPC_TLS_KEY", str(tmp_path / "server.key"))
    reset_settings_cache()
    server, port = build_server(address="127.0.0.1:0")
    server.start()
    try:
        pb2, pb2_grpc = ours
        credentials = grpc.ssl_channel_credentials(root_certificates=(tmp_path / "ca.crt").read_bytes())
        with grpc.secure_channel(f"localhost:{port}", credentials) as chan:
            stub = pb2_grpc.IncidentServiceStub(chan)
            with pytest.raises(grpc.RpcError) as info:
                stub.CreateIncident(shield_request(pb2), timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert counts() == (0, 0)
            answer = stub.CreateIncident(shield_request(pb2), metadata=bearer(create_token("shield", 60)), timeout=10)
            assert answer.status == "accepted"
    finally:
        server.stop(grace=None).wait()
        monkeypatch.delenv("GRPC_TLS_CERT")
        monkeypatch.delenv("GRPC_TLS_KEY")
        reset_settings_cache()
