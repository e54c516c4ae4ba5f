"""statestream server: app layer."""
