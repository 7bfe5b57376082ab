"""Configuration: target files, YAML with file:line positions, facts from the driver's uapi header."""
