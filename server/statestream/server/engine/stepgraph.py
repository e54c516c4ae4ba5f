"""The graph a plain model runs one timestep as: its small LSTM nodes replaced by their cell's own ops.

Almost every call the server answers is one timestep (a unary step, a stream's step, a frame or a group step).
onnxruntime's LSTM kernel is built for sequences: for one timestep of a small layer it costs far more than the
arithmetic. A 16-unit layer on 256 sessions took 50 us as an LSTM node and 31 us as its cell's ops (one Gemm of
[x, h] by [W; R], one Split, three Sigmoids, two Tanhs, three Muls, an Add); at 1024 sessions 174 against 97.
From 128 units on the kernel's own GEMMs dominate and the two are even (256 units: the node 5% faster), so only
layers of at most MAX_UNITS units are replaced (docs/performance.md, "One timestep as a cell's ops").

The rewrite is exact arithmetic of ONNX's LSTM definition for one step (gates i, o, f, c in that order; default
activations; no peepholes, clip, sequence lengths or coupled input-forget gate); any other LSTM node, and GRU and
SimpleRNN layers (exported as Loops), stay as they are.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MAX_UNITS = 64  # LSTM layers of at most this many units run as their cell's ops (measured above)
_DEFAULT_ACTIVATIONS = [b"Sigmoid", b"Tanh", b"Tanh"]


def step_graph(model: onnx.ModelProto, step_input: str, max_units: int = MAX_UNITS) -> bytes | None:
    """`model` (a rows graph; changed in place) for inputs of one timestep: every LSTM node of at most `max_units`
    units that can be (see the module's doc) replaced by its cell's ops, the step input's time axis fixed at 1.
    None when no node was replaced (the model runs one timestep as it runs many) or the graph's opset is older
    than 13."""
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    if opset < 13:  # Squeeze, Unsqueeze and Split take their axes and sizes as inputs from opset 13 on
        return None
    inits = {t.name: t for t in graph.initializer}
    step = next(i for i in graph.input if i.name == step_input)
    time = step.type.tensor_type.shape.dim[1]
    if time.HasField("dim_value") and time.dim_value != 1:
        return None  # a graph for a fixed number of timesteps
    nodes, replaced = [], 0
    for k, node in enumerate(graph.node):
        cell = _cell(node, inits, f"statestream.step{k}", max_units) if node.op_type == "LSTM" else None
        if cell is None:
            nodes.append(node)
            continue
        ops, weights = cell
        nodes.extend(ops)
        graph.initializer.extend(weights)
        replaced += 1
    if not replaced:
        return None
    del graph.node[:]
    graph.node.extend(nodes)
    _fold_squeezes(graph)
    used = _used(graph)
    kept = [t for t in graph.initializer if t.name in used]  # the replaced nodes' weights go
    del graph.initializer[:]
    graph.initializer.extend(kept)
    time.Clear()
    time.dim_value = 1
    return model.SerializeToString()


def _fold_squeezes(graph: onnx.GraphProto) -> None:
    """Drop the axis shuffling between the cells: a Squeeze of an Unsqueeze on the same constant axes reads the
    Unsqueeze's input instead (an exported layer unsqueezes its states for the LSTM node and squeezes its outputs,
    and the cells squeeze and unsqueeze them back), then nodes nothing reads go. Each node is a kernel launch: the
    demo's one-timestep graph runs 39 kernels instead of 59 (its rows graph 25), which makes it as cheap as the
    rows graph for one session and cheaper from a few on, also when the core was idle before the run."""
    axes = {t.name: tuple(numpy_helper.to_array(t).tolist()) for t in graph.initializer
            if t.data_type == TensorProto.INT64 and len(t.dims) == 1}
    outputs = {o.name for o in graph.output}
    inner = _used(graph, subgraphs_only=True)  # names a subgraph reads stay as they are
    producer, alias = {}, {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
        src = producer.get(node.input[0]) if node.op_type == "Squeeze" and len(node.input) == 2 else None
        if (src is not None and src.op_type == "Unsqueeze" and len(src.input) == 2 and src.input[1] in axes
                and axes.get(node.input[1]) == axes[src.input[1]] and not {node.output[0]} & (outputs | inner)):
            alias[node.output[0]] = src.input[0]
        for name in node.output:
            producer[name] = node
    while True:  # nodes none of whose outputs is read
        used = _used(graph)
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            return
        for n in dead:
            graph.node.remove(n)


def _used(graph: onnx.GraphProto, subgraphs_only: bool = False) -> set[str]:
    """Every name the graph's nodes read, also inside subgraphs (a Loop's body reads outer initializers), and its
    outputs."""
    names = set() if subgraphs_only else {o.name for o in graph.output}
    for node in graph.node:
        if not subgraphs_only:
            names.update(node.input)
        for a in node.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                names |= _used(sub)
    return names


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _cell(node: onnx.NodeProto, inits: dict, p: str, max_units: int) -> tuple[list, list] | None:
    """The ops and initializers of one timestep of this LSTM node, or None if it must stay a node."""
    a = _attrs(node)
    ins = list(node.input) + [""] * (8 - len(node.input))
    x, w, r, b, lens, h0, c0, peep = ins[:8]
    if (a.get("direction", b"forward") != b"forward" or a.get("activations", _DEFAULT_ACTIVATIONS) !=
            _DEFAULT_ACTIVATIONS or "clip" in a or a.get("input_forget", 0) or a.get("layout", 0) or lens or peep
            or not (h0 and c0) or w not in inits or r not in inits or (b and b not in inits)):
        return None
    W, R = numpy_helper.to_array(inits[w])[0], numpy_helper.to_array(inits[r])[0]  # [4H, F], [4H, H]
    H = R.shape[1]
    if H > max_units or W.dtype != np.float32:
        return None
    bias = numpy_helper.to_array(inits[b])[0].reshape(2, 4 * H).sum(axis=0) if b else np.zeros(4 * H, np.float32)
    weights = [numpy_helper.from_array(np.concatenate([W, R], axis=1).T.copy(), f"{p}.wr"),  # [F + H, 4H]
               numpy_helper.from_array(bias.astype(np.float32), f"{p}.b"),
               helper.make_tensor(f"{p}.axis0", TensorProto.INT64, [1], [0]),
               helper.make_tensor(f"{p}.axis1", TensorProto.INT64, [1], [1]),
               helper.make_tensor(f"{p}.gates", TensorProto.INT64, [4], [H] * 4)]
    y, y_h, y_c = (list(node.output) + ["", "", ""])[:3]
    op = helper.make_node
    ops = [op("Squeeze", [x, f"{p}.axis0"], [f"{p}.x"]),  # [1, B, F] -> [B, F]
           op("Squeeze", [h0, f"{p}.axis0"], [f"{p}.h0"]),
           op("Squeeze", [c0, f"{p}.axis0"], [f"{p}.c0"]),
           op("Concat", [f"{p}.x", f"{p}.h0"], [f"{p}.xh"], axis=1),
           op("Gemm", [f"{p}.xh", f"{p}.wr", f"{p}.b"], [f"{p}.g"]),
           op("Split", [f"{p}.g", f"{p}.gates"], [f"{p}.gi", f"{p}.go", f"{p}.gf", f"{p}.gc"], axis=1),
           op("Sigmoid", [f"{p}.gi"], [f"{p}.i"]),
           op("Sigmoid", [f"{p}.go"], [f"{p}.o"]),
           op("Sigmoid", [f"{p}.gf"], [f"{p}.f"]),
           op("Tanh", [f"{p}.gc"], [f"{p}.cc"]),
           op("Mul", [f"{p}.f", f"{p}.c0"], [f"{p}.fc"]),
           op("Mul", [f"{p}.i", f"{p}.cc"], [f"{p}.ic"]),
           op("Add", [f"{p}.fc", f"{p}.ic"], [f"{p}.c"]),
           op("Tanh", [f"{p}.c"], [f"{p}.tc"]),
           op("Mul", [f"{p}.o", f"{p}.tc"], [f"{p}.h"])]
    h1 = y_h or f"{p}.h1"  # [directions=1, B, H]
    if y or y_h:
        ops.append(op("Unsqueeze", [f"{p}.h", f"{p}.axis0"], [h1]))
    if y:  # [T=1, directions=1, B, H]: a Squeeze of its time axis (the next layer's input) is h1 again
        ops.append(op("Unsqueeze", [h1, f"{p}.axis1"], [y]))
    if y_c:
        ops.append(op("Unsqueeze", [f"{p}.c", f"{p}.axis0"], [y_c]))
    return ops, weights
