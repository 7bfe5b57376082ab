"""The kernel's lines as the console delivered them, each tagged with the step that was running."""

from __future__ import annotations

import re


class KernelLog:
    """Kernel lines from the console, each tagged with the step that was running."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []  # (step, line)

    def since(self, mark: int) -> list[str]:
        return [line for _, line in self.lines[mark:]]

    @property
    def mark(self) -> int:
        return len(self.lines)

    def latest_time(self) -> float:
        """The printk timestamp of the newest kernel line seen (0 if none)."""
        for _, line in reversed(self.lines):
            m = re.match(r"^\[\s*(\d+\.\d+)\]", line)
            if m:
                return float(m.group(1))
        return 0.0
