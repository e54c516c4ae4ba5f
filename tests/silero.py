"""Silero VAD for the tests: the files the silero-vad wheel ships, synthetic microphones, and its reference loop.

silero-vad 6.2.3 is installed with --no-deps (Makefile: its wheel requires torch, which the tests do not need):
its package cannot be imported (utils_vad.py imports torch), so its data files are found through the
distribution's metadata, and `OnnxWrapperLoop` below is `silero_vad.utils_vad.OnnxWrapper.__call__` with numpy
in place of torch, line by line. tests/data/silero_vad_onnxwrapper.npz holds what the real OnnxWrapper (with
torch) output on the same audio (scripts/silero_onnxwrapper_reference.py), and the tests check the mirror
against it.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import numpy as np

VERSION = "6.2.3"
SR, CHUNK, CONTEXT = 16000, 512, 64
STREAMS, CHUNKS = 50, 48
RECORDED = Path(__file__).parent / "data" / "silero_vad_onnxwrapper.npz"


def model_file(name: str = "silero_vad.onnx") -> Path:
    """A model file from the installed silero-vad wheel (the pinned version)."""
    dist = metadata.distribution("silero-vad")
    assert dist.version == VERSION, f"silero-vad {dist.version} is installed; the tests pin {VERSION} (make install-dev)"
    path = Path(dist.locate_file(f"silero_vad/data/{name}"))
    assert path.is_file(), f"{path} is not in the silero-vad wheel"
    return path


def microphone(seed: int, chunks: int = CHUNKS) -> np.ndarray:
    """`chunks` x 512 samples of 16 kHz float32 audio: a noise floor and speech-like bursts (a voiced harmonic
    series with a wandering pitch under a syllable-rate envelope), at a place that depends on the seed."""
    rng = np.random.default_rng(seed)
    n = chunks * CHUNK
    t = np.arange(n) / SR
    audio = 0.004 * rng.standard_normal(n)
    start = int(rng.uniform(0.1, 0.5) * n)
    length = int(rng.uniform(0.3, 0.45) * n)
    seg = t[: length] - t[0]
    f0 = rng.uniform(100, 220) * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(2, 5) * seg))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = np.abs(np.sin(np.pi * rng.uniform(3, 6) * seg)) ** 0.7 * np.minimum(1, seg / 0.02)
    audio[start: start + length] += rng.uniform(0.15, 0.4) * envelope * voiced + 0.02 * rng.standard_normal(length)
    return np.clip(audio, -1, 1).astype(np.float32).reshape(chunks, CHUNK)


def microphones(streams: int = STREAMS, chunks: int = CHUNKS) -> np.ndarray:
    """[streams, chunks, 512] float32: one synthetic microphone per stream (seeds 0..streams-1)."""
    return np.stack([microphone(i, chunks) for i in range(streams)])


def audio_sha256(audio: np.ndarray) -> str:
    """The audio's identity (float32 little-endian bytes), recorded with the reference outputs."""
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(audio, "<f4").tobytes()).hexdigest()


class OnnxWrapperLoop:
    """silero_vad.utils_vad.OnnxWrapper (6.2.3), numpy for torch, one stream at a time at 16 kHz.

    Mirrors __init__ (one intra-op and inter-op thread, CPU), reset_states, and __call__: the state starts as
    zeros (2, batch, 128); the context as zeros (batch, 64) on the first call; each call concatenates
    [context, x] along dim 1, runs {'input', 'state', 'sr': int64}, keeps `stateN` as the next state and the
    last 64 samples of the concatenated input as the next context, and returns `output`.
    """

    def __init__(self, path):
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"], sess_options=opts)
        self.reset_states()

    def reset_states(self, batch_size=1):
        self._state = np.zeros((2, batch_size, 128), dtype=np.float32)
        self._context = np.zeros(0, dtype=np.float32)
        self._last_sr = 0
        self._last_batch_size = 0

    def __call__(self, x, sr: int = SR):
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 1:
            x = x[None]
        num_samples = 512 if sr == 16000 else 256
        if x.shape[-1] != num_samples:
            raise ValueError(f"Provided number of samples is {x.shape[-1]}")
        batch_size = x.shape[0]
        context_size = 64 if sr == 16000 else 32
        if not self._last_batch_size:
            self.reset_states(batch_size)
        if (self._last_sr) and (self._last_sr != sr):
            self.reset_states(batch_size)
        if (self._last_batch_size) and (self._last_batch_size != batch_size):
            self.reset_states(batch_size)
        if not len(self._context):
            self._context = np.zeros((batch_size, context_size), dtype=np.float32)
        x = np.concatenate([self._context, x], axis=1)
        ort_inputs = {"input": x, "state": self._state, "sr": np.array(sr, dtype="int64")}
        out, state = self.session.run(None, ort_inputs)
        self._state = state
        self._context = x[..., -context_size:]
        self._last_sr = sr
        self._last_batch_size = batch_size
        return out


def reference(audio: np.ndarray, path=None) -> np.ndarray:
    """[streams, chunks] speech probabilities: each stream through its own OnnxWrapperLoop, chunk by chunk."""
    path = path or model_file()
    out = np.zeros(audio.shape[:2], np.float32)
    for i, stream in enumerate(audio):
        vad = OnnxWrapperLoop(path)
        for t, chunk in enumerate(stream):
            out[i, t] = vad(chunk)[0, 0]
    return out
