"""Malformed statestream requests as hypothesis strategies, each with the status codes DESIGN.md allows for it.

A case starts from a request that would be valid on a bystander session and gets one or more defects; with one
defect exactly one code is right, with several the server may report any one of them (no precedence is assumed).
"""

from __future__ import annotations

import math
import struct

import grpc
from google.protobuf.message import DecodeError
from hypothesis import strategies as st

from statestream.v1 import statestream_pb2 as pb

C = grpc.StatusCode
OK, INVALID, NOT_FOUND, EXISTS, PRECOND = C.OK, C.INVALID_ARGUMENT, C.NOT_FOUND, C.ALREADY_EXISTS, C.FAILED_PRECONDITION
F, UNITS, LAYERS, MAX_T = 3, 16, ("lstm1", "lstm2"), 32  # the demo model; --max-timesteps
INT64 = (-2**63, 2**63 - 1)
REQUESTS = {"ListModels": pb.ListModelsRequest, "GetModel": pb.GetModelRequest, "OpenSession": pb.OpenSessionRequest,
            "CloseSession": pb.CloseSessionRequest, "GetState": pb.GetStateRequest, "SetState": pb.SetStateRequest,
            "Step": pb.StepRequest, "StepFrame": pb.StepFrameRequest}
# Bystanders: id -> (timesteps stepped, sequence numbers used 1..K). Set up once, then only ever hit by bad requests.
BYSTANDERS = {"bystander-seq": (3, 3), "bystander-plain": (4, 0), "bystander-é😀 ünï": (1, 1),
              "bystander-set": (None, 41), "bystander-init": (0, 0)}
CANARY = "canary"
KNOWN = set(BYSTANDERS) | {CANARY}


def id_ok(sid: str) -> bool:
    """The server's rule for client-chosen ids: 1..128 UTF-8 bytes, printable."""
    return 0 < len(sid.encode()) <= 128 and sid.isprintable()


# -- strategies -----------------------------------------------------------------------------------------------

ODD_IDS = ["\x00", "a\x00b", "\u200b", "\ufeff", "\u202eevil", "a\nb", "\t", "\x7f", "\U000e0001", "\u0301", " ",
           "é" * 64, "é" * 65, "😀" * 32, "😀" * 33, "../../etc/passwd", "%s%n", "' OR 1=1 --", "\\", "Ω≈ç√∫"]
any_text = st.text(st.characters(codec="utf-8"), max_size=24)
printable = st.text(st.characters(codec="utf-8", categories=["L", "M", "N", "P", "S"]) | st.just(" "), min_size=1,
                    max_size=24)
nonprintable = st.characters(codec="utf-8", categories=["Cc", "Cf", "Co", "Cn", "Zl", "Zp"]) | st.sampled_from(
    "\u00a0\u2003\u3000")
fresh_ids = (st.sampled_from([s for s in ODD_IDS if id_ok(s)]) | printable).filter(lambda s: s not in KNOWN)
# Ids the server must refuse to open: not printable, or over 128 bytes. Kept under ~1 KiB: longer ones are echoed
# into the status message and overflow grpc's metadata limit (a server bug reported with issue 5).
bad_ids = (st.sampled_from([s for s in ODD_IDS if not id_ok(s)])
           | st.builds(lambda a, c, b: a + c + b, st.just("") | printable, nonprintable, st.just("") | printable)
           | st.text(st.characters(codec="utf-8", categories=["L", "N", "S"]), min_size=129, max_size=300)
           | st.integers(129, 1024).map(lambda n: "x" * n))
model_names = (st.sampled_from(["", "Demo", "demo ", "demo\x00", "nope", "../models/demo"]) | any_text).filter(
    lambda s: s != "demo")
finite = st.floats(-10, 10, width=32)
NON_FINITE = [math.nan, math.inf, -math.inf, -math.nan, struct.unpack("<f", b"\x01\x00\x80\x7f")[0]]


def values(draw, n: int) -> list[float]:
    return draw(st.lists(finite, min_size=n, max_size=n))


def poison(draw, xs: list[float]) -> list[float]:
    xs = list(xs)
    for _ in range(draw(st.integers(1, 3))):
        xs[draw(st.integers(0, len(xs) - 1))] = draw(st.sampled_from(NON_FINITE))
    return xs


