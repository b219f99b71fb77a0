"""`cachefs prefetch MOUNTPOINT --order FILE`: send the order in which a job will read files (one path
a line, relative to the mount or absolute under it; `-` reads standard input), so the daemon fetches
them ahead in that order (reader/order.py). The paths are streamed, never held whole here.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

from cachefs.errors import UserError
from cachefs.hints import HintError, send_order
from cachefs.ipc import find_socket

COMMANDS = ("prefetch",)


def add_commands(sub) -> None:
    p = sub.add_parser("prefetch", help="fetch files ahead in the order a job will read them")
    p.add_argument("mountpoint")
    p.add_argument("--order", required=True, metavar="FILE",
                   help="the paths in reading order, one a line ('-': standard input)")
    p.add_argument("--epoch", type=int, default=None, metavar="N",
                   help="epoch number: an order of an older epoch than the stream's current one is ignored")
    p.add_argument("--stream", default=None, metavar="NAME",
                   help="which reader this order is for (one per rank sharing a mount; default: default)")


def _paths(lines) -> Iterator[str]:
    for line in lines:
        path = line.rstrip("\n")
        if path:
            yield path


def run(args: argparse.Namespace) -> int:
    socket_path = find_socket(args.mountpoint)      # one-line errors for a wrong mount point
    try:
        if args.order == "-":
            answer = send_order(args.mountpoint, _paths(sys.stdin), args.epoch, args.stream, socket_path)
        else:
            try:
                with open(args.order, encoding="utf-8") as f:
                    answer = send_order(args.mountpoint, _paths(f), args.epoch, args.stream, socket_path)
            except OSError as e:
                raise UserError(f"cannot read {args.order}: {e.strerror or e}") from None
    except HintError as e:
        raise UserError(str(e)) from None
    if answer.get("ignored"):
        print(f"order ignored by {args.mountpoint}: {answer['ignored']}")
    else:
        print(f"order of {answer.get('received', 0)} paths sent to {args.mountpoint} "
              f"(stream {answer.get('stream')}, window {answer.get('window', 0) // (1 << 20)} MiB)")
    return 0
