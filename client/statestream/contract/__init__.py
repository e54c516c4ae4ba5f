"""The shared contract of client, server and export: the error family, the model manifest, Triton config."""
