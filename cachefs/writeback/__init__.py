"""The write path: staging files, the small/large upload schedule, multipart uploads, crash replay.

`Writeback` (facade.py) is the one object the other layers use; facade.py lists the modules
behind it. docs/ARCHITECTURE.md "Write path state: who owns what" says which task owns a staged
file in which state.
"""
from cachefs.writeback.facade import Writeback
from cachefs.writeback.parts import MAX_PARTS, PartSession, part_size
from cachefs.writeback.staging import Staged, StagingFull
from cachefs.writeback.upload import SessionAbandoned

__all__ = ["MAX_PARTS", "PartSession", "SessionAbandoned", "Staged", "StagingFull", "Writeback", "part_size"]
