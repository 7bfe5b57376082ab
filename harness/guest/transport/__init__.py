"""Ways to run commands in the guest: the serial console and (later) SSH share one interface."""

from harness.guest.transport.base import CommandResult, Transport

__all__ = ["CommandResult", "Transport"]
