"""cma-harness: QEMU-based ARM integration tests for the cma_mem CMA driver."""

__version__ = "0.1.0"
