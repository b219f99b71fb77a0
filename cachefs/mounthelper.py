"""`python -m cachefs.mounthelper`: the stable name the helpers installed on nodes run
(/sbin/mount.fuse.cachefs, docs/OPERATIONS.md); the code lives in cachefs.cli.mounthelper."""
from cachefs.cli.mounthelper import main

if __name__ == "__main__":
    raise SystemExit(main())
