"""`cachefs mount` and `cachefs umount`.

`mount` starts the daemon as a detached process and waits for its one-line start-up report on a pipe
(`OK` or `ERR <message>`), so every start-up failure surfaces as one line and a non-zero exit. Only
`--foreground` (and the detached child itself) imports the daemon.
"""
from __future__ import annotations

import argparse
import os
import select
import subprocess
import sys
import time

from cachefs.cli import ops as opscli
from cachefs.config import OPTIONS, Config, build_config
from cachefs.errors import UserError
from cachefs.mounts import canonical

COMMANDS = ("mount", "umount", "unmount")


def add_commands(sub) -> None:
    m = sub.add_parser("mount", help="mount s3://BUCKET[/PREFIX] on MOUNTPOINT")
    m.add_argument("source", help="s3://BUCKET[/PREFIX]")
    m.add_argument("mountpoint")
    _add_mount_options(m)
    for name in ("umount", "unmount"):
        u = sub.add_parser(name, help="unmount and wait for the daemon to exit")
        u.add_argument("mountpoint")
        u.add_argument("--timeout", type=float, default=600.0,
                       help="seconds to wait for pending uploads and for the daemon to exit (default 600)")
        u.add_argument("--force", action="store_true",
                       help="unmount even if uploads are still pending (they stay staged for the next mount)")


def _add_mount_options(p: argparse.ArgumentParser) -> None:
    for opt in OPTIONS:
        flag = "--" + opt.name.replace("_", "-")
        if opt.repeatable:
            p.add_argument(flag, dest=opt.name, action="append", default=argparse.SUPPRESS, metavar="VALUE",
                           help=opt.help)
        elif opt.flag_takes_value:
            p.add_argument(flag, dest=opt.name, default=argparse.SUPPRESS, metavar="VALUE", help=opt.help)
        else:
            p.add_argument(flag, dest=opt.name, action="store_const", const=True,
                           default=argparse.SUPPRESS, help=opt.help)
    p.add_argument("--config", metavar="FILE", help="TOML file with options (keys as the flags, '_' for '-')")
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)   # internal: daemon -> parent


def run(args: argparse.Namespace, argv: list[str]) -> int:
    if args.command == "mount":
        return cmd_mount(args, argv)
    return cmd_umount(args)


def _mount_flags(args: argparse.Namespace) -> dict:
    return {o.name: getattr(args, o.name) for o in OPTIONS if hasattr(args, o.name)}


def cmd_mount(args: argparse.Namespace, argv: list[str]) -> int:
    cfg = build_config(args.source, canonical(args.mountpoint), _mount_flags(args), args.config)
    if cfg.foreground or args.ready_fd is not None:
        from cachefs.daemon import core as daemon
        return daemon.run(cfg, args.ready_fd)
    return _spawn_daemon(cfg, argv)


def _spawn_daemon(cfg: Config, argv: list[str]) -> int:
    """Start the daemon as a detached process and wait for its one-line start-up report."""
    read_fd, write_fd = os.pipe()
    child_argv = [sys.executable, "-m", "cachefs", *argv, "--ready-fd", str(write_fd)]
    # stderr is a pipe until the daemon has its log (it then points fd 2 at the log file): whatever
    # kills it before that (an import error, a crash in start-up) is still shown to the user.
    proc = subprocess.Popen(child_argv, pass_fds=(write_fd,), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    assert proc.stderr is not None      # stderr=PIPE
    os.close(write_fd)
    deadline = time.monotonic() + cfg.mount_timeout
    buf = b""
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([pipe], [], [], left)[0]:
                proc.kill()
                proc.wait()
                raise UserError(f"daemon did not report ready within {cfg.mount_timeout:.0f} s "
                                f"(see {cfg.log_file}){_last_line(proc)}")
            chunk = pipe.read(4096)
            if not chunk:
                code = proc.wait()
                raise UserError(f"daemon exited during start-up with code {code} "
                                f"(see {cfg.log_file}){_last_line(proc)}")
            buf += chunk
    line = buf.decode(errors="replace").strip()
    if line == "OK":
        proc.stderr.close()
        return 0
    proc.wait()
    proc.stderr.close()
    raise UserError(line.removeprefix("ERR ").strip())


def _last_line(proc: subprocess.Popen) -> str:
    """': <the last line the dead daemon wrote to stderr>', or nothing."""
    assert proc.stderr is not None      # _spawn_daemon's stderr=PIPE
    lines = proc.stderr.read().decode(errors="replace").strip().splitlines()
    proc.stderr.close()
    return f": {lines[-1].strip()}" if lines else ""


def cmd_umount(args: argparse.Namespace) -> int:
    """Upload what is pending first (the mount stays usable meanwhile), then unmount."""
    from cachefs.mounts import unmount
    deadline = time.monotonic() + args.timeout
    try:
        pending = opscli.flush_uploads(args.mountpoint, args.timeout)
    except UserError as e:
        if "not a cachefs mount" in str(e):
            raise
        pending = []                 # no control socket (an older daemon): its own exit drains
        print(f"cachefs: warning: could not ask the daemon to upload first: {e}", file=sys.stderr)
    if pending and not args.force:
        raise UserError(opscli.pending_message(pending, args.timeout) +
                        "; not unmounted (retry, or --force to leave them staged for the next mount)")
    unmount(args.mountpoint, max(5.0, deadline - time.monotonic()))
    return 0
