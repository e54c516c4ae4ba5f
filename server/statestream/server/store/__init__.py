"""statestream server: store layer."""
