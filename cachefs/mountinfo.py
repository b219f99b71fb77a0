"""/proc/self/mountinfo, read with the standard library only: cachefs.mounts uses it, and so does
cachefs.hints, which a training job imports without the rest of cachefs."""
from __future__ import annotations


def unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def entry(path: str) -> tuple[str, str] | None:
    """(fstype, super options) of the mount exactly at `path` (resolved), or None."""
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) > 4 and unescape(fields[4]) == path:
                tail = right.split()
                found = (tail[0], tail[2] if len(tail) > 2 else "")   # the last mount on a path is the visible one
    return found
