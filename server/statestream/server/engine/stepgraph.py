"""The graph a plain model runs one timestep as: its small LSTM, GRU and RNN nodes replaced by their cells' ops.

Almost every call the server answers is one timestep (a unary step, a stream's step, a frame or a group step).
onnxruntime's recurrent kernels are built for sequences: for one timestep of a small layer they cost far more than
the arithmetic. One layer of 16 units on 256 sessions (`python -m bench.stepgraph`, docs/performance.md, "Views
folded"): an LSTM node 50 us, its cell's ops 31 (a Gemm of [x, h] by [W_k; R_k] per gate, which onnxruntime fuses
with the gate's Sigmoid or Tanh, three Muls, an Add, a Tanh); a GRU node 61, its ops 26; an RNN node 37, its ops
13. From 128 units on the LSTM kernel's own GEMMs dominate and the two are even, so the limit is MAX_UNITS per
kind.

The rewrite is exact arithmetic of ONNX's definitions for one step (LSTM gates i, o, f, c; GRU z, r, h, with or
without linear_before_reset; default activations, an RNN's Tanh, Relu or Sigmoid; no peepholes, clip, sequence
lengths or coupled input-forget gate; forward only); any other node stays as it is.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MAX_UNITS = {"LSTM": 64, "GRU": 256, "RNN": 256}  # layers of at most this many units run as their cell's ops
_CELLS = ("LSTM", "GRU", "RNN")
_LSTM_ACTIVATIONS = [b"Sigmoid", b"Tanh", b"Tanh"]
_GRU_ACTIVATIONS = [b"Sigmoid", b"Tanh"]


def step_graph(model: onnx.ModelProto, step_input: str, max_units: dict[str, int] = MAX_UNITS,
               fold: bool = True) -> bytes | None:
    """`model` (a rows graph; changed in place) for inputs of one timestep: every LSTM, GRU or RNN node of at most
    `max_units[kind]` units that can be (see the module's doc) replaced by its cell's ops, the step input's time
    axis fixed at 1, and (`fold`) the views between them folded, serialized. None when no node was replaced (the
    model runs one timestep as it runs many) or the graph's opset is older than 13."""
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    if opset < 13:  # Squeeze, Unsqueeze and Split take their axes and sizes as inputs from opset 13 on
        return None
    inits = {t.name: t for t in graph.initializer}
    step = next(i for i in graph.input if i.name == step_input)
    time = step.type.tensor_type.shape.dim[1]
    if time.HasField("dim_value") and time.dim_value != 1:
        return None  # a graph for a fixed number of timesteps
    nodes, replaced = [], False
    for k, node in enumerate(graph.node):
        cell = _cell(node, inits, f"statestream.step{k}", max_units) if node.op_type in _CELLS else None
        if cell is None:
            nodes.append(node)
            continue
        ops, weights = cell
        nodes.extend(ops)
        graph.initializer.extend(weights)
        replaced = True
    if not replaced:
        return None
    del graph.node[:]
    graph.node.extend(nodes)
    time.Clear()
    time.dim_value = 1
    if fold:
        _fold_views(model)
    used = _used(graph)
    kept = [t for t in graph.initializer if t.name in used]  # the replaced nodes' weights go
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model.SerializeToString()


_VIEWS = ("Squeeze", "Unsqueeze", "Reshape", "Flatten", "Identity", "Transpose")


def _fold_views(model: onnx.ModelProto) -> None:
    """Fold the graph's views of one tensor: every Squeeze, Unsqueeze, Reshape, Flatten, Identity, and Transpose that
    only moves axes of size 1 (with the time axis fixed at 1, an exported layer's [B, T, F] <-> [T, B, F]), whose
    output shape is known up to one dimension (ONNX shape inference, with the values of shape computations), views
    the tensor its chain of views starts from directly (`_view`: one Squeeze, Unsqueeze or Reshape to constants); a
    view of that tensor's own shape is that tensor. Then the nodes nothing reads go: the Squeeze/Unsqueeze pairs
    between an exported layer and its cell, a Keras Dense head's Transpose, and the Shape, Cast, Gather and Concat
    nodes that computed its Reshape's [B, T, O]. Each node is a kernel launch: the demo's one-timestep graph runs
    26 kernels, 56 unfolded (its rows graph 26; `python -m bench.stepgraph`). Shape inference failing leaves the
    graph as it is."""
    graph = model.graph
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
    except Exception:  # onnx raises its own types; the graph runs as it is
        return
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    constants = set(shapes)
    for vi in (*inferred.value_info, *inferred.input, *inferred.output):
        if vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None
                                    for d in vi.type.tensor_type.shape.dim)
    keep = {o.name for o in graph.output} | _used(graph, subgraphs_only=True)  # names a subgraph reads stay too
    roots, alias, nodes = {}, {}, []
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
        out = node.output[0]
        shape = shapes.get(out)
        if (node.op_type not in _VIEWS or len(node.output) != 1 or shape is None or shape.count(None) > 1
                or 0 in shape or (node.op_type == "Transpose" and not _moves_ones(node, shapes.get(node.input[0])))):
            nodes.append(node)
            continue
        root = roots[out] = roots.get(node.input[0], node.input[0])
        if shapes.get(root) == shape and out not in keep:
            alias[out] = root
            continue
        if root == node.input[0] and node.op_type != "Transpose" and not (
                node.op_type == "Reshape" and node.input[1] not in constants):  # a view of no view, by constants
            nodes.append(node)
            continue
        nodes.append(_view(graph, root, shapes.get(root), out, shape))
    del graph.node[:]
    graph.node.extend(nodes)
    _output_in_place(graph, keep)
    while True:  # nodes none of whose outputs is read
        used = _used(graph)
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            return
        for n in dead:
            graph.node.remove(n)


