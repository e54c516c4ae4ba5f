"""The streaming twin: the user's model rebuilt with every state as an input and an output."""

from __future__ import annotations

from dataclasses import dataclass

import keras

from statestream.contract.manifest import CELL_STATES, INPUT_NAME, OUTPUT_NAME, Layer, state_in_name, state_out_name

from .errors import ExportRefused

L = keras.layers

#: Recurrent layers the exporter streams, by exact class (subclasses may change `call`).
CELLS = {L.LSTM: "LSTM", L.GRU: "GRU", L.SimpleRNN: "SimpleRNN"}
#: Per-timestep layers: applied to [batch, time, x] they act on each step alone.
PER_STEP = (L.Dense, L.Activation, L.ReLU, L.LeakyReLU, L.ELU, L.Softmax)
#: Identity at inference: left out of the twin.
NO_OPS = (L.Dropout, L.GaussianNoise, L.GaussianDropout, L.AlphaDropout, L.SpatialDropout1D)
SUPPORTED = "LSTM, GRU, SimpleRNN, Dense, TimeDistributed(Dense), Activation, Dropout"

_CAUSAL = "which a one-step-at-a-time stream cannot reproduce"
# Checked in order (ConvLSTM is an RNN subclass, so convolutions come before the generic RNN).
_REFUSALS = [
    (("Bidirectional",), "runs a second RNN backwards, so each step's output depends on future steps; "
     "it cannot stream causally"),
    (("Masking",), f"masks timesteps by value (padding), {_CAUSAL}; remove the Masking layer for serving"),
    (("Embedding",), f"is not supported by statestream-export (supported: {SUPPORTED})"),
    (("Conv1D", "Conv2D", "Conv3D", "SeparableConv1D", "DepthwiseConv1D", "Conv1DTranspose",
      "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D"), f"convolves over a window of timesteps, {_CAUSAL}"),
    (("MaxPooling1D", "AveragePooling1D", "GlobalMaxPooling1D", "GlobalAveragePooling1D"),
     f"pools across timesteps, {_CAUSAL}"),
    (("Attention", "AdditiveAttention", "MultiHeadAttention", "GroupQueryAttention"),
     f"attends across timesteps (needs the whole sequence), {_CAUSAL}"),
    (("RNN",), "is a generic keras.layers.RNN around a cell; use the LSTM, GRU or SimpleRNN layer"),
]


@dataclass
class Twin:
    """The twin model and what the manifest needs to know about it."""

    model: keras.Model  # inputs [input, state_in...]; outputs [output, state_out...]
    original: keras.Model
    chain: list  # the original's layers, input to output (no-ops included)
    layers: tuple[Layer, ...]
    features: int
    output_size: int
    input_names: list[str]
    output_names: list[str]
    original_batch: int | None  # fixed batch size of the original (stateful models), else None
    original_time: int | None  # fixed sequence length of the original, else None
    original_output_map: list[int]  # for each original output: 0 = main output, k = k-th state


def _refusal(layer) -> str | None:
    if type(layer) in CELLS:
        return None
    for names, reason in _REFUSALS:
        if any(isinstance(layer, c) for c in (getattr(L, n, None) for n in names) if c is not None):
            return reason
    return None


def _check_layer(layer) -> str:
    """Kind of a layer in the chain ('recurrent', 'per_step', 'no_op'), or refuse it."""
    if type(layer) in CELLS:
        if layer.go_backwards:
            raise ExportRefused("go_backwards=True reads the sequence from its end; it cannot stream causally", layer)
        return "recurrent"
    if isinstance(layer, NO_OPS):
        return "no_op"
    if isinstance(layer, L.Softmax) and layer.axis not in (-1, [-1]):
        raise ExportRefused(f"softmax over axis {layer.axis} mixes timesteps; only axis -1 streams", layer)
    if isinstance(layer, PER_STEP):
        return "per_step"
    if isinstance(layer, L.TimeDistributed):
        inner = layer.layer
        if isinstance(inner, NO_OPS):
            return "no_op"
        if isinstance(inner, PER_STEP):
            return "per_step"
        raise ExportRefused(f"wraps {type(inner).__name__} {inner.name!r}; TimeDistributed supports Dense, "
                            "Activation and Dropout", layer)
    reason = _refusal(layer)
    raise ExportRefused(reason or f"is not supported by statestream-export (supported: {SUPPORTED})", layer)


def _refuse_upstream(node) -> None:
    """Raise the refusal of the first refused layer found upstream of `node`, if any."""
    seen, todo = set(), list(node.parent_nodes)
    while todo:
        n = todo.pop(0)
        if id(n) in seen:
            continue
        seen.add(id(n))
        reason = _refusal(n.operation)
        if reason:
            raise ExportRefused(reason, n.operation)
        todo += n.parent_nodes


def _flatten(layer) -> list:
    return chain_of(layer) if isinstance(layer, keras.Model) else [layer]


def _refuse_subclassed(model) -> None:
    if not isinstance(model, keras.Sequential) and not hasattr(model, "_nodes_by_depth"):
        raise ExportRefused(f"model {model.name!r} is a subclassed keras.Model ({type(model).__name__}); its "
                            "call() cannot be read: build it as a Sequential or functional model")


