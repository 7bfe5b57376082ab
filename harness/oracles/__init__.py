"""Oracles: pure parsers of console, dmesg and cma_test text, and pure checks. No I/O, no state but arguments."""
