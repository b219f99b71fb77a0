"""`mount -t fuse.cachefs SOURCE DIR -o OPTIONS`: mount(8) runs /sbin/mount.fuse.cachefs, which is
this module. It turns `-o key=value,...` into `cachefs mount` flags, so fstab lines and systemd mount
units work like any other filesystem. Credentials never go in -o (mount options are visible to every
user in /proc/self/mountinfo and in fstab): use credentials_file=... or profile=... .
"""
from __future__ import annotations

import sys

from cachefs.config import OPTION_BY_NAME
from cachefs.errors import UserError

# Generic options mount(8) or fstab pass along that mean nothing to cachefs (nosuid/nodev by FUSE's
# defaults): accepted and ignored, like other FUSE helpers do. `ro` means --read-only.
IGNORED = {"rw", "defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group", "_netdev",
           "nofail", "suid", "nosuid", "dev", "nodev", "exec", "noexec", "async", "sync", "atime", "noatime",
           "relatime", "norelatime", "strictatime", "diratime", "nodiratime", "lazytime", "loop"}
IGNORED_PREFIXES = ("x-", "comment=", "helper=", "fsname=", "subtype=")
SECRET_WORDS = ("secret", "password", "access_key", "session_token", "token")


def translate(options: str) -> list[str]:
    """'endpoint_url=http://x,allow_other,cache=mem:1GiB' -> ['--endpoint-url', 'http://x', ...]."""
    flags: list[str] = []
    for item in filter(None, options.split(",")):
        name, has_value, value = item.partition("=")
        if item in IGNORED or item.startswith(IGNORED_PREFIXES):
            continue
        if item == "ro":
            flags.append("--read-only")
            continue
        key = name.replace("-", "_")
        if any(w in key for w in SECRET_WORDS) and key not in ("credentials_file",):
            raise UserError(f"mount option {name!r}: credentials do not belong in mount options (every user "
                            "can read them); use credentials_file=FILE or profile=NAME")
        if key == "config":
            flags += ["--config", value]
            continue
        opt = OPTION_BY_NAME.get(key)
        if opt is None or key == "foreground":
            raise UserError(f"unknown mount option {name!r}")
        flag = "--" + key.replace("_", "-")
        if opt.flag_takes_value:
            if not has_value:
                raise UserError(f"mount option {name!r} needs a value ({name}=...)")
            flags += [flag, value]
        elif not has_value or value.lower() in ("1", "true", "yes", "on"):
            flags.append(flag)
    return flags


def parse_argv(argv: list[str]) -> tuple[str, str, str]:
    """mount(8) calls `helper SOURCE DIR [-sfnv] [-o OPTIONS] [-t TYPE]`."""
    positional, options, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        if a == "-o" and i + 1 < len(argv):
            options.append(argv[i + 1])
            i += 2
            continue
        if a.startswith("-o") and len(a) > 2:
            options.append(a[2:])
        elif a == "-t" and i + 1 < len(argv):
            i += 1           # the type: we are it
        elif a.startswith("-"):
            pass             # -s (sloppy), -f (fake), -n (no mtab), -v: nothing to do for FUSE
        else:
            positional.append(a)
        i += 1
    if len(positional) != 2:
        raise UserError("usage: mount.fuse.cachefs s3://BUCKET[/PREFIX] MOUNTPOINT [-o OPTIONS]")
    source = positional[0].removeprefix("cachefs#")    # mount.fuse3's `cachefs#SOURCE` form
    return source, positional[1], ",".join(options)


def main(argv: list[str] | None = None) -> int:
    from cachefs.cli.main import main as cli_main
    argv = sys.argv[1:] if argv is None else argv
    try:
        source, mountpoint, options = parse_argv(argv)
        flags = translate(options)
    except UserError as e:
        print(f"cachefs: error: {e}", file=sys.stderr)
        return 1
    return cli_main(["mount", source, mountpoint, *flags])


if __name__ == "__main__":
    sys.exit(main())
