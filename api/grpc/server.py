"""The `grpc` process: IncidentService, the standard health service and server reflection, on
GRPC_HOST:GRPC_PORT (50051), with mTLS when certificates are configured."""

from __future__ import annotations

import gc
import logging
import signal
import threading
from concurrent import futures
from pathlib import Path
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from api.grpc.servicer import IncidentServicer, pb2, pb2_grpc
from app.config import Settings, get_settings
from app.services.ingest import Dispatcher

log = logging.getLogger(__name__)

SERVICE_NAME = pb2.DESCRIPTOR.services_by_name["IncidentService"].full_name


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials; with GRPC_CLIENT_CA, mTLS (a client certificate signed by it is required).
    None without certificates (plaintext, bearer metadata)."""
    if not settings.grpc_tls_cert:
        return None
    assert settings.grpc_tls_key
    client_ca = Path(settings.grpc_client_ca).read_bytes() if settings.grpc_client_ca else None
    return grpc.ssl_server_credentials(
        [(Path(settings.grpc_tls_key).read_bytes(), Path(settings.grpc_tls_cert).read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def build_server(settings: Settings | None = None, dispatcher: Dispatcher | None = None,
                 address: str | None = None, stream_idle_secs: float = 1.0) -> tuple[grpc.Server, int]:
    """A configured, not yet started server and the port it is bound to (`address` may end in :0)."""
    settings = settings or get_settings()
    if dispatcher is None:
        # The hand-off to Redis happens after the answer, off the group commit's critical path.
        from tasks.dispatch import dispatch_pipeline_in_background

        dispatcher = dispatch_pipeline_in_background
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.grpc_max_workers, thread_name_prefix="grpc"),
        options=[("grpc.max_receive_message_length", settings.max_body_bytes),
                 ("grpc.so_reuseport", 0)],
    )
    pb2_grpc.add_IncidentServiceServicer_to_server(IncidentServicer(settings, dispatcher, stream_idle_secs), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    address = address or f"{settings.grpc_host}:{settings.grpc_port}"
    credentials = server_credentials(settings)
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"could not bind the gRPC server to {address}")
    return server, port


def serve(settings: Settings | None = None, address: str | None = None) -> None:
    """Run until SIGTERM/SIGINT, then drain in-flight calls for up to 10 s."""
    settings = settings or get_settings()
    server, port = build_server(settings, address=address)
    server.start()
    gc.freeze()  # the loaded server out of the collector's walks, as the web's workers do (docs/doors.md)
    log.info("grpc server listening", extra={"address": address or f"{settings.grpc_host}:{port}",
                                            "tls": bool(settings.grpc_tls_cert), "mtls": bool(settings.grpc_client_ca)})
    stopped = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("grpc server stopping", extra={"signal": signum})
        server.stop(grace=10).wait()
        stopped.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server.wait_for_termination()
    stopped.wait(timeout=15)
