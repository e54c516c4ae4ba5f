"""`python -m statestream.server.app.healthcheck`: exit 0 when the server's gRPC health is SERVING (TLS too)."""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

USAGE = """\
Container health probe: gRPC health check of a statestream server; exit 0 when it is SERVING.

TLS: --tls-ca (as the client CLI's --ca) trusts that CA. Without it, a container whose server has
STATESTREAM_TLS_CERT set is probed over TLS too, trusting STATESTREAM_TLS_CA if set, else the server's own
certificate file. Mutual TLS: --client-cert and --client-key. The server's certificate must name the target's
host (localhost in a container), or give the name it has with --tls-server-name.
"""


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def credentials(args) -> grpc.ChannelCredentials | None:
    """TLS credentials from the flags and the server's environment, or None (plaintext)."""
    ca = args.tls_ca or os.environ.get("STATESTREAM_TLS_CA") or os.environ.get("STATESTREAM_TLS_CERT")
    if not ca:
        return None
    cert = _read(args.client_cert) if args.client_cert else None
    key = _read(args.client_key) if args.client_key else None
    return grpc.ssl_channel_credentials(_read(ca), private_key=key, certificate_chain=cert)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m statestream.server.app.healthcheck", description=USAGE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="localhost:50051", help="host:port of the server")
    p.add_argument("--service", default="", help="service name to check ('' = the whole server)")
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--tls-ca", "--ca", dest="tls_ca", help="PEM CA certificate: connect with TLS [env STATESTREAM_TLS_CA]")
    p.add_argument("--tls-server-name", default=os.environ.get("STATESTREAM_TLS_SERVER_NAME"),
                   help="the name the server's certificate must have, if not the target's host "
                        "[env STATESTREAM_TLS_SERVER_NAME]")
    p.add_argument("--client-cert", help="PEM client certificate (mutual TLS)")
    p.add_argument("--client-key", help="PEM client key (mutual TLS)")
    p.add_argument("--token-file", help="file holding a bearer token (health needs none; a proxy may)")
    args = p.parse_args(argv)
    if bool(args.client_cert) != bool(args.client_key):
        p.error("--client-cert and --client-key go together")
    try:
        creds = credentials(args)
        token = _read(args.token_file).decode().strip() if args.token_file else None
    except OSError as e:
        print(f"unhealthy: {e}", file=sys.stderr)
        return 1
    options = [("grpc.ssl_target_name_override", args.tls_server_name)] if creds and args.tls_server_name else []
    metadata = [("authorization", f"Bearer {token}")] if token else None
    channel = grpc.secure_channel(args.target, creds, options) if creds else grpc.insecure_channel(args.target)
    try:
        with channel:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout, metadata=metadata).status
    except grpc.RpcError as e:
        print(f"unhealthy: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    print(name)
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
