"""The model's floor at the wire: the echo server plus the model, run on each session's state row, and nothing else.

What any Python engine on this transport has to do for a step: parse the request, find the session's state row,
run the model on it (the server's own `ModelRunner`: the rows graph, I/O binding for small runs), write the new
row back and answer with the real outputs. No sequence numbers (exactly-once), no finite checks, no
deadlines, no metrics, no owners, no store, no bounds: a session is created by its first step. Batching only where
the server's own measurements say it pays: the steps of concurrent streams share a model run (queued for one loop
turn); a lone stream's steps and unary steps run at once.
It runs on the event loop the server runs on (`--loop`, auto: uvloop when installed, as statestream-server), so
its rate against the null server's is the most a server of this design (CPython, grpc.aio, onnxruntime, its event
loop) can reach with this model on this machine; the real server's rate against the floor's is what its engine
costs.

    python -m bench.floor_server --port 0 --model models/demo.onnx
"""

from __future__ import annotations

import asyncio
import sys

import numpy as np

from statestream.server.app import loops
from statestream.server.engine.model import ModelRunner
from statestream.v1 import statestream_pb2 as pb

from .cli import parser
from .echo_server import EchoService, run


class Rows:
    """State rows and step counts of sessions (one row each) and of groups (a block each), created on first sight;
    the slots of a frame's id list are kept by the ids joined (the real server's FrameIndex, without its checks)."""

    def __init__(self, width: int):
        self.rows = np.zeros((1024, width), dtype=np.float32)
        self.steps = np.zeros(1024, dtype=np.uint64)
        self.used = 0
        self.slot: dict[str, int] = {}
        self.block: dict[str, tuple[int, int]] = {}
        self.frames: dict[str, np.ndarray | slice] = {}

    def _take(self, n: int) -> int:
        if self.used + n > len(self.rows):
            size = 2 * (self.used + n)
            rows, steps = np.zeros((size, self.rows.shape[1]), dtype=np.float32), np.zeros(size, dtype=np.uint64)
            rows[:self.used], steps[:self.used] = self.rows[:self.used], self.steps[:self.used]
            self.rows, self.steps = rows, steps
        start, self.used = self.used, self.used + n
        return start

    def of(self, sid: str) -> int:
        slot = self.slot.get(sid)
        if slot is None:
            slot = self.slot[sid] = self._take(1)
        return slot

    def of_group(self, gid: str, n: int) -> int:
        found = self.block.get(gid)
        if found is None:
            found = self.block[gid] = (self._take(n), n)
        if found[1] != n:
            raise ValueError(f"group {gid!r} has {found[1]} rows, the request {n}")
        return found[0]

    def of_frame(self, ids: list[str]) -> np.ndarray | slice:
        """The slots of a frame's sessions: a slice when they sit in consecutive rows in its order (a frame whose
        sessions were created by it), so its rows are a view as a group's."""
        key = "\x00".join(ids)
        slots = self.frames.get(key)
        if slots is None:
            slots = np.fromiter((self.of(s) for s in ids), dtype=np.int64, count=len(ids))
            if (np.diff(slots) == 1).all():
                slots = slice(int(slots[0]), int(slots[0]) + len(ids))
            self.frames[key] = slots
        return slots


