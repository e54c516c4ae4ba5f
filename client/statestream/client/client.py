"""Client and Session: step a server-side recurrent state with numpy in, numpy out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import grpc
import numpy as np

from statestream.contract.errors import AlreadyExists, StatestreamError, from_rpc_error
from statestream.inference import grpc_service_pb2 as ipb
from statestream.inference import grpc_service_pb2_grpc as ipb_grpc
from statestream.v1 import statestream_pb2 as pb
from statestream.v1 import statestream_pb2_grpc as pb_grpc

from . import streaming
from .retry import Attempts, RetryPolicy

States = dict[str, dict[str, np.ndarray]]  # {layer: {"h": [units], "c": [units]}}

# The header a proxy routes on (HAProxy `balance hdr(x-session-id)`): sent on every call that names a session.
SESSION_HEADER = "x-session-id"

# A restarted server or a recovered replica is found again within about a second (gRPC's default backoff
# grows to 120 s); callers may override any of these through `options`.
DEFAULT_CHANNEL_OPTIONS = {
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
}


F32 = np.dtype("<f4")  # tensors travel as little-endian float32 bytes (the *_raw fields)


def to_raw(x) -> bytes:
    """float32 values as the wire's raw bytes (little-endian, row-major)."""
    return np.ascontiguousarray(x, dtype=F32).tobytes()


def floats(values, raw: bytes) -> np.ndarray:
    """A response's floats, from its raw bytes if the server sent them, else from the repeated field."""
    return np.frombuffer(raw, dtype=F32).astype(np.float32) if raw else np.array(values, dtype=np.float32)


def states_from_proto(layers) -> States:
    out: States = {}
    for l in layers:
        out[l.layer] = {"h": floats(l.h, l.h_raw)}
        if l.c or l.c_raw:
            out[l.layer]["c"] = floats(l.c, l.c_raw)
    return out


def states_to_proto(states: States) -> list[pb.LayerState]:
    return [pb.LayerState(layer=name, h_raw=to_raw(s["h"]), c_raw=to_raw(s.get("c", ()))) for name, s in states.items()]


class _Closes:
    """Context manager: `close()` on leaving; an error from close is raised only if the block raised none."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.close()
        except Exception:
            if exc[0] is None:
                raise


@dataclass
class SessionState:
    """A session's saved state: enough to restore or migrate it (`Session.set_state`)."""

    states: States
    step_count: int = 0
    last_sequence_number: int = 0
    model: str = ""
    session_id: str = ""


@dataclass
class MigrationReport:
    """What `Client.migrate` did to each session: moved (id -> the version it was on), already on the target
    version, or refused (id -> the server's reason, e.g. both state layouts)."""

    version: int
    moved: dict[str, int]
    unchanged: list[str]
    refused: dict[str, str]