def _view(graph: onnx.GraphProto, src: str, have: tuple | None, out: str, want: tuple) -> onnx.NodeProto:
    """`out` = tensor `src` of shape `have` viewed as `want`: a Squeeze or Unsqueeze when only axes of size 1 differ
    (onnxruntime runs those on the input's buffer, also a graph input's), else a Reshape to constants."""
    for op, a, b in (("Squeeze", have, want), ("Unsqueeze", want, have)):
        axes = _ones_between(a, b)
        if axes is not None:
            graph.initializer.append(helper.make_tensor(f"{out}.axes", TensorProto.INT64, [len(axes)], axes))
            return helper.make_node(op, [src, f"{out}.axes"], [out])
    graph.initializer.append(helper.make_tensor(f"{out}.shape", TensorProto.INT64, [len(want)],
                                                [-1 if d is None else d for d in want]))
    return helper.make_node("Reshape", [src, f"{out}.shape"], [out])


def _ones_between(longer: tuple | None, shorter: tuple | None) -> list[int] | None:
    """The axes of size 1 of `longer` that, removed, leave `shorter` (`longer` with at most one unknown dimension);
    None if there are none such, or a shape is not known."""
    if longer is None or shorter is None or len(longer) <= len(shorter) or longer.count(None) > 1:
        return None
    axes, j = [], 0
    for i, d in enumerate(longer):
        if j < len(shorter) and d == shorter[j]:
            j += 1
        elif d == 1:
            axes.append(i)
        else:
            return None
    return axes if j == len(shorter) else None


def _output_in_place(graph: onnx.GraphProto, keep: set[str]) -> None:
    """An Identity that copies a node's output into a graph output goes: that node writes the graph output."""
    producer = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    for node in list(graph.node):
        src = node.input[0] if node.op_type == "Identity" else None
        if src not in producer or node.output[0] not in outputs or src in keep:
            continue
        target = node.output[0]
        graph.node.remove(node)
        for n in graph.node:
            n.output[:] = [target if o == src else o for o in n.output]
            n.input[:] = [target if i == src else i for i in n.input]


def _moves_ones(node: onnx.NodeProto, shape: tuple | None) -> bool:
    """Does this Transpose keep the order of its input's axes that are not (known to be) of size 1?"""
    if shape is None:
        return False
    perm = _attrs(node).get("perm") or list(range(len(shape)))[::-1]
    moved = [p for p in perm if shape[p] != 1]
    return moved == sorted(moved)


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


