"""Client and Session: step a server-side recurrent state with numpy in, numpy out."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterable, Iterator

import grpc
import numpy as np

from statestream.v1 import statestream_pb2 as pb
from statestream.v1 import statestream_pb2_grpc as pb_grpc

from .errors import from_code, from_rpc_error

States = dict[str, dict[str, np.ndarray]]  # {layer: {"h": [units], "c": [units]}}


def _translate(fn):
    """gRPC errors leave this library as the StatestreamError family."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    return wrapper


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


class Client:
    """A connection to a statestream server.

    >>> with Client("localhost:50051") as client, client.session("demo") as s:
    ...     y = s.step([0.1, 0.2, 0.3])
    """

    def __init__(self, target: str = "localhost:50051", *, timeout: float = 10.0,
                 credentials: grpc.ChannelCredentials | None = None, token: str | None = None,
                 options: list | None = None):
        opts = [("grpc.max_receive_message_length", 64 * 1024 * 1024)] + list(options or [])
        self.channel = grpc.secure_channel(target, credentials, opts) if credentials \
            else grpc.insecure_channel(target, opts)
        self.stub = pb_grpc.StateStreamServiceStub(self.channel)
        self.timeout = timeout
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def call(self, method: str, request, timeout: float | None = None):
        """One unary RPC with this client's deadline and credentials; errors translated."""
        try:
            return getattr(self.stub, method)(request, timeout=timeout or self.timeout, metadata=self.metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def models(self) -> list[pb.ModelInfo]:
        return list(self.call("ListModels", pb.ListModelsRequest()).models)

    def model(self, name: str) -> pb.ModelInfo:
        return self.call("GetModel", pb.GetModelRequest(name=name)).model

    def session(self, model: str, session_id: str = "", *, initial_states: States | None = None,
                idle_timeout: float = 0.0) -> "Session":
        """Open a session (closed when used as a context manager and left)."""
        req = pb.OpenSessionRequest(model=model, session_id=session_id, idle_timeout_seconds=idle_timeout,
                                    initial_states=states_to_proto(initial_states) if initial_states else [])
        reply = self.call("OpenSession", req)
        return Session(self, reply.session_id, reply.model)

    def attach(self, session_id: str, model: str) -> "Session":
        """A Session object for an already open session (e.g. after a restart)."""
        return Session(self, session_id, self.model(model))

    def group(self, model: str, size: int = 0, *, session_ids: list[str] | None = None, group_id: str = "",
              idle_timeout: float = 0.0) -> "Group":
        """Open a session group: `size` new sessions (random ids) or the given `session_ids`, stepped together
        by `Group.step` with one message; each member is also an ordinary session (`Group.sessions`)."""
        reply = self.call("OpenGroup", pb.OpenGroupRequest(model=model, size=size, session_ids=session_ids or [],
                                                           group_id=group_id, idle_timeout_seconds=idle_timeout))
        return Group(self, reply.group_id, list(reply.session_ids), reply.model)


class Session(_Closes):
    """One server-side session: its states stay on the server between calls."""

    def __init__(self, client: Client, session_id: str, info: pb.ModelInfo):
        self.client = client
        self.id = session_id
        self.info = info

    def __repr__(self) -> str:
        return f"Session({self.id!r}, model={self.info.name!r})"

    def _request(self, x, return_sequences: bool, return_state: bool, sequence_number: int | None) -> pb.StepRequest:
        req = pb.StepRequest(session_id=self.id, input_raw=to_raw(x), raw_output=True,
                             return_sequences=return_sequences, return_state=return_state)
        if sequence_number is not None:
            req.sequence_number = sequence_number
        return req

    def _result(self, reply: pb.StepResponse, return_sequences: bool, return_state: bool):
        y = floats(reply.output, reply.output_raw).reshape(reply.rows, self.info.output_size)
        if not return_sequences:
            y = y[-1]
        return (y, states_from_proto(reply.states)) if return_state else y

    def step(self, x, return_sequences: bool = False, return_state: bool = False,
             sequence_number: int | None = None, timeout: float | None = None):
        """Feed x: shape (F,) for one timestep or (T, F) for T of them.

        Returns the output like Keras: (O,) for the last timestep, (T, O) with
        return_sequences; with return_state, (output, {layer: {"h", "c"}}).
        """
        req = self._request(x, return_sequences, return_state, sequence_number)
        reply = self.client.call("Step", req, timeout)
        return self._result(reply, return_sequences, return_state)

    @_translate
    def stream(self, steps: Iterable, return_sequences: bool = False, return_state: bool = False,
               timeout: float | None = None) -> Iterator:
        """Stream many steps over one bidirectional call; yields one result per step, in order.

        An in-band error on one step raises that step's exception here (the
        server keeps the stream open, the session unchanged by that step).
        """
        requests = (pb.StreamStepsRequest(step=self._request(x, return_sequences, return_state, None)) for x in steps)
        replies = self.client.stub.StreamSteps(requests, timeout=timeout, metadata=self.client.metadata)
        for reply in replies:
            if reply.HasField("error"):
                replies.cancel()
                raise from_code(reply.error.code, reply.error.message)
            yield self._result(reply.step, return_sequences, return_state)

    def get_state(self) -> SessionState:
        st = self.client.call("GetState", pb.GetStateRequest(session_id=self.id, raw_output=True)).state
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
        st = self.client.call("SetState", req).state
        return SessionState(states_from_proto(st.layers), st.step_count, st.last_sequence_number, st.model,
                            st.session_id)

    def close(self) -> int:
        """Close the session; returns its step count."""
        return self.client.call("CloseSession", pb.CloseSessionRequest(session_id=self.id)).step_count


class Group(_Closes):
    """A session group: N sessions whose states the server keeps side by side, stepped by one message."""

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
        reply = self.client.call("StepGroup", req, timeout)
        y = floats(reply.outputs, reply.outputs_raw).reshape(n, reply.rows, self.info.output_size)
        return y if return_sequences else y[:, -1]

    def close(self, keep_sessions: bool = False) -> int:
        """Close the group and (unless kept) its member sessions; returns the group steps applied."""
        reply = self.client.call("CloseGroup", pb.CloseGroupRequest(group_id=self.id, keep_sessions=keep_sessions))
        return reply.step_count