class Client:
    """A connection to a statestream server.

    >>> with Client("localhost:50051") as client, client.session("demo") as s:
    ...     y = s.step([0.1, 0.2, 0.3])
    """

    def __init__(self, target: str = "localhost:50051", *, timeout: float = 10.0,
                 credentials: grpc.ChannelCredentials | None = None, token: str | None = None,
                 options: list | None = None, retry: RetryPolicy | None = None):
        """timeout: the deadline of each call (of each step, with its retries, in exactly-once mode); a stream's
        replies must each come within it. retry: the backoff of exactly-once sessions."""
        opts = list({**DEFAULT_CHANNEL_OPTIONS, **dict(options or [])}.items())
        self.target = target
        self.channel = grpc.secure_channel(target, credentials, opts) if credentials \
            else grpc.insecure_channel(target, opts)
        self.stub = pb_grpc.StateStreamServiceStub(self.channel)
        self.kserve = ipb_grpc.GRPCInferenceServiceStub(self.channel)  # the same port: model repository control
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.retries = 0  # attempts resent by exactly-once sessions, over this client's life
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def call(self, method: str, request, timeout: float | None = None, *, session_id: str = "",
             retry: bool = False, stub=None):
        """One unary RPC with this client's deadline and credentials; errors translated.

        session_id: sent as the x-session-id header (a group's calls send the group id).
        retry: resend on a retryable failure (`retry.retryable`)
        until the deadline; only for requests that are safe to repeat (reads, numbered steps).
        """
        metadata = self.metadata + ((SESSION_HEADER, session_id),) if session_id else self.metadata
        fn = getattr(stub or self.stub, method)
        if not retry:
            try:
                return fn(request, timeout=timeout or self.timeout, metadata=metadata)
            except grpc.RpcError as e:
                raise from_rpc_error(e) from None
        attempts = Attempts(self.retry, timeout or self.timeout)
        for attempt_timeout in attempts:
            try:
                reply = fn(request, timeout=attempt_timeout, metadata=metadata, wait_for_ready=attempts.retries > 0)
                self.retries += attempts.retries
                return reply
            except grpc.RpcError as e:
                attempts.failed(from_rpc_error(e))

    def models(self) -> list[pb.ModelInfo]:
        return list(self.call("ListModels", pb.ListModelsRequest()).models)

    def model(self, name: str) -> pb.ModelInfo:
        return self.call("GetModel", pb.GetModelRequest(name=name)).model

    def session(self, model: str, session_id: str = "", *, initial_states: States | None = None,
                idle_timeout: float = 0.0, exactly_once: bool = False) -> "Session":
        """Open a session (closed when used as a context manager and left).

        exactly_once: the Session numbers its steps itself and retries them through failures (see `Session`).
        With a session_id, the open is retried too: ALREADY_EXISTS after a retry, for a session that has not
        stepped yet, is taken as this call's own open whose answer was lost.
        """
        req = pb.OpenSessionRequest(model=model, session_id=session_id, idle_timeout_seconds=idle_timeout,
                                    initial_states=states_to_proto(initial_states) if initial_states else [])
        retry = exactly_once and bool(session_id)
        try:
            reply = self.call("OpenSession", req, session_id=session_id, retry=retry)
        except AlreadyExists as e:
            if not retry or getattr(e, "attempts", 1) == 1:
                raise
            s = self.attach(session_id, model, exactly_once=True)
            st = s.get_state()
            if st.step_count or st.last_sequence_number:
                raise
            return s
        return Session(self, reply.session_id, reply.model, exactly_once=exactly_once)

    def attach(self, session_id: str, model: str, *, exactly_once: bool = False) -> "Session":
        """A Session object for an already open session (e.g. after a restart).

        exactly_once: numbering resumes from the server's last sequence number (one GetState).
        """
        s = Session(self, session_id, self.model(model), exactly_once=exactly_once)
        if exactly_once:
            s.last_sequence_number = s.get_state().last_sequence_number
        return s

    def load_model(self, name: str) -> None:
        """Load the versions of `name` that the server's repository folder holds and that are not loaded (the new
        latest becomes the default); the server's error names a file that fails to load."""
        self.call("RepositoryModelLoad", ipb.RepositoryModelLoadRequest(model_name=name), stub=self.kserve)

    def unload_model(self, name: str, version: int = 0, *, force: bool = False) -> None:
        """Unload `version` of `name` (0: every version): no new sessions; open ones run until they close or
        expire, or (`force`) are closed now."""
        req = ipb.RepositoryModelUnloadRequest(model_name=name)
        if version:
            req.parameters["version"].int64_param = version
        if force:
            req.parameters["force"].bool_param = True
        self.call("RepositoryModelUnload", req, stub=self.kserve)

    def repository(self) -> list[tuple[str, int, str, str]]:
        """The server's model versions: (name, version, READY | UNLOADING | UNAVAILABLE, reason)."""
        index = self.call("RepositoryIndex", ipb.RepositoryIndexRequest(), stub=self.kserve).models
        return [(m.name, int(m.version), m.state, m.reason) for m in index]

    def migrate(self, model: str, version: int = 0, *, from_version: int = 0,
                session_ids: list[str] | None = None) -> MigrationReport:
        """Move every open session of `model` (of `from_version`, or of every version; or the `session_ids`
        given) that this server holds to `version` (0: the default, the latest), states carried over; a session
        whose state layout differs, or that has steps in flight, is refused and reported, the others go on.
        With replicas, run it against each (each lists the sessions it holds)."""
        if session_ids is None:
            listed = self.call("ListSessions", pb.ListSessionsRequest(model=model, version=from_version)).sessions
            session_ids = [s.session_id for s in listed]
        report = MigrationReport(version, {}, [], {})
        for sid in session_ids:
            try:
                reply = self.call("MigrateSession", pb.MigrateSessionRequest(session_id=sid, version=version),
                                  session_id=sid)
            except StatestreamError as e:
                report.refused[sid] = f"{e.code.name}: {e.message}"
                continue
            report.version = reply.state.model_version
            if reply.from_version == reply.state.model_version:
                report.unchanged.append(sid)
            else:
                report.moved[sid] = reply.from_version
        return report

    def group(self, model: str, size: int = 0, *, session_ids: list[str] | None = None, group_id: str = "",
              idle_timeout: float = 0.0) -> "Group":
        """Open a session group: `size` new sessions (random ids) or the given `session_ids`, stepped together
        by `Group.step` with one message; each member is also an ordinary session (`Group.sessions`)."""
        reply = self.call("OpenGroup", pb.OpenGroupRequest(model=model, size=size, session_ids=session_ids or [],
                                                           group_id=group_id, idle_timeout_seconds=idle_timeout),
                          session_id=group_id)
        return Group(self, reply.group_id, list(reply.session_ids), reply.model)