def _cell(node: onnx.NodeProto, inits: dict, p: str, max_units: dict[str, int]) -> tuple[list, list] | None:
    """The ops and initializers of one timestep of this LSTM, GRU or RNN node, or None if it must stay a node."""
    kind = node.op_type
    a = _attrs(node)
    ins = list(node.input) + [""] * (8 - len(node.input))
    x, w, r, b, lens, h0 = ins[:6]
    if (a.get("direction", b"forward") != b"forward" or "clip" in a or a.get("layout", 0) or lens or not h0
            or w not in inits or r not in inits or (b and b not in inits) or "activation_alpha" in a):
        return None
    W, R = numpy_helper.to_array(inits[w])[0], numpy_helper.to_array(inits[r])[0]  # [G*H, F], [G*H, H]
    H = R.shape[1]
    if H > max_units[kind] or W.dtype != np.float32:
        return None
    wb, rb = numpy_helper.to_array(inits[b])[0].reshape(2, -1) if b else np.zeros((2, len(W)), np.float32)
    weights = [helper.make_tensor(f"{p}.axis0", TensorProto.INT64, [1], [0]),
               helper.make_tensor(f"{p}.axis1", TensorProto.INT64, [1], [1])]
    ops = [helper.make_node("Squeeze", [x, f"{p}.axis0"], [f"{p}.x"]),  # [1, B, F] -> [B, F]
           helper.make_node("Squeeze", [h0, f"{p}.axis0"], [f"{p}.h0"])]
    if kind == "LSTM":
        c0, peep = ins[6:8]
        if a.get("activations", _LSTM_ACTIVATIONS) != _LSTM_ACTIVATIONS or a.get("input_forget", 0) or peep or not c0:
            return None
        ops.append(helper.make_node("Squeeze", [c0, f"{p}.axis0"], [f"{p}.c0"]))
        _lstm(ops, weights, p, W, R, wb + rb)
    elif kind == "GRU":
        if a.get("activations", _GRU_ACTIVATIONS) != _GRU_ACTIVATIONS:
            return None
        _gru(ops, weights, p, W, R, wb, rb, H, bool(a.get("linear_before_reset", 0)))
    else:
        act = a.get("activations", [b"Tanh"])
        if len(act) != 1 or act[0] not in (b"Tanh", b"Relu", b"Sigmoid"):
            return None
        _gemm(ops, weights, f"{p}.x", f"{p}.h0", W, R, wb + rb, [f"{p}.g"], p)
        ops.append(helper.make_node(act[0].decode(), [f"{p}.g"], [f"{p}.h"]))
    y, y_h, y_c = (list(node.output) + ["", "", ""])[:3]
    h1 = y_h or f"{p}.h1"  # [directions=1, B, H]
    if y or y_h:
        ops.append(helper.make_node("Unsqueeze", [f"{p}.h", f"{p}.axis0"], [h1]))
    if y:  # [T=1, directions=1, B, H]: a Squeeze of its time axis (the next layer's input) is h1 again
        ops.append(helper.make_node("Unsqueeze", [h1, f"{p}.axis1"], [y]))
    if y_c:
        ops.append(helper.make_node("Unsqueeze", [f"{p}.c", f"{p}.axis0"], [y_c]))
    return ops, weights


def _gemm(ops: list, weights: list, x: str, h: str, W: np.ndarray, R: np.ndarray, bias: np.ndarray, outs: list[str],
          p: str) -> None:
    """outs[k] = [x, h] @ [W_k; R_k]^T + bias_k, with W, R and bias cut into len(outs) equal blocks of rows (an
    LSTM's four gates): one Concat of the inputs and one Gemm per block. Four Gemms beat one Gemm and a Split of
    its output (onnxruntime's Split copies row by row): 1.02-1.38x per LSTM layer of 16 to 128 units, 1.07-1.12x
    for the served demo, the same numbers bit for bit (docs/performance.md, "Views folded")."""
    WR = np.concatenate([W, R], axis=1)  # [G*H, F + H]
    size = len(WR) // len(outs)
    ops.append(helper.make_node("Concat", [x, h], [f"{p}.xh"], axis=1))
    for k, out in enumerate(outs):
        rows = slice(k * size, (k + 1) * size)
        weights += [numpy_helper.from_array(WR[rows].T.copy(), f"{p}.wr{k}"),  # [F + H, size]
                    numpy_helper.from_array(bias[rows].astype(np.float32), f"{p}.b{k}")]
        ops.append(helper.make_node("Gemm", [f"{p}.xh", f"{p}.wr{k}", f"{p}.b{k}"], [out]))


