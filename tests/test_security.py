"""Access control for real: TLS and mutual TLS with certificates made here, bearer tokens and tenants."""

from __future__ import annotations

import datetime
import ipaddress

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from inproc import FakeClock, InProcessServer
from serverproc import DEMO_MODEL

from statestream.client import Client, NotFound, Unauthenticated
from statestream.v1 import statestream_pb2 as pb
from statestream.v1 import statestream_pb2_grpc as pb_grpc

C = grpc.StatusCode
X = [0.1, 0.2, 0.3]
# A TLS failure never reaches the service: the channel cannot connect, and grpc (1.85) fails the call with
# UNAVAILABLE ("failed to connect to all addresses; ... Tls handshake failed" when the client refuses the server,
# "... Socket closed" when the server refuses the client or the client speaks plaintext). Measured, not chosen.
TLS_REFUSED = C.UNAVAILABLE


# -- a throwaway PKI --------------------------------------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(obj) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: str, key, issuer: x509.Name, signer, extensions) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=1)))
    for ext, critical in extensions:
        b = b.add_extension(ext, critical=critical)
    return b.sign(signer, hashes.SHA256())


class CA:
    """A self-signed certificate authority that issues server and client certificates (PEM bytes)."""

    def __init__(self, name: str):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = _cert(name, self.key, _name(name), self.key,
                          [(x509.BasicConstraints(ca=True, path_length=0), True)])
        self.pem = _pem(self.cert)

    def issue(self, cn: str, *, server: bool) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        ext = [(x509.BasicConstraints(ca=False, path_length=None), True), (x509.ExtendedKeyUsage([usage]), False)]
        if server:
            ext.append((x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                     x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False))
        return _pem(key), _pem(_cert(cn, key, self.cert.subject, self.key, ext))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca, other = CA("statestream test CA"), CA("some other CA")
    key, cert = ca.issue("statestream-server", server=True)
    (d / "server.key").write_bytes(key)
    (d / "server.pem").write_bytes(cert)
    (d / "ca.pem").write_bytes(ca.pem)
    (d / "other-ca.pem").write_bytes(other.pem)
    return {"other_ca_file": d / "other-ca.pem", "dir": d, "ca": ca.pem, "client": ca.issue("good client", server=False),
            "foreign": other.issue("foreign client", server=False), "other_ca": other.pem}


def _tls_server(pki, *extra):
    d = pki["dir"]
    return InProcessServer.from_args(DEMO_MODEL, "--tls-cert", str(d / "server.pem"), "--tls-key",
                                     str(d / "server.key"), *extra)


@pytest.fixture(scope="module")
def tls(pki):
    with _tls_server(pki) as srv:
        yield srv


@pytest.fixture(scope="module")
def mtls(pki):
    with _tls_server(pki, "--tls-client-ca", str(pki["dir"] / "ca.pem")) as srv:
        yield srv


def _list_models(target: str, creds: grpc.ChannelCredentials | None) -> tuple[C, str]:
    """One RPC on a fresh channel: (code, details)."""
    ch = grpc.secure_channel(target, creds) if creds else grpc.insecure_channel(target)
    try:
        pb_grpc.StateStreamServiceStub(ch).ListModels(pb.ListModelsRequest(), timeout=10)
        return C.OK, ""
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    finally:
        ch.close()


def _steps_ok(target: str, creds: grpc.ChannelCredentials) -> None:
    with Client(target, credentials=creds) as c, c.session("demo") as s:
        y1 = s.step(X)
        y2 = s.step(X)
        assert y1.shape == (1,) and s.get_state().step_count == 2 and not np.array_equal(y1, y2)


# -- TLS --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_tls_client_trusting_the_ca_works(pki, tls, host):
    _steps_ok(f"{host}:{tls.port}", grpc.ssl_channel_credentials(pki["ca"]))


def test_tls_refuses_plaintext_client(tls):
    code, msg = _list_models(tls.target, None)
    assert code == TLS_REFUSED, (code, msg)