class Session(_Closes):
    """One server-side session: its states stay on the server between calls.

    Every call names the session in the x-session-id header, so a proxy can keep it on one replica.

    exactly_once=True: the session numbers its steps (sequence_number = last + 1; `attach` resumes from the
    server's last one) and retries a step with the same number on UNAVAILABLE, CANCELLED, an INTERNAL that did
    not come from our server, a timed-out attempt and a lost connection, backing off until the call's deadline
    (`retry.retryable`). The server applies a sequence number once and replays its recorded response to a retry,
    so a step lost on the way back is answered without being applied twice. `stream` then sends one step at a
    time and resumes a broken stream on a new call.
    """

    def __init__(self, client: Client, session_id: str, info: pb.ModelInfo, *, exactly_once: bool = False):
        self.client = client
        self.id = session_id
        self.info = info
        self.exactly_once = exactly_once
        self.last_sequence_number = 0  # the last acknowledged one (exactly-once mode)
        self.metadata = client.metadata + ((SESSION_HEADER, session_id),)

    def __repr__(self) -> str:
        return f"Session({self.id!r}, model={self.info.name!r})"

    def _call(self, method: str, request, timeout: float | None = None, retry: bool = False):
        return self.client.call(method, request, timeout, session_id=self.id, retry=retry)

    def request(self, x, return_sequences: bool, return_state: bool, sequence_number: int | None) -> pb.StepRequest:
        """The StepRequest for input x (F,) or (T, F)."""
        req = pb.StepRequest(session_id=self.id, input_raw=to_raw(x), raw_output=True,
                             return_sequences=return_sequences, return_state=return_state)
        if sequence_number is not None:
            req.sequence_number = sequence_number
        return req

    def result(self, reply: pb.StepResponse, return_sequences: bool, return_state: bool):
        """A StepResponse as numpy, shaped like Keras (see `step`)."""
        y = floats(reply.output, reply.output_raw).reshape(reply.rows, self.info.output_size)
        if not return_sequences:
            y = y[-1]
        return (y, states_from_proto(reply.states)) if return_state else y

    def acknowledged(self, seq: int) -> None:
        """Exactly-once: the step numbered `seq` was answered."""
        self.last_sequence_number = seq

    def step(self, x, return_sequences: bool = False, return_state: bool = False,
             sequence_number: int | None = None, timeout: float | None = None):
        """Feed x: shape (F,) for one timestep or (T, F) for T of them.

        Returns the output like Keras: (O,) for the last timestep, (T, O) with
        return_sequences; with return_state, (output, {layer: {"h", "c"}}).
        """
        if self.exactly_once:
            if sequence_number is not None:
                raise ValueError("an exactly_once session numbers its steps itself; do not pass sequence_number")
            seq = self.last_sequence_number + 1
            reply = self._call("Step", self.request(x, return_sequences, return_state, seq), timeout, retry=True)
            self.acknowledged(seq)
        else:
            reply = self._call("Step", self.request(x, return_sequences, return_state, sequence_number), timeout)
        return self.result(reply, return_sequences, return_state)

    def stream(self, steps: Iterable, return_sequences: bool = False, return_state: bool = False,
               timeout: float | None = None) -> Iterator:
        """Stream many steps over one bidirectional call; yields one result per step, in order.

        An in-band error on one step raises that step's exception here (the server keeps the stream open, the
        session unchanged by that step); a broken call raises its StatestreamError. Each reply must come within
        the client's timeout of its step; `timeout` also bounds the whole call.

        exactly_once: one step in flight at a time; a broken call is resumed on a new one from the last
        acknowledged step, and `timeout` bounds each step with its retries (default: the client's timeout).
        """
        run = streaming.exactly_once if self.exactly_once else streaming.pipelined
        return run(self, steps, return_sequences, return_state, timeout)

    def get_state(self) -> SessionState:
        st = self._call("GetState", pb.GetStateRequest(session_id=self.id, raw_output=True), retry=self.exactly_once).state
        return SessionState(states_from_proto(st.layers), st.step_count, st.last_sequence_number, st.model,
                            st.session_id)

    def set_state(self, state: SessionState | States, step_count: int | None = None,
                  last_sequence_number: int | None = None) -> SessionState:
        """Overwrite the states (all layers); a SessionState also restores its counters."""
        if isinstance(state, SessionState):
            step_count = state.step_count if step_count is None else step_count
            last_sequence_number = state.last_sequence_number if last_sequence_number is None else last_sequence_number
            state = state.states
        req = pb.SetStateRequest(session_id=self.id, layers=states_to_proto(state))
        if step_count is not None:
            req.step_count = step_count
        if last_sequence_number is not None:
            req.last_sequence_number = last_sequence_number
        st = self._call("SetState", req).state
        self.last_sequence_number = st.last_sequence_number
        return SessionState(states_from_proto(st.layers), st.step_count, st.last_sequence_number, st.model,
                            st.session_id)

    def close(self) -> int:
        """Close the session; returns its step count."""
        return self._call("CloseSession", pb.CloseSessionRequest(session_id=self.id)).step_count


