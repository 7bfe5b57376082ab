"""Artifacts: what the guest boots (Debian packages and their lock, kernels, builds, initramfs), cached by content."""
