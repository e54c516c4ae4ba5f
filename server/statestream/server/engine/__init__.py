"""statestream server: engine layer."""