@pytest.mark.parametrize("roots", ["other_ca", "system"])
def test_tls_client_that_does_not_trust_the_server_refuses_it(pki, tls, roots):
    creds = grpc.ssl_channel_credentials(pki["other_ca"] if roots == "other_ca" else None)
    code, msg = _list_models(tls.target, creds)
    assert code == TLS_REFUSED and "CERTIFICATE_VERIFY_FAILED" in msg, (code, msg)


# -- mutual TLS -------------------------------------------------------------------------------------------------

def test_mtls_client_with_a_cert_from_the_ca_works(pki, mtls):
    key, cert = pki["client"]
    _steps_ok(mtls.target, grpc.ssl_channel_credentials(pki["ca"], key, cert))


@pytest.mark.parametrize("client", ["no certificate", "foreign CA", "plaintext"])
def test_mtls_refuses_clients_without_a_cert_from_the_ca(pki, mtls, client):
    if client == "plaintext":
        creds = None
    elif client == "no certificate":
        creds = grpc.ssl_channel_credentials(pki["ca"])
    else:
        creds = grpc.ssl_channel_credentials(pki["ca"], *pki["foreign"])
    code, msg = _list_models(mtls.target, creds)
    assert code == TLS_REFUSED, (code, msg)
    # and the server keeps serving the right clients
    key, cert = pki["client"]
    assert _list_models(mtls.target, grpc.ssl_channel_credentials(pki["ca"], key, cert))[0] == C.OK


# -- the container health probe over TLS ------------------------------------------------------------------------

def _probe(target: str, *args: str) -> int:
    from statestream.server.app.healthcheck import main
    return main(["--target", target, "--timeout", "10", *args])


