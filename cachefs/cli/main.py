"""`cachefs` command line: the parser and the dispatch to each group of subcommands (mount.py,
ops.py, csi/cli.py).

Every failure the user can fix ends as one line `cachefs: error: ...` and exit code 1 (2 for usage).
"""
from __future__ import annotations

import argparse
import sys

from cachefs import __version__
from cachefs.cli import manifest as manifestcli
from cachefs.cli import mount as mountcli
from cachefs.cli import ops as opscli
from cachefs.cli import prefetch as prefetchcli
from cachefs.cli import sharedcache as sharedcli
from cachefs.csi import cli as csi_cli
from cachefs.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2), not usage text plus an error."""

    def error(self, message: str):
        raise _UsageError(message)


class _UsageError(UserError):
    pass


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cachefs", description="FUSE caching filesystem for S3-compatible object storage")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    mountcli.add_commands(sub)
    csi_cli.add_subcommands(sub)
    opscli.add_commands(sub)
    manifestcli.add_commands(sub)
    prefetchcli.add_commands(sub)
    sharedcli.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = make_parser().parse_args(argv)
        if args.version:
            from cachefs.native import ACTIVE  # here, not at the top: only --version needs it
            print(f"cachefs {__version__} (native block reader: {ACTIVE})")
            return 0
        if args.command in mountcli.COMMANDS:
            return mountcli.run(args, argv)
        elif args.command in opscli.COMMANDS:
            return opscli.run(args)
        elif args.command in manifestcli.COMMANDS:
            return manifestcli.run(args)
        elif args.command in prefetchcli.COMMANDS:
            return prefetchcli.run(args)
        elif args.command in sharedcli.COMMANDS:
            return sharedcli.run(args)
        elif args.command == "csi":
            return csi_cli.cmd_csi(args)
        elif args.command == "affinity":
            return csi_cli.cmd_affinity(args)
        make_parser().print_help()
        return 2
    except _UsageError as e:
        print(f"cachefs: error: {e}", file=sys.stderr)
        return 2
    except UserError as e:
        print(f"cachefs: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