class Group(_Closes):
    """A session group: N sessions whose states the server keeps side by side, stepped by one message.
    Its calls carry the group id as x-session-id, so a proxy keeps the group on one replica."""

    def __init__(self, client: Client, group_id: str, session_ids: list[str], info: pb.ModelInfo):
        self.client = client
        self.id = group_id
        self.session_ids = session_ids
        self.info = info
        self.sessions = [Session(client, sid, info) for sid in session_ids]

    def __len__(self) -> int:
        return len(self.session_ids)

    def step(self, x, masked=(), sequence_number: int | None = None, return_sequences: bool = False,
             timeout: float | None = None) -> np.ndarray:
        """x: (N, F) for one timestep of every member, or (N, T, F). Members listed in `masked` are not
        stepped (they keep their states; their rows of the result are zero).

        Returns (N, O), or (N, T, O) with return_sequences. `sequence_number` (the group's last + 1) makes
        the step exactly-once: a retry of it returns the recorded result without stepping again."""
        x = np.asarray(x, dtype=np.float32)
        n = len(self.session_ids)
        T = 1 if x.ndim == 2 else x.shape[1]
        req = pb.StepGroupRequest(group_id=self.id, inputs_raw=to_raw(x), timesteps=T, masked=list(masked),
                                  return_sequences=return_sequences, raw_output=True)
        if sequence_number is not None:
            req.sequence_number = sequence_number
        reply = self.client.call("StepGroup", req, timeout, session_id=self.id)
        y = floats(reply.outputs, reply.outputs_raw).reshape(n, reply.rows, self.info.output_size)
        return y if return_sequences else y[:, -1]

    def close(self, keep_sessions: bool = False) -> int:
        """Close the group and (unless kept) its member sessions; returns the group steps applied."""
        reply = self.client.call("CloseGroup", pb.CloseGroupRequest(group_id=self.id, keep_sessions=keep_sessions),
                                 session_id=self.id)
        return reply.step_count
