"""statestream benchmarks: ghz scenarios against the server and its ceilings (`make bench`)."""