class FloorService(EchoService):
    """The echo server's service with the model run for real on each session's (or group's) state rows."""

    def __init__(self, runner: ModelRunner):
        super().__init__(runner.features, runner.output_size)
        self.runner = runner
        self.state = Rows(runner.state_width)
        self._queue: list[tuple[pb.StepRequest, asyncio.Future]] = []  # stream steps waiting for one loop turn
        self._streams = 0  # streams open

    def _x(self, floats, raw: bytes, n: int, T: int | None = None) -> np.ndarray:
        x = np.frombuffer(raw, dtype=np.float32) if raw else np.asarray(floats, dtype=np.float32)
        return x.reshape(n, T or -1, self.features)

    def _answer(self, msg, name: str, y: np.ndarray, rows: int, raw: bool):
        y = y[:, -rows:]
        if raw:
            setattr(msg, f"{name}_raw", y.tobytes())
        else:
            getattr(msg, name).extend(y.ravel().tolist())
        return msg

    def _step(self, req: pb.StepRequest) -> pb.StepResponse:
        x = self._x(req.input, req.input_raw, 1)
        slot = self.state.of(req.session_id)
        rows = self.state.rows
        y, new = self.runner.run(x, rows[slot:slot + 1])
        rows[slot] = new[0]
        return self._stepped(req, slot, y)

    def _stepped(self, req: pb.StepRequest, slot: int, y: np.ndarray) -> pb.StepResponse:
        """The answer to a step run with outputs y [1, T, O]; the session's step count moves on by T."""
        T = y.shape[1]
        count = int(self.state.steps[slot]) + T
        self.state.steps[slot] = count
        n_rows = T if req.return_sequences else 1
        return self._answer(pb.StepResponse(session_id=req.session_id, rows=n_rows, step_count=count), "output", y,
                            n_rows, req.raw_output)

    async def _queued(self, req: pb.StepRequest) -> pb.StepResponse:
        """A stream's step while other streams are open: queued for one loop turn, so the steps of streams that
        arrive together share one model run (the server's batcher does the same)."""
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((req, fut))
        if len(self._queue) == 1:
            asyncio.get_running_loop().call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        queue, self._queue = self._queue, []
        xs = [self._x(req.input, req.input_raw, 1) for req, _ in queue]
        slots = np.array([self.state.of(req.session_id) for req, _ in queue])
        if len(set(slots.tolist())) < len(slots) or len({x.shape for x in xs}) > 1:  # not one run: one by one
            for req, fut in queue:
                if not fut.done():  # its stream may be gone
                    fut.set_result(self._step(req))
            return
        rows = self.state.rows
        y, new = self.runner.run(np.concatenate(xs), rows[slots])
        rows[slots] = new
        for i, (req, fut) in enumerate(queue):
            answer = self._stepped(req, int(slots[i]), y[i:i + 1])
            if not fut.done():
                fut.set_result(answer)

    async def StreamSteps(self, request_iterator, context):
        self._streams += 1
        try:
            async for req in request_iterator:
                step = self._step(req.step) if self._streams == 1 else await self._queued(req.step)
                yield pb.StreamStepsResponse(step=step, session_id=req.step.session_id)
        finally:
            self._streams -= 1

    def _frame(self, req: pb.StepFrameRequest) -> pb.StepFrameResponse:
        ids = list(req.session_ids)
        T = req.timesteps or 1
        x = self._x(req.inputs, req.inputs_raw, len(ids), T)
        state = self.state
        slots = state.of_frame(ids)
        rows = state.rows
        y, new = self.runner.run(x, rows[slots])
        rows[slots] = new
        steps = state.steps[slots] + T
        state.steps[slots] = steps
        n_rows = T if req.return_sequences else 1
        return self._answer(pb.StepFrameResponse(rows=n_rows, step_counts=steps.tolist()), "outputs", y, n_rows,
                            req.raw_output)

    def _group(self, req: pb.StepGroupRequest) -> pb.StepGroupResponse:
        T = req.timesteps or 1
        n = (len(req.inputs) or len(req.inputs_raw) // 4) // (T * self.features)
        x = self._x(req.inputs, req.inputs_raw, n, T)
        a = self.state.of_group(req.group_id, n)
        rows = self.state.rows
        y, new = self.runner.run(x, rows[a:a + n])
        rows[a:a + n] = new
        count = self.counts.get(req.group_id, 0) + 1
        self.counts[req.group_id] = count
        n_rows = T if req.return_sequences else 1
        return self._answer(pb.StepGroupResponse(group_id=req.group_id, rows=n_rows, step_count=count), "outputs", y,
                            n_rows, req.raw_output)


def main(argv: list[str] | None = None) -> int:
    p = parser("floor_server", __doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--model", required=True, help="the .onnx model to run (its manifest, as the server loads it)")
    p.add_argument("--loop", choices=loops.LOOPS, default="auto",
                   help="the event loop, as statestream-server's --loop (auto: uvloop when installed, as the server)")
    a = p.parse_args(argv)
    return run(FloorService(ModelRunner(a.model)), a.host, a.port, "floor-server", a.loop)


if __name__ == "__main__":
    sys.exit(main())
