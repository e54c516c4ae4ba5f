"""statestream server: api layer."""
