"""What the sync and asyncio clients share: request building, validation and the call plans they drive.

A *plan* is a generator that yields the `Call`s it needs and receives their replies (or has their
StatestreamError thrown into it). `drive` runs a plan with blocking calls, `adrive` with awaited ones: the
decisions (numbering, open-or-attach, reshaping) are written once, and the two clients differ only in how
they wait.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Generator

import numpy as np

from statestream.inference import grpc_service_pb2 as ipb
from statestream.v1 import statestream_pb2 as pb

from .errors import AlreadyExists, StatestreamError, from_code

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
    for layer in layers:
        out[layer.layer] = {"h": floats(layer.h, layer.h_raw)}
        if layer.c or layer.c_raw:
            out[layer.layer]["c"] = floats(layer.c, layer.c_raw)
    return out


def states_to_proto(states: States) -> list[pb.LayerState]:
    return [pb.LayerState(layer=name, h_raw=to_raw(s["h"]), c_raw=to_raw(s.get("c", ()))) for name, s in states.items()]


def step_input(x, features: int) -> np.ndarray:
    """x as float32 (F,) or (T, F); any other shape is refused (a (6,) for F=3 is not two timesteps)."""
    a = np.asarray(x, dtype=np.float32)
    if (a.ndim == 1 and a.shape[0] == features) or (a.ndim == 2 and a.shape[0] >= 1 and a.shape[1] == features):
        return a
    raise ValueError(f"a step takes shape (F,) = ({features},) for one timestep or (T, F) = (T, {features}) "
                     f"for T of them; got shape {a.shape}")


@dataclass
class SessionState:
    """A session's saved state: enough to restore or migrate it (`Session.set_state`)."""

    states: States
    step_count: int = 0
    last_sequence_number: int = 0
    model: str = ""
    session_id: str = ""

    @classmethod
    def from_proto(cls, st: pb.SessionState) -> "SessionState":
        return cls(states_from_proto(st.layers), st.step_count, st.last_sequence_number, st.model, st.session_id)


@dataclass(frozen=True)
class Call:
    """One unary RPC a plan needs: `retry` resends it on a retryable failure until its deadline."""

    method: str
    request: Any
    timeout: float | None = None
    session_id: str = ""
    retry: bool = False
    service: str = "v1"  # or "kserve": the model repository calls go to inference.GRPCInferenceService


Plan = Generator[Call, Any, Any]


def drive(plan: Plan, send: Callable[[Call], Any]):
    """Run a plan with a blocking `send`; returns the plan's value."""
    try:
        call = next(plan)
        while True:
            try:
                reply = send(call)
            except StatestreamError as e:
                call = plan.throw(e)
            else:
                call = plan.send(reply)
    except StopIteration as stop:
        return stop.value


async def adrive(plan: Plan, send: Callable[[Call], Any]):
    """Run a plan with an awaited `send`; returns the plan's value."""
    try:
        call = next(plan)
        while True:
            try:
                reply = await send(call)
            except StatestreamError as e:
                call = plan.throw(e)
            else:
                call = plan.send(reply)
    except StopIteration as stop:
        return stop.value


def _as_method(method, plan_method):
    """`method` documented like `plan_method`, without its Plan return type (help() shows the caller's view)."""
    functools.update_wrapper(method, plan_method)
    method.__signature__ = inspect.signature(plan_method).replace(return_annotation=inspect.Signature.empty)
    return method


def blocking(plan_method):
    """A sync method running `plan_method`'s plan on `self._send`."""
    def method(self, *args, **kwargs):
        return drive(plan_method(self, *args, **kwargs), self._send)
    return _as_method(method, plan_method)


def awaitable(plan_method):
    """An async method running `plan_method`'s plan on `self._send`."""
    async def method(self, *args, **kwargs):
        return await adrive(plan_method(self, *args, **kwargs), self._send)
    return _as_method(method, plan_method)