def bad_seq(draw, K: int, zero_means_unset: bool = False) -> int:
    """A sequence number a session at K must refuse (neither K+1 nor a replay of K)."""
    v = draw(st.sampled_from([*INT64, -1, 0, K + 2, K + 3, 2**62]) | st.integers(*INT64))
    if v == K + 1 or (v == K and K > 0) or (zero_means_unset and v == 0):
        v = K + 2
    return v


def seq_code(v: int) -> C:
    return INVALID if v <= 0 or v > 2**62 else PRECOND  # beyond 2^62: out of range


def good_layers(draw) -> list[pb.LayerState]:
    return [pb.LayerState(layer=l, h=values(draw, UNITS), c=values(draw, UNITS)) for l in LAYERS]


def break_layers(draw, layers: list[pb.LayerState]) -> list[pb.LayerState]:
    """Exactly one thing wrong with a full set of layer states; every one is INVALID_ARGUMENT."""
    layers = [pb.LayerState(layer=l.layer, h=l.h, c=l.c) for l in layers]
    i = draw(st.integers(0, len(layers) - 1))
    kind = draw(st.sampled_from(["h_size", "c_size", "no_c", "missing", "unknown", "twice", "non_finite", "none"]))
    if kind in ("h_size", "c_size"):
        n = draw(st.sampled_from([0, 1, UNITS - 1, UNITS + 1, 4 * UNITS]))
        getattr(layers[i], kind[0])[:] = values(draw, n)
    elif kind == "no_c":
        del layers[i].c[:]
    elif kind == "missing":
        del layers[i]
    elif kind == "unknown":
        layers.append(pb.LayerState(layer=draw(any_text.filter(lambda s: s not in LAYERS)), h=values(draw, UNITS),
                                    c=values(draw, UNITS)))
    elif kind == "twice":
        layers.append(pb.LayerState(layer=layers[i].layer, h=layers[i].h, c=layers[i].c))
    elif kind == "non_finite":
        part = draw(st.sampled_from("hc"))
        getattr(layers[i], part)[:] = poison(draw, list(getattr(layers[i], part)))
    else:
        layers = []
    return layers


def apply_id(draw, kind: str, oim: bool) -> tuple[str, C]:
    """A session id that is wrong in way `kind`, and the code it earns (with or without open_if_missing)."""
    if kind == "empty":
        return "", INVALID
    if kind == "unknown":
        return draw(fresh_ids), NOT_FOUND
    return draw(bad_ids), INVALID if oim else NOT_FOUND


@st.composite
def step_cases(draw):
    """(StepRequest, allowed codes): a request that would be valid on a bystander, with 1-3 defects.

    One defect has exactly one right code; with several, the server may report any one of them."""
    sid = draw(st.sampled_from(sorted(BYSTANDERS)))
    K = BYSTANDERS[sid][1]
    T = draw(st.integers(1, 4))
    req = pb.StepRequest(session_id=sid, input=values(draw, T * F), return_sequences=draw(st.booleans()),
                         return_state=draw(st.booleans()))
    if draw(st.booleans()):
        req.sequence_number = K + 1
    oim = draw(st.booleans())
    req.open_if_missing, req.model = oim, "demo" if oim or draw(st.booleans()) else ""
    defects = draw(st.lists(st.sampled_from(["id", "model", "input", "seq"]), min_size=1, max_size=3, unique=True))
    allowed = set()
    if "id" in defects:
        kind = draw(st.sampled_from(["empty", "unknown", "bad"]))
        if kind == "unknown":  # open_if_missing would open it: that is a valid request, so not here
            req.open_if_missing = False
        req.session_id, code = apply_id(draw, kind, req.open_if_missing)
        allowed.add(code)
    if "model" in defects:  # without open_if_missing an empty model means "any": not a defect
        req.model = draw(model_names if req.open_if_missing else model_names.filter(bool))
        if req.session_id in BYSTANDERS:
            allowed.add(INVALID)        # the session is on another model
        elif req.open_if_missing:
            allowed.add(INVALID if not req.model else NOT_FOUND)  # needs a model / unknown model
    if "input" in defects:
        kind = draw(st.sampled_from(["size", "long", "non_finite"]))
        if kind == "size":
            n = draw(st.integers(0, 3 * MAX_T).filter(lambda n: n == 0 or n % F))
            req.input[:] = values(draw, n)
        elif kind == "long":
            req.input[:] = [0.5] * F * draw(st.integers(MAX_T + 1, 4 * MAX_T))
        else:
            req.input[:] = poison(draw, list(req.input))
        allowed.add(INVALID)
    if "seq" in defects:
        req.sequence_number = bad_seq(draw, K)
        allowed.add(seq_code(req.sequence_number))
    return req, allowed


