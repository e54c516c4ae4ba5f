"""Twin -> ONNX with tf2onnx; canonical graph I/O names and dynamic batch/time dimensions."""

from __future__ import annotations

import logging
from collections import Counter

import onnx
from onnx import helper

from statestream.contract.manifest import INPUT_NAME

from .errors import ExportError
from .twin import Twin

OPSET = 17
BATCH, TIME = "batch", "time"
#: Native recurrent ONNX ops and the Loop fallback, as counted in reports.
COUNTED_OPS = ("LSTM", "GRU", "RNN", "Loop")


def to_onnx(twin: Twin, opset: int = OPSET, native: bool = True) -> onnx.ModelProto:
    """Convert the twin; graph inputs/outputs carry exactly `twin.input_names` / `twin.output_names`.

    A chain with a GRU or SimpleRNN layer is built from its weights with native ONNX ops (native.py), unless
    `native` is False or a layer is outside what that builder maps; everything else goes through tf2onnx
    (which makes Keras LSTMs native ONNX LSTMs and GRU/SimpleRNN an ONNX Loop).
    """
    if native and any(l.cell in ("GRU", "SimpleRNN") for l in twin.layers):
        from .native import build

        model = build(twin, opset)
        if model is not None:
            return model
    import tensorflow as tf
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    sig = [tf.TensorSpec(t.shape, tf.float32, name=name) for t, name in zip(twin.model.inputs, twin.input_names)]
    try:
        model, _ = tf2onnx.convert.from_keras(twin.model, input_signature=sig, opset=opset)
    except Exception as e:  # tf2onnx raises many types; the user needs one line
        raise ExportError(f"tf2onnx could not convert the streaming twin: {type(e).__name__}: {e}".splitlines()[0]) from e
    _canonical_io(model, twin)
    canonical_names(model)
    return model


def _canonical_io(model: onnx.ModelProto, twin: Twin) -> None:
    g = model.graph
    got_in = [i.name for i in g.input]
    if got_in != twin.input_names:
        # tf2onnx keeps TensorSpec names; if a version does not, rename by position (same order as the twin).
        if len(got_in) != len(twin.input_names):
            raise ExportError(f"converted graph has inputs {got_in}, expected {twin.input_names}")
        _rename_inputs(g, dict(zip(got_in, twin.input_names)))
    if len(g.output) != len(twin.output_names):
        raise ExportError(f"converted graph has {len(g.output)} outputs, expected {len(twin.output_names)}")
    # Outputs come back in the twin's output order under tf2onnx's own names: add a named Identity each.
    new_outputs = []
    for out, name in zip(list(g.output), twin.output_names):
        if out.name == name:
            new_outputs.append(out)
            continue
        g.node.append(helper.make_node("Identity", [out.name], [name], name=f"canonical/{name}"))
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(out)
        vi.name = name
        new_outputs.append(vi)
    del g.output[:]
    g.output.extend(new_outputs)
    for vi in list(g.input) + list(g.output):
        dims = vi.type.tensor_type.shape.dim
        dims[0].dim_param = BATCH
        if vi.name in (INPUT_NAME, twin.output_names[0]):
            dims[1].dim_param = TIME


def _rename_inputs(g: onnx.GraphProto, mapping: dict) -> None:
    def walk(graph):
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name in mapping:
                    node.input[i] = mapping[name]
            for attr in node.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    walk(sub)

    walk(g)
    for vi in g.input:
        vi.name = mapping.get(vi.name, vi.name)


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many native LSTM/GRU/RNN ops and Loop ops the graph has (subgraphs included)."""
    counts: Counter = Counter()

    def walk(graph):
        for node in graph.node:
            counts[node.op_type] += 1
            for attr in node.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    walk(sub)

    walk(model.graph)
    return {op: counts.get(op, 0) for op in COUNTED_OPS}


def canonical_names(model: onnx.ModelProto) -> None:
    """Rename every node, initializer and intermediate tensor by position (graph I/O names stay).

    tf2onnx numbers generated names with process-wide counters, so the same model exported twice would
    differ byte for byte; positional names make a rebuild (e.g. of models/demo.onnx) reproducible.
    """
    g = model.graph
    keep = {vi.name for vi in g.input} | {vi.name for vi in g.output}
    _canon_graph(g, {n: n for n in keep}, "", keep_io=True, keep=keep)
    g.name = "statestream"
    dims: dict[str, str] = {}
    for vi in _all_value_infos(g):
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param.startswith("unk__"):
                d.dim_param = dims.setdefault(d.dim_param, f"d{len(dims)}")


def _subgraphs(node):
    for attr in node.attribute:
        yield from ([attr.g] if attr.HasField("g") else [])
        yield from attr.graphs


def _all_value_infos(graph):
    yield from graph.input
    yield from graph.output
    yield from graph.value_info
    for node in graph.node:
        for sub in _subgraphs(node):
            yield from _all_value_infos(sub)


def _uses(graph):
    """Tensor names in the order nodes (and their subgraphs) read them."""
    for node in graph.node:
        yield from node.input
        for sub in _subgraphs(node):
            yield from _uses(sub)


def _canon_graph(graph, visible: dict, prefix: str, keep_io: bool, keep: set) -> None:
    names = dict(visible)
    count = [0]

    def fresh(old: str, kind: str) -> str:
        if not old or (keep_io and old in keep):
            return old
        new = f"{prefix}{kind}{count[0]}"
        count[0] += 1
        names[old] = new
        return new

    if not keep_io:
        for vi in graph.input:
            vi.name = fresh(vi.name, "in")
    # tf2onnx orders initializers by counter-numbered names: order them by first use instead.
    first = {}
    for name in _uses(graph):
        first.setdefault(name, len(first))
    inits = sorted(graph.initializer, key=lambda t: (first.get(t.name, len(first)), t.SerializeToString()))
    inits = [onnx.TensorProto.FromString(t.SerializeToString()) for t in inits]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    for init in graph.initializer:
        init.name = fresh(init.name, "w")
    for i, node in enumerate(graph.node):
        node.name = f"{prefix}{node.op_type}_{i}"
        for j, name in enumerate(node.input):
            node.input[j] = names.get(name, name)
        for attr in node.attribute:
            subs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
            for k, sub in enumerate(subs):
                sub.name = f"{node.name}.{attr.name}{k}"
                _canon_graph(sub, names, f"{sub.name}/", keep_io=False, keep=keep)
        for j, name in enumerate(node.output):
            node.output[j] = fresh(name, "t")
    for vi in graph.output:
        vi.name = names.get(vi.name, vi.name)
    for vi in graph.value_info:
        vi.name = names.get(vi.name, vi.name)
