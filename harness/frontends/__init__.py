"""Front ends: the CLI, the interactive `boot`, and the pytest plugin. They call the public run API only."""
