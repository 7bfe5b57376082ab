"""Guest: QEMU, its console, the guest's /init and every guest-side shell snippet, and the transports into it."""
