"""Kernel providers (Debian's packaged kernels are in ../debian.py) and their registry.

- `source` (source.py): builds a kernel from Debian's linux-source package with
  a committed base config plus fragments (configs/kernels/), cached by a hash
  of source package, merged config and toolchain.
- `local` (local.py): the user's own kernel image and build tree.
- vermagic.py: the module/kernel match checked before boot, for every provider.

Pick one with `harness.artifacts.kernels.registry.kernel_provider(target, cache)`.
"""
