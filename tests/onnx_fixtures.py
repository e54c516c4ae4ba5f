"""Hand-built ONNX files for server tests that need a model to misbehave for real."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from statestream.contract.manifest import MANIFEST_KEY, Layer, Manifest


def fragile_model(path, features: int = 3) -> None:
    """A one-layer 'SimpleRNN' whose run fails in onnxruntime unless B*T == 1.

    output = Reshape(input, [1, 1, F]) (fails for any other batch or T), h passes through.
    """
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["B", "T", features])
    h = helper.make_tensor_value_info("state_in.rnn.h", TensorProto.FLOAT, ["B", 1])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, features])
    h_out = helper.make_tensor_value_info("state_out.rnn.h", TensorProto.FLOAT, ["B", 1])
    shape = helper.make_tensor("shape", TensorProto.INT64, [3], np.array([1, 1, features], dtype=np.int64))
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["input", "shape"], ["output"]),
         helper.make_node("Identity", ["state_in.rnn.h"], ["state_out.rnn.h"])],
        "fragile", [x, h], [y, h_out], initializer=[shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    manifest = Manifest("fragile", features, features, (Layer("rnn", "SimpleRNN", 1),))
    helper.set_model_props(model, {MANIFEST_KEY: manifest.to_json()})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def reweighted(src, dst, scale: float) -> None:
    """The model at `src` with every float weight times `scale`: the same architecture and state layout, other
    weights (a new version of a model)."""
    from onnx import numpy_helper

    model = onnx.load(str(src))
    for init in model.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype == np.float32:
            init.CopyFrom(numpy_helper.from_array((w * np.float32(scale)).astype(np.float32), init.name))
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