def chain_of(model) -> list:
    """The model's layers from input to output; refuse anything that is not one chain."""
    _refuse_subclassed(model)
    if isinstance(model, keras.Sequential):
        return [x for layer in model.layers for x in _flatten(layer)]
    if len(model.inputs) != 1:
        raise ExportRefused(f"model {model.name!r} has {len(model.inputs)} inputs; statestream streams models "
                            "with one input [batch, time, features]")
    ends = {(id(t._keras_history.operation), t._keras_history.node_index) for t in model.outputs}
    if len(ends) != 1:
        raise ExportRefused(f"model {model.name!r} has outputs from several layers; statestream streams one "
                            "chain of layers with one output (plus the last layer's states)")
    hist = model.outputs[0]._keras_history
    node = hist.operation._inbound_nodes[hist.node_index]
    layers = []
    while not isinstance(node.operation, L.InputLayer):
        op = node.operation
        reason = _refusal(op)  # before the input count: attention layers take several inputs
        if reason:
            raise ExportRefused(reason, op)
        ins = node.input_tensors
        if len(ins) != 1:
            _refuse_upstream(node)  # e.g. a Masking layer feeds a mask tensor alongside the data
            raise ExportRefused(f"takes {len(ins)} inputs (a merge or an explicit initial_state); only one chain "
                                "of layers from input to output can be streamed", op)
        h = ins[0]._keras_history
        if h.tensor_index != 0:
            raise ExportRefused(f"is fed output #{h.tensor_index} (a state) of layer {h.operation.name!r}; only "
                                "the main output can feed the next layer", op)
        layers.append(op)
        node = h.operation._inbound_nodes[h.node_index]
    layers.reverse()
    on_path = {id(x) for x in layers}
    for x in model.layers:
        if not isinstance(x, L.InputLayer) and id(x) not in on_path:
            raise ExportRefused(f"is off the path from input to output in model {model.name!r}; only one chain of "
                                "layers can be streamed", x)
    return [x for layer in layers for x in _flatten(layer)]


def _input_shape(model) -> tuple:
    try:
        return tuple(model.inputs[0].shape)
    except (AttributeError, ValueError, IndexError, TypeError):
        raise ExportRefused(f"model {model.name!r} is not built: give it a keras.Input(shape=(time, features)) "
                            "or call it once on data") from None


def _clone(layer, **overrides):
    cfg = layer.get_config()
    cfg.update(overrides)
    return type(layer).from_config(cfg)


def build_twin(model) -> Twin:
    """Rebuild `model` as a functional streaming twin with the same weights.

    Every recurrent layer gets `return_sequences=True`, `return_state=True`, `stateful=False` and its
    initial states as model inputs; per-timestep heads are applied to every step; no-ops are dropped.
    """
    if not isinstance(model, keras.Model):
        raise ExportRefused(f"expected a keras.Model, got {type(model).__name__}")
    _refuse_subclassed(model)
    shape = _input_shape(model)
    if len(shape) != 3 or shape[-1] is None:
        raise ExportRefused(f"model {model.name!r} takes input of shape {shape}; statestream streams "
                            "[batch, time, features] with a known feature count")
    chain = chain_of(model)
    kinds = [_check_layer(layer) for layer in chain]
    if "recurrent" not in kinds:
        raise ExportRefused(f"model {model.name!r} has no LSTM, GRU or SimpleRNN layer: nothing to stream")
    names = [layer.name for layer, k in zip(chain, kinds) if k == "recurrent"]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ExportRefused(f"recurrent layer name {dup[0]!r} occurs twice (nested models?); state names "
                            "must be unique: rename the layers")

    features = int(shape[-1])
    x = keras.Input(shape=(None, features), name=INPUT_NAME, dtype="float32")
    inputs, state_outs, layers, pending = [x], [], [], []
    y = x
    for layer, kind in zip(chain, kinds):
        if kind == "no_op":
            continue
        if kind == "recurrent":
            cell = CELLS[type(layer)]
            new = _clone(layer, return_sequences=True, return_state=True, stateful=False, go_backwards=False,
                         unroll=False, dropout=0.0, recurrent_dropout=0.0)
            s_in = [keras.Input(shape=(layer.units,), name=state_in_name(layer.name, k), dtype="float32")
                    for k in CELL_STATES[cell]]
            y, *s_out = new(y, initial_state=s_in if len(s_in) > 1 else s_in[0])
            inputs += s_in
            state_outs += s_out
            layers.append(Layer(layer.name, cell, int(layer.units)))
        else:
            # TimeDistributed(Dense) is Dense on the last axis; unwrapped, tf2onnx emits a MatMul, not a Loop.
            layer = layer.layer if isinstance(layer, L.TimeDistributed) else layer
            new = _clone(layer)
            y = new(y)
        pending.append((new, layer))
    for new, layer in pending:
        new.set_weights(layer.get_weights())

    twin = keras.Model(inputs, [y] + state_outs, name=f"{model.name}_streaming")
    out_map = _output_map(model, chain, kinds)
    return Twin(
        model=twin, original=model, chain=chain, layers=tuple(layers), features=features,
        output_size=int(y.shape[-1]), input_names=[t.name for t in inputs],
        output_names=[OUTPUT_NAME] + [state_out_name(l.name, k) for l in layers for k in l.state_names],
        original_batch=shape[0], original_time=shape[1], original_output_map=out_map,
    )


def _output_map(model, chain, kinds) -> list[int]:
    """Which of the last layer's outputs each of the original model's outputs is (0 = main, k = state k)."""
    outs = model.outputs if hasattr(model, "_nodes_by_depth") else None
    if outs is None:
        last = chain[-1]
        n = 1 + (len(CELL_STATES[CELLS[type(last)]]) if kinds[-1] == "recurrent" and last.return_state else 0)
        return list(range(n))
    return [t._keras_history.tensor_index for t in outs]
