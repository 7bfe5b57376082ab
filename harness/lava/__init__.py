"""LAVA: scenarios as LAVA jobs (export, device dictionary) and LAVA job logs as ordinary run directories (import)."""