@dataclass
class MigrationReport:
    """What `Client.migrate` did to each session: moved (id -> the version it was on), already on the target
    version, or refused (id -> the server's reason, e.g. both state layouts)."""

    version: int
    moved: dict[str, int]
    unchanged: list[str]
    refused: dict[str, str]


class ClientPlans:
    """The client's calls as plans; subclasses set `session_class`, `group_class` and `_send`, and expose each
    plan as a method with `blocking` or `awaitable` (so a plan calls another as `ClientPlans.x(self, ...)`)."""

    session_class: type
    group_class: type

    def models(self) -> Plan:
        """The models the server serves (ModelInfo messages)."""
        return list((yield Call("ListModels", pb.ListModelsRequest())).models)

    def model(self, name: str) -> Plan:
        """One model's ModelInfo: features, output size, layers."""
        return (yield Call("GetModel", pb.GetModelRequest(name=name))).model

    def session(self, model: str, session_id: str = "", *, initial_states: States | None = None,
                idle_timeout: float = 0.0, exactly_once: bool = False) -> Plan:
        """Open a session (closed when used as a context manager and left).

        exactly_once: the Session numbers its steps itself and retries them through failures (see `Session`).
        With a session_id, the open is retried too: ALREADY_EXISTS after a retry, for a session that has not
        stepped yet, is taken as this call's own open whose answer was lost.
        """
        req = pb.OpenSessionRequest(model=model, session_id=session_id, idle_timeout_seconds=idle_timeout,
                                    initial_states=states_to_proto(initial_states) if initial_states else [])
        retry = exactly_once and bool(session_id)
        try:
            reply = yield Call("OpenSession", req, session_id=session_id, retry=retry)
        except AlreadyExists as e:
            if not retry or getattr(e, "attempts", 1) == 1:
                raise
            s, st = yield from self._attach(session_id, model, True)
            if st.step_count or st.last_sequence_number:
                raise
            return s
        return self.session_class(self, reply.session_id, reply.model, exactly_once=exactly_once)

    def attach(self, session_id: str, model: str, *, exactly_once: bool = False) -> Plan:
        """A Session object for an already open session (e.g. after a restart).

        exactly_once: numbering resumes from the server's last sequence number (one GetState).
        """
        return (yield from self._attach(session_id, model, exactly_once))[0]

    def open_or_attach(self, model: str, session_id: str, *, exactly_once: bool = False,
                       idle_timeout: float = 0.0) -> Plan:
        """The named session, opened if it is not open, else attached (a restarted sensor picks up where it was).

        exactly_once: numbering resumes from the server's last sequence number. An unknown model is NotFound; a
        session open on another model is refused with ValueError.
        """
        try:
            return (yield from ClientPlans.session(self, model, session_id, idle_timeout=idle_timeout,
                                                   exactly_once=exactly_once))
        except AlreadyExists:
            pass
        s, st = yield from self._attach(session_id, model, True)
        if st.model and st.model != model:
            raise ValueError(f"session {session_id!r} is open on model {st.model!r}, not {model!r}")
        s.exactly_once = exactly_once
        return s

    def _attach(self, session_id: str, model: str, read_state: bool) -> Plan:
        """(Session, its SessionState or None): one GetModel, and one GetState when asked."""
        s = self.session_class(self, session_id, (yield from ClientPlans.model(self, model)), exactly_once=read_state)
        st = None
        if read_state:
            st = yield from SessionPlans.get_state(s)
            s.last_sequence_number = st.last_sequence_number
        return s, st

    def load_model(self, name: str) -> Plan:
        """Load the versions of `name` that the server's repository folder holds and that are not loaded (the new
        latest becomes the default); the server's error names a file that fails to load."""
        yield Call("RepositoryModelLoad", ipb.RepositoryModelLoadRequest(model_name=name), service="kserve")

    def unload_model(self, name: str, version: int = 0, *, force: bool = False) -> Plan:
        """Unload `version` of `name` (0: every version): no new sessions; open ones run until they close or
        expire, or (`force`) are closed now."""
        req = ipb.RepositoryModelUnloadRequest(model_name=name)
        if version:
            req.parameters["version"].int64_param = version
        if force:
            req.parameters["force"].bool_param = True
        yield Call("RepositoryModelUnload", req, service="kserve")

    def repository(self) -> Plan:
        """The server's model versions: (name, version, READY | UNLOADING | UNAVAILABLE, reason)."""
        index = (yield Call("RepositoryIndex", ipb.RepositoryIndexRequest(), service="kserve")).models
        return [(m.name, int(m.version), m.state, m.reason) for m in index]

    def migrate(self, model: str, version: int = 0, *, from_version: int = 0,
                session_ids: list[str] | None = None) -> Plan:
        """Move every open session of `model` (of `from_version`, or of every version; or the `session_ids`
        given) that this server holds to `version` (0: the default, the latest), states carried over; a session
        whose state layout differs, or that has steps in flight, is refused and reported, the others go on.
        With replicas, run it against each (each lists the sessions it holds)."""
        if session_ids is None:
            listed = (yield Call("ListSessions", pb.ListSessionsRequest(model=model, version=from_version))).sessions
            session_ids = [s.session_id for s in listed]
        report = MigrationReport(version, {}, [], {})
        for sid in session_ids:
            try:
                reply = yield Call("MigrateSession", pb.MigrateSessionRequest(session_id=sid, version=version),
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

    def frame(self, model: str, session_ids: list[str], x, *, open_if_missing: bool = False,
              sequence_numbers: list[int] | None = None, return_sequences: bool = False,
              timeout: float | None = None) -> Plan:
        """Step many sessions of one model with one message: x (N, F) or (N, T, F), row i for session_ids[i].

        Returns (outputs, errors): outputs (N, O), or (N, T, O) with return_sequences, with zero rows for the
        entries that failed; errors {index: StatestreamError} for those (the other entries were applied).
        open_if_missing opens the listed sessions that are not open; sequence_numbers (one per entry, 0 = none)
        make each entry exactly-once.
        """
        x = np.asarray(x, dtype=np.float32)  # the server checks the size against N and the model
        n = len(session_ids)
        req = pb.StepFrameRequest(model=model, session_ids=session_ids, inputs_raw=to_raw(x),
                                  timesteps=1 if x.ndim == 2 else x.shape[1], open_if_missing=open_if_missing,
                                  sequence_numbers=sequence_numbers or [], return_sequences=return_sequences,
                                  raw_output=True)
        reply = yield Call("StepFrame", req, timeout)
        width = (yield from ClientPlans.model(self, model)).output_size
        y = floats(reply.outputs, reply.outputs_raw).reshape(n, reply.rows, width)
        errors = {e.index: from_code(e.error.code, e.error.message) for e in reply.errors}
        return (y if return_sequences else y[:, -1]), errors

    def group(self, model: str, size: int = 0, *, session_ids: list[str] | None = None, group_id: str = "",
              idle_timeout: float = 0.0) -> Plan:
        """Open a session group: `size` new sessions (random ids) or the given `session_ids`, stepped together
        by `Group.step` with one message; each member is also an ordinary session (`Group.sessions`)."""
        reply = yield Call("OpenGroup", pb.OpenGroupRequest(model=model, size=size, session_ids=session_ids or [],
                                                            group_id=group_id, idle_timeout_seconds=idle_timeout),
                           session_id=group_id)
        return self.group_class(self, reply.group_id, list(reply.session_ids), reply.model)


class SessionPlans:
    """A session's calls as plans, and the request/result shapes its streams share."""

    def __init__(self, client, session_id: str, info: pb.ModelInfo, *, exactly_once: bool = False):
        self.client = client
        self.id = session_id
        self.info = info
        self.exactly_once = exactly_once
        self.last_sequence_number = 0  # the last acknowledged one (exactly-once mode)
        self.metadata = client.metadata + ((SESSION_HEADER, session_id),)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r}, model={self.info.name!r})"

    def _send(self, call: Call):
        return self.client._send(call)

    def _call(self, method: str, request, timeout: float | None = None, retry: bool = False) -> Call:
        return Call(method, request, timeout, self.id, retry)

    def request(self, x, return_sequences: bool, return_state: bool, sequence_number: int | None) -> pb.StepRequest:
        """The StepRequest for input x (F,) or (T, F); any other shape raises ValueError."""
        req = pb.StepRequest(session_id=self.id, input_raw=to_raw(step_input(x, self.info.features)),
                             raw_output=True, return_sequences=return_sequences, return_state=return_state)
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
             sequence_number: int | None = None, timeout: float | None = None) -> Plan:
        """Feed x: shape (F,) for one timestep or (T, F) for T of them (any other shape: ValueError).

        Returns the output like Keras: (O,) for the last timestep, (T, O) with
        return_sequences; with return_state, (output, {layer: {"h", "c"}}).
        """
        if not self.exactly_once:
            reply = yield self._call("Step", self.request(x, return_sequences, return_state, sequence_number), timeout)
            return self.result(reply, return_sequences, return_state)
        if sequence_number is not None:
            raise ValueError("an exactly_once session numbers its steps itself; do not pass sequence_number")
        seq = self.last_sequence_number + 1
        reply = yield self._call("Step", self.request(x, return_sequences, return_state, seq), timeout, retry=True)
        self.acknowledged(seq)
        return self.result(reply, return_sequences, return_state)

    def get_state(self) -> Plan:
        """The session's states (every layer), step count and last sequence number."""
        reply = yield self._call("GetState", pb.GetStateRequest(session_id=self.id, raw_output=True),
                                 retry=self.exactly_once)
        return SessionState.from_proto(reply.state)

    def set_state(self, state: SessionState | States, step_count: int | None = None,
                  last_sequence_number: int | None = None) -> Plan:
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
        st = SessionState.from_proto((yield self._call("SetState", req)).state)
        self.last_sequence_number = st.last_sequence_number
        return st

    def close(self) -> Plan:
        """Close the session; returns its step count."""
        return (yield self._call("CloseSession", pb.CloseSessionRequest(session_id=self.id))).step_count


