"""The command line: `cachefs mount|umount|flush|stats|warmup|...` (main), the mount helper, CSI."""
