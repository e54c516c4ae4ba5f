"""Record what silero-vad's own OnnxWrapper (with torch) outputs on the tests' synthetic microphones.

Needs a venv with torch, numpy, onnxruntime and silero-vad==6.2.3 (not the project's: torch is several GB):

    python -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch numpy onnxruntime packaging
    /tmp/torchvenv/bin/pip install --no-deps silero-vad==6.2.3
    /tmp/torchvenv/bin/python scripts/silero_onnxwrapper_reference.py     # writes tests/data/silero_vad_onnxwrapper.npz

tests/test_silero_vad.py checks its numpy mirror of OnnxWrapper (tests/silero.py) against this file.
"""

import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from silero_vad.utils_vad import OnnxWrapper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import silero  # noqa: E402

assert metadata.version("silero-vad") == silero.VERSION
audio = silero.microphones()
path = str(silero.model_file())
probs = np.zeros(audio.shape[:2], np.float32)
for i, stream in enumerate(audio):
    vad = OnnxWrapper(path, force_onnx_cpu=True)
    for t, chunk in enumerate(stream):
        probs[i, t] = vad(torch.from_numpy(chunk), silero.SR)[0, 0].item()
np.savez_compressed(silero.RECORDED, probs=probs, audio_sha256=np.array(silero.audio_sha256(audio)),
                    torch=np.array(torch.__version__), onnxruntime=np.array(metadata.version("onnxruntime")))
print(f"wrote {silero.RECORDED}: {probs.shape} probabilities, max {probs.max():.3f}, "
      f"{(probs > 0.5).mean():.0%} of chunks above 0.5")