@pytest.fixture
def no_tls_env(monkeypatch):
    for name in ("STATESTREAM_TLS_CA", "STATESTREAM_TLS_CERT", "STATESTREAM_TLS_SERVER_NAME"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_healthcheck_speaks_tls(pki, tls, no_tls_env, capsys):
    ca = str(pki["dir"] / "ca.pem")
    assert _probe(tls.target) == 1 and "UNAVAILABLE" in capsys.readouterr().err       # plaintext to a TLS port
    assert _probe(tls.target, "--tls-ca", ca) == 0 and capsys.readouterr().out.strip() == "SERVING"
    assert _probe(f"localhost:{tls.port}", "--ca", ca) == 0                           # the CLI's spelling
    assert _probe(tls.target, "--tls-ca", str(pki["other_ca_file"])) == 1
    assert "CERTIFICATE_VERIFY_FAILED" in capsys.readouterr().err
    assert _probe(tls.target, "--tls-ca", ca, "--tls-server-name", "elsewhere.example") == 1


def test_healthcheck_takes_tls_from_the_servers_environment(pki, tls, no_tls_env, capsys):
    """In the server's container (compose), STATESTREAM_TLS_CERT says the server speaks TLS."""
    no_tls_env.setenv("STATESTREAM_TLS_CERT", str(pki["dir"] / "server.pem"))
    assert _probe(tls.target) == 0 and capsys.readouterr().out.strip() == "SERVING"   # trusts that certificate
    no_tls_env.setenv("STATESTREAM_TLS_CA", str(pki["other_ca_file"]))
    assert _probe(tls.target) == 1          # STATESTREAM_TLS_CA, when set, is what it trusts
    no_tls_env.setenv("STATESTREAM_TLS_CA", str(pki["dir"] / "ca.pem"))
    assert _probe(tls.target) == 0


def test_healthcheck_with_a_client_certificate_and_token_for_mutual_tls(pki, mtls, no_tls_env, tmp_path):
    key, cert = pki["client"]
    (tmp_path / "c.key").write_bytes(key)
    (tmp_path / "c.pem").write_bytes(cert)
    (tmp_path / "token").write_text("anything\n")
    ca = str(pki["dir"] / "ca.pem")
    assert _probe(mtls.target, "--tls-ca", ca) == 1
    assert _probe(mtls.target, "--tls-ca", ca, "--client-cert", str(tmp_path / "c.pem"),
                  "--client-key", str(tmp_path / "c.key"), "--token-file", str(tmp_path / "token")) == 0


# -- bearer tokens and tenants ----------------------------------------------------------------------------------

ALICE, BOB = "tok-alice-3f9c2a", "tok-bob-77d01e"


@pytest.fixture(scope="module")
def auth(tmp_path_factory):
    path = tmp_path_factory.mktemp("auth") / "tokens"
    path.write_text(f"# accepted bearer tokens\n{ALICE}\n\n  {BOB}  \n")
    with InProcessServer.from_args(DEMO_MODEL, "--auth-token-file", str(path), clock=FakeClock()) as srv:
        yield srv


@pytest.fixture(scope="module")
def stub(auth):
    with grpc.insecure_channel(auth.target) as ch:
        yield pb_grpc.StateStreamServiceStub(ch)


def _md(token: str | None):
    return (("authorization", f"Bearer {token}"),) if token is not None else ()


def _unary(stub, method: str, req, token: str | None):
    try:
        return C.OK, "", getattr(stub, method)(req, metadata=_md(token), timeout=10)
    except grpc.RpcError as e:
        return e.code(), e.details() or "", None


def _layers(stub, sid: str, token: str) -> list[pb.LayerState]:
    return list(stub.GetState(pb.GetStateRequest(session_id=sid), metadata=_md(token), timeout=10).state.layers)


def _state_bytes(stub, sid: str, token: str) -> bytes:
    return stub.GetState(pb.GetStateRequest(session_id=sid), metadata=_md(token),
                         timeout=10).SerializeToString(deterministic=True)


ALL_UNARY = {"ListModels": pb.ListModelsRequest(), "GetModel": pb.GetModelRequest(name="demo"),
             "OpenSession": pb.OpenSessionRequest(model="demo"), "GetState": pb.GetStateRequest(session_id="a"),
             "SetState": pb.SetStateRequest(session_id="a"), "CloseSession": pb.CloseSessionRequest(session_id="a"),
             "Step": pb.StepRequest(session_id="a", input=X),
             "StepFrame": pb.StepFrameRequest(model="demo", session_ids=["a"], inputs=X)}
BAD_METADATA = {"missing": (), "wrong token": _md("tok-mallory"), "empty token": _md(""),
                "no Bearer scheme": (("authorization", ALICE),), "prefix of a token": _md(ALICE[:-1]),
                "token plus junk": _md(ALICE + "x")}


@pytest.mark.parametrize("bad", sorted(BAD_METADATA))
@pytest.mark.parametrize("method", sorted(ALL_UNARY))
def test_missing_or_wrong_token_is_unauthenticated(stub, method, bad):
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, method)(ALL_UNARY[method], metadata=BAD_METADATA[bad], timeout=10)
    assert info.value.code() == C.UNAUTHENTICATED, info.value.details()
    assert ALICE not in info.value.details() and BOB not in info.value.details()


@pytest.mark.parametrize("bad", sorted(BAD_METADATA))
@pytest.mark.parametrize("method", ["StreamSteps", "StreamFrames"])
def test_streams_without_a_good_token_are_unauthenticated(stub, method, bad):
    msg = (pb.StreamStepsRequest(step=ALL_UNARY["Step"]) if method == "StreamSteps"
           else pb.StreamFramesRequest(frame=ALL_UNARY["StepFrame"]))
    with pytest.raises(grpc.RpcError) as info:
        list(getattr(stub, method)(iter([msg]), metadata=BAD_METADATA[bad], timeout=10))
    assert info.value.code() == C.UNAUTHENTICATED


