"""The streaming twin built straight from its layers' weights as native ONNX LSTM/GRU/RNN ops (no tf2onnx, no Loop).

tf2onnx 1.17 turns Keras 3 GRU and SimpleRNN layers into an ONNX Loop; ONNX has GRU and RNN ops (onnxruntime runs
them natively). For a chain with a GRU or SimpleRNN layer the exporter emits the graph itself: time-major inside
(ONNX's recurrent ops take [T, B, F]), one recurrent op per layer, MatMul/Add and an activation per Dense.
`build` returns None when a layer or activation is outside what it maps, and the exporter falls back to tf2onnx.
"""

from __future__ import annotations

import keras
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from statestream.contract.manifest import INPUT_NAME, OUTPUT_NAME

from .twin import CELLS, Twin

L = keras.layers
BATCH, TIME = "batch", "time"
#: Keras activation (by function name) -> ONNX recurrent-op activation, with (alpha, beta) where it has them.
RNN_ACTIVATIONS = {"tanh": ("Tanh", None), "sigmoid": ("Sigmoid", None), "relu": ("Relu", None),
                   "hard_sigmoid": ("HardSigmoid", (1 / 6, 0.5))}
#: Keras activation -> ONNX op applied per step (None: identity).
ACTIVATIONS = {"linear": None, "relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "softmax": "Softmax",
               "elu": "Elu", "selu": "Selu", "softplus": "Softplus", "softsign": "Softsign", "exponential": "Exp"}


class _Unsupported(Exception):
    pass


def _act_name(fn) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


class _Graph:
    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, kind: str) -> str:
        self.n += 1
        return f"{kind}{self.n}"

    def const(self, array, kind: str = "w") -> str:
        name = self.name(kind)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, outputs: list[str] | None = None, **attrs):
        outputs = outputs or [self.name("t") for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=f"{op_type}_{len(self.nodes)}", **attrs))
        return outputs if len(outputs) > 1 else outputs[0]


def _recurrent(g: _Graph, layer, cell: str, x: str, names: list[tuple[str, str]]) -> tuple[str, list[str]]:
    """One native op for a Keras LSTM/GRU/SimpleRNN; x is [T, B, F]; returns ([T, B, U], state outputs)."""
    acts = [_act_name(layer.recurrent_activation), _act_name(layer.activation)] if cell != "SimpleRNN" \
        else [_act_name(layer.activation)]
    if any(a not in RNN_ACTIVATIONS for a in acts):
        raise _Unsupported(f"activation {acts}")
    if cell == "LSTM":
        acts.append(acts[1])  # f (gates), g (cell input), h (cell output)
    onnx_acts = [RNN_ACTIVATIONS[a][0] for a in acts]
    alphas = [RNN_ACTIVATIONS[a][1][0] if RNN_ACTIVATIONS[a][1] else 0.0 for a in acts]
    betas = [RNN_ACTIVATIONS[a][1][1] if RNN_ACTIVATIONS[a][1] else 0.0 for a in acts]
    U = int(layer.units)
    weights = layer.get_weights()
    kernel, recurrent = weights[0], weights[1]
    bias = weights[2] if layer.use_bias else None
    attrs = {"hidden_size": U, "activations": onnx_acts}
    if any(a == "HardSigmoid" for a in onnx_acts):
        attrs.update(activation_alpha=alphas, activation_beta=betas)
    if cell == "LSTM":  # Keras gates i, f, c, o; ONNX i, o, f, c
        order = np.concatenate([np.arange(U), 3 * U + np.arange(U), U + np.arange(U), 2 * U + np.arange(U)])
        W, R = kernel[:, order].T, recurrent[:, order].T
        B = np.concatenate([bias[order] if bias is not None else np.zeros(4 * U), np.zeros(4 * U)])
    elif cell == "GRU":  # Keras and ONNX gates z, r, h; reset_after is ONNX linear_before_reset
        W, R = kernel.T, recurrent.T
        if bias is None:
            B = np.zeros(6 * U)
        elif layer.reset_after:
            B = np.concatenate([bias[0], bias[1]])
        else:
            B = np.concatenate([bias, np.zeros(3 * U)])
        attrs["linear_before_reset"] = int(bool(layer.reset_after))
    else:
        W, R = kernel.T, recurrent.T
        B = np.concatenate([bias if bias is not None else np.zeros(U), np.zeros(U)])
    f32 = np.float32
    ins = [x, g.const(W[None].astype(f32)), g.const(R[None].astype(f32)), g.const(B[None].astype(f32)), ""]
    axes0 = g.const(np.array([0], np.int64), "axes")
    ins += [g.op("Unsqueeze", [s_in, axes0]) for s_in, _ in names]
    outs = g.op({"LSTM": "LSTM", "GRU": "GRU", "SimpleRNN": "RNN"}[cell], ins, n_out=1 + len(names), **attrs)
    y = g.op("Squeeze", [outs[0], g.const(np.array([1], np.int64), "axes")])  # [T, 1, B, U] -> [T, B, U]
    for (_, s_out), o in zip(names, outs[1:]):
        g.op("Squeeze", [o, axes0], outputs=[s_out])
    return y, [s_out for _, s_out in names]