def _lstm(ops: list, weights: list, p: str, W, R, bias) -> None:
    """ONNX's LSTM, one step: gates i, o, f, c; c' = f*c + i*tanh(gc); h' = o*tanh(c')."""
    op = helper.make_node
    _gemm(ops, weights, f"{p}.x", f"{p}.h0", W, R, bias, [f"{p}.gi", f"{p}.go", f"{p}.gf", f"{p}.gc"], p)
    ops += [op("Sigmoid", [f"{p}.gi"], [f"{p}.i"]),
            op("Sigmoid", [f"{p}.go"], [f"{p}.o"]),
            op("Sigmoid", [f"{p}.gf"], [f"{p}.f"]),
            op("Tanh", [f"{p}.gc"], [f"{p}.cc"]),
            op("Mul", [f"{p}.f", f"{p}.c0"], [f"{p}.fc"]),
            op("Mul", [f"{p}.i", f"{p}.cc"], [f"{p}.ic"]),
            op("Add", [f"{p}.fc", f"{p}.ic"], [f"{p}.c"]),
            op("Tanh", [f"{p}.c"], [f"{p}.tc"]),
            op("Mul", [f"{p}.o", f"{p}.tc"], [f"{p}.h"])]


def _gru(ops: list, weights: list, p: str, W, R, wb, rb, H: int, linear_before_reset: bool) -> None:
    """ONNX's GRU, one step: gates z, r, h; n = tanh(x Wh + Wbh + r * (h Rh + Rbh)) with linear_before_reset (Keras's
    reset_after), tanh(x Wh + (r * h) Rh + Wbh + Rbh) without; h' = n + z * (h - n). z and r: one Gemm of [x, h]
    each (onnxruntime fuses each with its Sigmoid); n's parts of x and of h (or of r * h) one Gemm each."""
    op = helper.make_node
    zr, n = slice(0, 2 * H), slice(2 * H, 3 * H)
    _gemm(ops, weights, f"{p}.x", f"{p}.h0", W[zr], R[zr], (wb + rb)[zr], [f"{p}.gz", f"{p}.gr"], p)
    weights += [numpy_helper.from_array(W[n].T.copy(), f"{p}.wn"),
                numpy_helper.from_array(wb[n].astype(np.float32), f"{p}.wbn"),
                numpy_helper.from_array(R[n].T.copy(), f"{p}.rn"),
                numpy_helper.from_array(rb[n].astype(np.float32), f"{p}.rbn")]
    ops += [op("Sigmoid", [f"{p}.gz"], [f"{p}.z"]),
            op("Sigmoid", [f"{p}.gr"], [f"{p}.r_"]),
            op("Gemm", [f"{p}.x", f"{p}.wn", f"{p}.wbn"], [f"{p}.xn"])]
    if linear_before_reset:
        ops += [op("Gemm", [f"{p}.h0", f"{p}.rn", f"{p}.rbn"], [f"{p}.hn"]),
                op("Mul", [f"{p}.r_", f"{p}.hn"], [f"{p}.rhn"])]
    else:
        ops += [op("Mul", [f"{p}.r_", f"{p}.h0"], [f"{p}.rh"]),
                op("Gemm", [f"{p}.rh", f"{p}.rn", f"{p}.rbn"], [f"{p}.rhn"])]
    ops += [op("Add", [f"{p}.xn", f"{p}.rhn"], [f"{p}.gn"]),
            op("Tanh", [f"{p}.gn"], [f"{p}.n"]),
            op("Sub", [f"{p}.h0", f"{p}.n"], [f"{p}.hmn"]),
            op("Mul", [f"{p}.z", f"{p}.hmn"], [f"{p}.zd"]),
            op("Add", [f"{p}.n", f"{p}.zd"], [f"{p}.h"])]