class GroupPlans:
    """A session group's calls as plans. Its calls carry the group id as x-session-id, so a proxy keeps the
    group on one replica."""

    def __init__(self, client, group_id: str, session_ids: list[str], info: pb.ModelInfo):
        self.client = client
        self.id = group_id
        self.session_ids = session_ids
        self.info = info
        self.sessions = [client.session_class(client, sid, info) for sid in session_ids]

    def __len__(self) -> int:
        return len(self.session_ids)

    def _send(self, call: Call):
        return self.client._send(call)

    def step(self, x, masked=(), sequence_number: int | None = None, return_sequences: bool = False,
             timeout: float | None = None) -> Plan:
        """x: (N, F) for one timestep of every member, or (N, T, F). Members listed in `masked` are not
        stepped (they keep their states; their rows of the result are zero).

        Returns (N, O), or (N, T, O) with return_sequences. `sequence_number` (the group's last + 1) makes
        the step exactly-once: a retry of it returns the recorded result without stepping again."""
        n = len(self.session_ids)
        x = np.asarray(x, dtype=np.float32)  # the server checks the size against N and the model
        req = pb.StepGroupRequest(group_id=self.id, inputs_raw=to_raw(x), timesteps=1 if x.ndim == 2 else x.shape[1],
                                  masked=list(masked), return_sequences=return_sequences, raw_output=True)
        if sequence_number is not None:
            req.sequence_number = sequence_number
        reply = yield Call("StepGroup", req, timeout, self.id)
        y = floats(reply.outputs, reply.outputs_raw).reshape(n, reply.rows, self.info.output_size)
        return y if return_sequences else y[:, -1]

    def close(self, keep_sessions: bool = False) -> Plan:
        """Close the group and (unless kept) its member sessions; returns the group steps applied."""
        reply = yield Call("CloseGroup", pb.CloseGroupRequest(group_id=self.id, keep_sessions=keep_sessions),
                           session_id=self.id)
        return reply.step_count