@st.composite
def set_state_cases(draw):
    sid = draw(st.sampled_from(sorted(BYSTANDERS)))
    req = pb.SetStateRequest(session_id=sid, layers=good_layers(draw))
    if draw(st.booleans()):
        req.step_count = draw(st.integers(0, 2**64 - 1))
    if draw(st.booleans()):
        req.last_sequence_number = draw(st.integers(0, INT64[1]))
    defects = draw(st.lists(st.sampled_from(["id", "layers", "last_seq"]), min_size=1, unique=True))
    allowed = set()
    if "id" in defects:
        req.session_id, code = apply_id(draw, draw(st.sampled_from(["empty", "unknown", "bad"])), False)
        allowed.add(code)
    if "layers" in defects:
        layers = break_layers(draw, list(req.layers))
        del req.layers[:]
        req.layers.extend(layers)
        allowed.add(INVALID)
    if "last_seq" in defects:
        req.last_sequence_number = draw(st.integers(INT64[0], -1))
        allowed.add(INVALID)
    return req, allowed


@st.composite
def open_cases(draw):
    req = pb.OpenSessionRequest(model="demo", session_id=draw(st.just("") | fresh_ids))
    if draw(st.booleans()):
        req.initial_states.extend(good_layers(draw))
    req.idle_timeout_seconds = draw(st.sampled_from([0.0, 0.5, 60.0, 3600.0]))
    defects = draw(st.lists(st.sampled_from(["model", "id", "states", "timeout"]), min_size=1, unique=True))
    allowed = set()
    if "model" in defects:
        req.model = draw(model_names)
        allowed.add(NOT_FOUND)
    if "id" in defects:
        if draw(st.booleans()):
            req.session_id = draw(st.sampled_from(sorted(KNOWN)))
            allowed.add(EXISTS)
        else:
            req.session_id = draw(bad_ids)
            allowed.add(INVALID)
    if "states" in defects:
        layers = break_layers(draw, list(req.initial_states) or good_layers(draw))
        del req.initial_states[:]
        req.initial_states.extend(layers)
        if not req.initial_states:  # empty means "zero states": not a defect
            req.initial_states.append(pb.LayerState(layer="lstm1", h=[0.0] * UNITS, c=[0.0] * UNITS))
        allowed.add(INVALID)
    if "timeout" in defects:
        req.idle_timeout_seconds = draw(st.sampled_from([-1.0, -1e-9, math.nan, math.inf, -math.inf, 1e9, 1e308]))
        allowed.add(INVALID)
    return req, allowed


@st.composite
def lookup_cases(draw):
    """GetState / CloseSession / GetModel naming nothing that exists."""
    method = draw(st.sampled_from(["GetState", "CloseSession", "GetModel"]))
    if method == "GetModel":
        return method, pb.GetModelRequest(name=draw(model_names)), {NOT_FOUND}
    sid, code = apply_id(draw, draw(st.sampled_from(["empty", "unknown", "bad"])), False)
    return method, REQUESTS[method](session_id=sid), {code}