def _activation(g: _Graph, name: str, x: str) -> str:
    if name not in ACTIVATIONS:
        raise _Unsupported(f"activation {name}")
    op = ACTIVATIONS[name]
    if op is None:
        return x
    return g.op(op, [x], axis=-1) if op == "Softmax" else g.op(op, [x])


def _per_step(g: _Graph, layer, x: str) -> str:
    if isinstance(layer, L.Dense):
        kernel, *bias = layer.get_weights()
        y = g.op("MatMul", [x, g.const(kernel.astype(np.float32))])
        if bias:
            y = g.op("Add", [y, g.const(bias[0].astype(np.float32))])
        return _activation(g, _act_name(layer.activation), y)
    if isinstance(layer, L.Activation):
        return _activation(g, _act_name(layer.activation), x)
    if isinstance(layer, L.Softmax):
        return g.op("Softmax", [x], axis=-1)
    if isinstance(layer, L.ReLU) and not layer.max_value and not layer.negative_slope and not layer.threshold:
        return g.op("Relu", [x])
    if isinstance(layer, L.LeakyReLU):
        return g.op("LeakyRelu", [x], alpha=float(layer.negative_slope))
    if isinstance(layer, L.ELU):
        return g.op("Elu", [x], alpha=float(layer.alpha))
    raise _Unsupported(type(layer).__name__)


def build(twin: Twin, opset: int) -> onnx.ModelProto | None:
    """The twin as one ONNX graph with native recurrent ops (graph I/O as tf2onnx's), or None if not covered."""
    g = _Graph()
    x = g.op("Transpose", [INPUT_NAME], perm=[1, 0, 2])
    state_ins = iter(twin.input_names[1:])
    state_outs = iter(twin.output_names[1:])
    try:
        for layer in twin.model.layers:
            if isinstance(layer, L.InputLayer):
                continue
            if type(layer) in CELLS:
                cell = CELLS[type(layer)]
                n = 2 if cell == "LSTM" else 1
                names = [(next(state_ins), next(state_outs)) for _ in range(n)]
                x, _ = _recurrent(g, layer, cell, x, names)
            else:
                x = _per_step(g, layer, x)
    except _Unsupported:
        return None
    g.op("Transpose", [x], perm=[1, 0, 2], outputs=[OUTPUT_NAME])
    units = {n: int(t.shape[-1]) for n, t in zip(twin.input_names[1:], twin.model.inputs[1:])}
    inputs = [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [BATCH, TIME, twin.features])]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [BATCH, units[n]]) for n in twin.input_names[1:]]
    outputs = [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [BATCH, TIME, twin.output_size])]
    outputs += [helper.make_tensor_value_info(o, TensorProto.FLOAT, [BATCH, units[i]])
                for i, o in zip(twin.input_names[1:], twin.output_names[1:])]
    graph = helper.make_graph(g.nodes, "statestream", inputs, outputs, initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="statestream",
                              ir_version=8)
    onnx.checker.check_model(model)
    return model