def test_good_tokens_work_with_the_python_client(auth):
    for token in (ALICE, BOB):
        with Client(auth.target, token=token) as c, c.session("demo") as s:
            s.step(X)
            assert s.get_state().step_count == 1
    with Client(auth.target) as c, pytest.raises(Unauthenticated):
        c.models()


def _without(msg: str, *ids: str) -> str:
    for sid in ids:
        msg = msg.replace(repr(sid), "<id>")
    return msg


def test_other_tenant_gets_not_found_shaped_like_an_unknown_session(stub):
    """Bob cannot tell Alice's session from one that does not exist, on any RPC that names it."""
    sid, ghost = "alice-private-1", "nobody-has-this"
    stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id=sid), metadata=_md(ALICE))
    stub.Step(pb.StepRequest(session_id=sid, input=X, sequence_number=1), metadata=_md(ALICE))
    before = _state_bytes(stub, sid, ALICE)
    layers = _layers(stub, sid, ALICE)

    def attempts(target: str):
        return {
            "Step": pb.StepRequest(session_id=target, input=X),
            "Step+seq": pb.StepRequest(session_id=target, input=X, sequence_number=2),
            "Step+model": pb.StepRequest(session_id=target, input=X, model="demo"),
            "GetState": pb.GetStateRequest(session_id=target),
            "SetState": pb.SetStateRequest(session_id=target, layers=layers, step_count=0, last_sequence_number=0),
            "CloseSession": pb.CloseSessionRequest(session_id=target),
        }

    for (name, theirs), (_, unknown) in zip(attempts(sid).items(), attempts(ghost).items()):
        method = name.split("+")[0]
        got, ref = _unary(stub, method, theirs, BOB), _unary(stub, method, unknown, BOB)
        assert got[0] == ref[0] == C.NOT_FOUND, (name, got, ref)
        assert _without(got[1], sid) == _without(ref[1], ghost), (name, got[1], ref[1])

    frame = pb.StepFrameRequest(model="demo", session_ids=[sid, ghost], inputs=X * 2, sequence_numbers=[2, 2])
    code, _, reply = _unary(stub, "StepFrame", frame, BOB)
    assert code == C.OK and [e.index for e in reply.errors] == [0, 1], reply
    e_theirs, e_ghost = (e.error for e in reply.errors)
    assert e_theirs.code == e_ghost.code == C.NOT_FOUND.value[0]
    assert _without(e_theirs.message, sid) == _without(e_ghost.message, ghost)
    assert list(reply.step_counts) == [0, 0]

    replies = list(stub.StreamSteps(iter([pb.StreamStepsRequest(step=pb.StepRequest(session_id=t, input=X))
                                          for t in (sid, ghost)]), metadata=_md(BOB), timeout=10))
    assert [r.error.code for r in replies] == [C.NOT_FOUND.value[0]] * 2
    assert _without(replies[0].error.message, sid) == _without(replies[1].error.message, ghost)

    assert _state_bytes(stub, sid, ALICE) == before, "Bob's attempts changed Alice's session"
    reply = stub.Step(pb.StepRequest(session_id=sid, input=X, sequence_number=2), metadata=_md(ALICE))
    assert reply.step_count == 2 and not reply.replayed


def test_open_if_missing_cannot_hijack_another_tenants_session(stub):
    """Bob naming Alice's session with open_if_missing never steps, reads or resets it."""
    sid = "alice-private-2"
    stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id=sid), metadata=_md(ALICE))
    for _ in range(3):
        stub.Step(pb.StepRequest(session_id=sid, input=X), metadata=_md(ALICE))
    before = _state_bytes(stub, sid, ALICE)
    step = pb.StepRequest(session_id=sid, model="demo", open_if_missing=True, input=X, return_state=True)
    code, msg, reply = _unary(stub, "Step", step, BOB)
    assert code == C.OK and reply.step_count == 1, (code, msg)  # Bob's own session: ids are per token
    frame = pb.StepFrameRequest(model="demo", session_ids=[sid], inputs=X, open_if_missing=True)
    code, msg, reply = _unary(stub, "StepFrame", frame, BOB)
    assert code == C.OK and not reply.errors and list(reply.step_counts) == [2], reply
    assert _state_bytes(stub, sid, ALICE) == before, "Bob's open_if_missing touched Alice's session"
    assert stub.Step(pb.StepRequest(session_id=sid, input=X), metadata=_md(ALICE)).step_count == 4