@st.composite
def frame_cases(draw):
    """(StepFrameRequest, frame-level allowed codes or None, per-entry allowed codes (None: the valid canary entry)).

    Entries: bystanders with NaN or a refused sequence number, unknown/empty/bad ids, duplicates, at most one
    valid canary entry. Frame-level defects refuse the whole frame."""
    T = draw(st.integers(1, 3))
    oim = draw(st.booleans())
    ids, xs, seqs, entry = [], [], [], []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["nan", "seq", "unknown", "empty", "bad", "dup", "canary"]))
        if kind == "canary" and CANARY in ids or kind == "dup" and not ids:
            kind = "empty"
        x, seq = values(draw, T * F), 0
        if kind in ("nan", "seq"):
            sid = draw(st.sampled_from(sorted(BYSTANDERS)))
            K = BYSTANDERS[sid][1]
            if kind == "nan":
                x, seq, code = poison(draw, x), draw(st.sampled_from([0, K + 1])), INVALID
            else:
                seq = bad_seq(draw, K, zero_means_unset=True)
                code = seq_code(seq)
        elif kind == "unknown":
            sid, code = draw(fresh_ids), NOT_FOUND
            if oim:  # would be opened: only with a NaN, which must refuse it before anything is opened
                x, code = poison(draw, x), INVALID
        elif kind in ("empty", "bad"):
            sid, code = apply_id(draw, kind, oim)
        elif kind == "dup":
            sid, code = draw(st.sampled_from(ids)), INVALID
        else:
            sid, code = CANARY, None
        if sid in ids and kind != "dup":
            sid, code = "", INVALID  # "" twice is also refused (as empty or as a duplicate)
        ids.append(sid), xs.extend(x), seqs.append(seq), entry.append(None if code is None else {code})
    req = pb.StepFrameRequest(model="demo", session_ids=ids, inputs=xs, timesteps=T if T > 1 or draw(st.booleans())
                              else 0, return_sequences=draw(st.booleans()), return_state=draw(st.booleans()),
                              open_if_missing=oim, sequence_numbers=seqs if any(seqs) or draw(st.booleans()) else [])
    frame = set()
    for defect in draw(st.lists(st.sampled_from(["model", "no_ids", "inputs", "long", "seqs"]), max_size=2,
                                unique=True)):
        if defect == "model":
            req.model = draw(model_names)
            frame.add(NOT_FOUND)
        elif defect == "no_ids":
            del req.session_ids[:]
            frame.add(INVALID)
        elif defect == "inputs":
            k = draw(st.integers(1, 2 * F)) * draw(st.sampled_from([-1, 1]))
            req.inputs[:] = list(req.inputs)[:k] if k < 0 else list(req.inputs) + [0.0] * k
            frame.add(INVALID)
        elif defect == "long":
            req.timesteps = draw(st.integers(MAX_T + 1, 2**32 - 1))
            frame.add(INVALID)
        else:
            req.sequence_numbers[:] = [0] * draw(st.integers(1, 8).filter(lambda k: k != len(ids)))
            frame.add(INVALID)
    return req, frame or None, entry


def _varint(n: int) -> bytes:
    out = b""
    while True:
        out += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            return out


@st.composite
def garbage(draw):
    """Bytes for a method: random, surely corrupt (bad tag / truncated), or a valid message with a non-UTF-8 id."""
    method = draw(st.sampled_from(sorted(REQUESTS)))
    kind = draw(st.sampled_from(["random", "corrupt", "utf8"]))
    if kind == "random":
        data = draw(st.binary(max_size=600))
    elif kind == "corrupt":  # field number 0, wire types 6/7, a length running past the end, an endless varint
        data = draw(st.sampled_from([b"\x00", b"\x07", b"\x0e", b"\x0f", b"\x0a\x7f", b"\x08\xff\xff\xff"]))
        data = draw(st.binary(max_size=64)) + data if draw(st.booleans()) and data != b"\x0a\x7f" else data
    else:
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"a\x80b"]))
        field = 2 if method == "StepFrame" else 1  # session_id / name / model, a string in every request
        good = {"Step": pb.StepRequest(input=[0.1, 0.2, 0.3]).SerializeToString()}.get(method, b"")
        data = b"\x0a" + _varint(len(bad)) + bad + good if field == 1 else b"\x12" + _varint(len(bad)) + bad
        if method == "ListModels":  # no fields: unknown bytes are skipped, so corrupt the wire format instead
            data = b"\x0a\x7f" + bad
    return method, data


def parses(method: str, data: bytes) -> bool:
    try:
        REQUESTS[method].FromString(data)
        return True
    except DecodeError:
        return False
