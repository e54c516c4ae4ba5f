#!/usr/bin/env bash
# perf_analyzer (Triton's load generator; `make tools` puts it in .tools/bin) on statestream's Triton protocol:
# sequences of 20 one-timestep requests (start ... end), 4 sequences in flight. --shape gives the dynamic time
# dimension (1 timestep of 3 features). Set TARGET to host:port; extra arguments go to perf_analyzer
# (e.g. --streaming for ModelStreamInfer, -f out.csv).
set -euo pipefail
TARGET="${TARGET:-localhost:50051}"

perf_analyzer -m demo -u "$TARGET" -i grpc \
  --shape input:1,3 \
  --sequence-length 20 --sequence-id-range 1:100000 \
  --concurrency-range 4 --request-count 400 \
  "$@"
