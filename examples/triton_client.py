"""tritonclient against statestream: one sequence of three timesteps (start, middle, end) on the demo model.

    python examples/triton_client.py localhost:50051      # needs: pip install "tritonclient[grpc]"
"""

import sys

import numpy as np
import tritonclient.grpc as grpcclient

client = grpcclient.InferenceServerClient(sys.argv[1] if len(sys.argv) > 1 else "localhost:50051")
for t, x in enumerate([[0.1, 0.2, 0.3], [0.2, 0.3, 0.4], [0.3, 0.4, 0.5]]):
    inp = grpcclient.InferInput("input", [1, 1, 3], "FP32")   # [one sequence, T timesteps, features]
    inp.set_data_from_numpy(np.array([[x]], dtype=np.float32))
    result = client.infer("demo", [inp], sequence_id=42, sequence_start=t == 0, sequence_end=t == 2)
    print(result.as_numpy("output")[0, -1])                   # the model's output after this timestep