def test_tenants_cannot_probe_each_others_ids(auth, stub):
    """OpenSession, open_if_missing (Step, StepFrame) and the "expired" message answer Bob for Alice's ids exactly
    as for ids nobody uses: Bob gets sessions of his own, Alice's are untouched."""
    for sid in ("alice-private-4", "alice-private-5"):
        stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id=sid), metadata=_md(ALICE))
        stub.Step(pb.StepRequest(session_id=sid, input=X), metadata=_md(ALICE))
    before = {sid: _state_bytes(stub, sid, ALICE) for sid in ("alice-private-4", "alice-private-5")}
    attempts = [("OpenSession", lambda t: pb.OpenSessionRequest(model="demo", session_id=t), "alice-private-4"),
                ("Step", lambda t: pb.StepRequest(session_id=t, model="demo", open_if_missing=True, input=X),
                 "alice-private-5")]
    for method, make, sid in attempts:
        got, ref = _unary(stub, method, make(sid), BOB), _unary(stub, method, make("unused-" + sid), BOB)
        assert got[0] == ref[0] == C.OK, (method, got[:2], ref[:2])
        if method == "Step":
            got[2].session_id = ref[2].session_id
            assert got[2] == ref[2], "Bob's open_if_missing step saw Alice's history"
    frame = pb.StepFrameRequest(model="demo", session_ids=["alice-private-4", "alice-private-5"], inputs=X * 2,
                                open_if_missing=True)
    code, _, reply = _unary(stub, "StepFrame", frame, BOB)
    assert code == C.OK and not reply.errors and list(reply.step_counts) == [1, 2], reply
    assert {sid: _state_bytes(stub, sid, ALICE) for sid in before} == before

    stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="alice-short", idle_timeout_seconds=0.1),
                     metadata=_md(ALICE))
    assert _unary(stub, "GetState", pb.GetStateRequest(session_id="alice-short"), ALICE)[0] == C.OK
    assert auth.expire(0.3) == 1  # the fake clock: 0.3 s idle, past alice-short's 0.1 s (the others have 1 h)
    assert "expired" in _unary(stub, "GetState", pb.GetStateRequest(session_id="alice-short"), ALICE)[1]
    got = _unary(stub, "GetState", pb.GetStateRequest(session_id="alice-short"), BOB)
    ref = _unary(stub, "GetState", pb.GetStateRequest(session_id="unused-short"), BOB)
    assert got[0] == ref[0] == C.NOT_FOUND
    assert _without(got[1], "alice-short") == _without(ref[1], "unused-short"), (got[1], ref[1])


def test_health_needs_no_token(auth):
    """Orchestrators probe health without credentials; it reveals nothing about sessions."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    with grpc.insecure_channel(auth.target) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_the_client_library_raises_not_found_for_another_tenants_session(auth):
    with Client(auth.target, token=ALICE) as alice, Client(auth.target, token=BOB) as bob:
        with alice.session("demo", "alice-private-3") as s:
            s.step(X)
            intruder = bob.attach("alice-private-3", "demo")
            with pytest.raises(NotFound, match="unknown session 'alice-private-3'"):
                intruder.step(X)
            with pytest.raises(NotFound):
                intruder.get_state()
            assert s.get_state().step_count == 1


def test_the_bearer_scheme_is_case_insensitive(stub):
    for scheme in ("bearer", "BEARER", "Bearer"):
        reply = stub.ListModels(pb.ListModelsRequest(), metadata=(("authorization", f"{scheme} {ALICE}"),), timeout=10)
        assert [m.name for m in reply.models] == ["demo"]
