"""Eager multipart: the parts of a large file that is being written sequentially go to S3 while
the writer is still writing, so that a checkpoint is in S3 soon after its close instead of one
whole upload later (docs/SEMANTICS.md "Writes").

A `PartSession` is one multipart upload opened early. A part is uploaded once the writer has moved
past its end; a write into a part that was uploaded (or is being uploaded) marks it to be sent again,
so the completed object is always exactly the staged file. The session is completed by the file's
ordinary upload (at close, or when the large-file schedule says so), which sends only what is
missing. A truncate marks the parts it changes, like a write. Renaming or unlinking the file
abandons the session.

One owner per session (issue 15: a truncate once aborted the session an upload was still sending
parts to, and the failed part took the daemon down): `busy` parts and `in_use` (an upload is
completing it) make the task doing that the owner. Abandoning a session in use only marks it
`abandoned`; its owner aborts it once its requests are done. Nobody else ever aborts it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

MAX_PARTS = 10_000            # S3's limit on parts per multipart upload


def part_size(size: int, configured: int) -> int:
    """`configured`, or larger when the file would need more than S3's 10,000 parts."""
    need = -(-size // MAX_PARTS)
    return max(configured, -(-need // (1 << 20)) << 20)


@dataclass
class PartSession:
    key: str
    upload_id: str
    psize: int
    done: dict[int, str] = field(default_factory=dict)   # part number -> ETag of its current bytes
    busy: set[int] = field(default_factory=set)          # parts being uploaded now
    stale: set[int] = field(default_factory=set)         # parts changed while being uploaded
    in_use: bool = False          # an upload is sending its remaining parts and completing it
    abandoned: bool = False       # no longer the file's session: its owner aborts it when done
    failures: int = 0             # failed completions in a row (a lost session fails every time)

    @property
    def owned(self) -> bool:
        """A task is sending parts of it or completing it (and so aborts it if it is abandoned)."""
        return self.in_use or bool(self.busy)

    def parts_of(self, offset: int, end: int) -> range:
        """Part numbers (1-based) that bytes [offset, end) fall into."""
        if end <= offset:
            return range(0)
        return range(offset // self.psize + 1, (end - 1) // self.psize + 2)

    def changed(self, offset: int, end: int) -> None:
        for n in self.parts_of(offset, end):
            self.done.pop(n, None)
            if n in self.busy:
                self.stale.add(n)

    def ready(self, write_end: int, size: int) -> list[int]:
        """Whole parts the writer has moved past and that S3 does not have yet."""
        last = min(write_end, size) // self.psize
        return [n for n in range(1, last + 1) if n not in self.done and n not in self.busy]

    def finished(self, n: int, etag: str) -> None:
        self.busy.discard(n)
        if n in self.stale:
            self.stale.discard(n)       # its bytes changed meanwhile: send it again later
        else:
            self.done[n] = etag

    def failed(self, n: int) -> None:
        self.busy.discard(n)
        self.stale.discard(n)
