"""VAD for many microphones: Silero VAD served by statestream, one session per microphone, one message per 32 ms tick.

Adopt silero-vad's ONNX file once, serve it, run this (synthetic microphones: noise and speech-like bursts):

    pip install --no-deps silero-vad==6.2.3        # its wheel ships silero_vad/data/silero_vad.onnx (no torch needed)
    statestream-export adopt "$(python -c 'from importlib.metadata import distribution as d; \
print(d("silero-vad").locate_file("silero_vad/data/silero_vad.onnx"))')" --out models/vad.onnx --features 512 --context 64
    statestream-server --models models/vad.onnx
    python examples/vad_many_microphones.py localhost:50051 --mics 50

The server keeps each microphone's LSTM state and its last 64 samples (Silero's context window), so every chunk's
probability is what silero_vad's own OnnxWrapper loop gives on that microphone's audio. A group steps all
microphones with one message and one model run; each member is also an ordinary session (GetState, SetState).
"""

import argparse

import numpy as np

from statestream.client import Client

SR, CHUNK = 16000, 512


def microphone(rng: np.random.Generator, chunks: int) -> np.ndarray:
    """Noise with one voiced burst (a harmonic series under a syllable envelope): [chunks, 512] float32."""
    n = chunks * CHUNK
    audio = 0.004 * rng.standard_normal(n)
    start, length = int(rng.uniform(0.1, 0.5) * n), int(0.4 * n)
    t = np.arange(length) / SR
    phase = 2 * np.pi * np.cumsum(rng.uniform(100, 220) * (1 + 0.08 * np.sin(2 * np.pi * 3 * t))) / SR
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    audio[start:start + length] += 0.3 * np.abs(np.sin(np.pi * 4 * t)) ** 0.7 * voiced
    return np.clip(audio, -1, 1).astype(np.float32).reshape(chunks, CHUNK)


def segments(probs: np.ndarray, on: float = 0.5, off: float = 0.35) -> list[tuple[float, float]]:
    """Speech segments (start, end seconds) from per-chunk probabilities, with hysteresis."""
    out, start = [], None
    for i, p in enumerate(probs):
        if start is None and p >= on:
            start = i
        elif start is not None and p < off:
            out.append((start * CHUNK / SR, i * CHUNK / SR))
            start = None
    if start is not None:
        out.append((start * CHUNK / SR, len(probs) * CHUNK / SR))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("target", nargs="?", default="localhost:50051")
    p.add_argument("--model", default="vad")
    p.add_argument("--mics", type=int, default=50)
    p.add_argument("--seconds", type=float, default=3.0)
    args = p.parse_args()
    chunks = int(args.seconds * SR / CHUNK)
    rng = np.random.default_rng(0)
    audio = np.stack([microphone(rng, chunks) for _ in range(args.mics)])   # [mics, chunks, 512]
    probs = np.zeros((args.mics, chunks), np.float32)
    with Client(args.target) as client, client.group(args.model, args.mics) as mics:
        for t in range(chunks):                       # one 32 ms tick: a chunk from every microphone
            probs[:, t] = mics.step(audio[:, t])[:, 0]
    for i in range(args.mics):
        found = ", ".join(f"{a:.2f}-{b:.2f} s" for a, b in segments(probs[i])) or "none"
        print(f"mic {i:3d}: speech {found}")


if __name__ == "__main__":
    main()
