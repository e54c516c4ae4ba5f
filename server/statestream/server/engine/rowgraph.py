"""The graph a plain model runs as: its state tensors fed and returned as one [B, W] block of state rows.

The slab keeps a session's states as one row (every state tensor side by side). Fed tensor by tensor, every run
cut the rows into W-wide column blocks (a strided numpy copy per tensor) and joined the new states again (one
more copy); a group step's rows, contiguous in the slab, could not be fed as they are. Here a Split after the new
input and a Concat before the new output do that inside onnxruntime, in one C++ pass each: a group step feeds a
view of its slab block, a frame its one gather, and gets one [B, W] array back (docs/performance.md, "State rows
in and out, and frames seen before").
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from statestream.contract.layout import StepLayout

ROWS_IN = "statestream.rows"       # float32 [B, W]: every state tensor of a session side by side (slab order)
ROWS_OUT = "statestream.rows_out"  # the same, after the run


def rows_graph(model: onnx.ModelProto, layout: StepLayout) -> bytes:
    """`model` (a plain graph: `layout.plain`; changed in place) with its state inputs replaced by ROWS_IN, split
    into them, and its state outputs replaced by ROWS_OUT, their concatenation; the step input and output stay."""
    graph = model.graph
    states = layout.states
    sizes = [s.size for s in states]
    ins = {s.input for s in states}
    outs = {s.output for s in states}
    kept_in = [i for i in graph.input if i.name not in ins]
    kept_init = [t for t in graph.initializer if t.name not in ins]  # a state input's default value goes too
    if len(kept_init) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(kept_init)
    kept_out = [o for o in graph.output if o.name not in outs]
    del graph.input[:]
    graph.input.extend(kept_in)
    graph.input.append(helper.make_tensor_value_info(ROWS_IN, TensorProto.FLOAT, ["B", layout.width]))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    if opset >= 13:  # Split takes its sizes as an input from opset 13 on, as an attribute before
        graph.initializer.append(helper.make_tensor(f"{ROWS_IN}.sizes", TensorProto.INT64, [len(sizes)], sizes))
        split = helper.make_node("Split", [ROWS_IN, f"{ROWS_IN}.sizes"], [s.input for s in states], axis=1)
    else:
        split = helper.make_node("Split", [ROWS_IN], [s.input for s in states], axis=1, split=sizes)
    graph.node.insert(0, split)
    graph.node.append(helper.make_node("Concat", [s.output for s in states], [ROWS_OUT], axis=1))
    del graph.output[:]
    graph.output.extend(kept_out)
    graph.output.append(helper.make_tensor_value_info(ROWS_OUT, TensorProto.FLOAT, ["B", layout.width]))
    return model.SerializeToString()
