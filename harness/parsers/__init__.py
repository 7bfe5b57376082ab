"""Pure functions over console and dmesg text. No I/O, no state beyond their arguments."""
