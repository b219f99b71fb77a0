"""An in-memory ObjectStore: the fake for unit tests of the layers above the store, and the store of a
`mem://BUCKET[/PREFIX]` source (store.from_config): empty at start, gone with the process. A cache
directory kept across two mem:// daemons remembers listings of objects the new store does not hold.
"""
from __future__ import annotations

import threading
import time

import xxhash

from cachefs.errors import ObjectChanged, ObjectNotFound, UserError
from cachefs.stats import Stats
from cachefs.store.base import ListPage, ObjectInfo, ObjectStore


class MemoryStore(ObjectStore):
    def __init__(self, bucket: str = "mem", stats: Stats | None = None) -> None:
        self.bucket = bucket
        self.stats = stats or Stats()
        self._lock = threading.Lock()
        self._objects: dict[str, tuple[bytes, ObjectInfo]] = {}
        self._uploads: dict[str, tuple[str, dict[int, bytes]]] = {}
        self._upload_meta: dict[str, dict[str, str]] = {}

    def put(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> ObjectInfo:
        # The ETag covers the metadata too: a copy that replaces it gives a new one, as S3's may.
        digest = xxhash.xxh64_hexdigest(data + repr(sorted(metadata.items())).encode() if metadata else data)
        info = ObjectInfo(key, len(data), f'"{digest}"', time.time_ns(), dict(metadata or {}))
        with self._lock:
            self._objects[key] = (bytes(data), info)
        return info

    def keys(self, prefix: str = "") -> list[str]:
        """Every key under `prefix`, sorted (for tests: not counted as a request)."""
        with self._lock:
            return sorted(k for k in self._objects if k.startswith(prefix))

    def body(self, key: str) -> bytes | None:
        """The object's bytes, None if there is none (for tests: not counted as a request)."""
        with self._lock:
            entry = self._objects.get(key)
        return None if entry is None else entry[0]

    def delete(self, key: str) -> None:
        self.stats.add("s3_delete")
        with self._lock:
            self._objects.pop(key, None)

    def put_object(self, key: str, data: bytes | memoryview, metadata: dict[str, str] | None = None) -> str:
        self.stats.add("s3_put")
        return self.put(key, bytes(data), metadata).etag

    def put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        with self._lock:
            if key in self._objects:
                return False
            self._objects[key] = (bytes(data), ObjectInfo(key, len(data), f'"{xxhash.xxh64_hexdigest(data)}"',
                                                          time.time_ns(), {}))
        self.stats.add("s3_put")
        return True

    def create_multipart(self, key: str, metadata: dict[str, str] | None = None) -> str:
        with self._lock:
            self._uploads[upload_id := f"u{len(self._uploads) + 1}"] = (key, {})
            self._upload_meta[upload_id] = dict(metadata or {})
        return upload_id

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes | memoryview) -> str:
        self.stats.add("s3_put_part")
        with self._lock:
            entry = self._uploads.get(upload_id)
            if entry is None or entry[0] != key:
                raise ObjectNotFound(f"no multipart upload {upload_id} for {key}")
            entry[1][number] = bytes(data)
        return f'"{xxhash.xxh64_hexdigest(data)}"'

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> str:
        with self._lock:
            entry = self._uploads.pop(upload_id, None)
        if entry is None:
            raise ObjectNotFound(f"no multipart upload {upload_id} for {key}")
        return self.put(key, b"".join(entry[1][n] for n, _ in sorted(parts)),
                        self._upload_meta.pop(upload_id, None)).etag

    def abort_multipart(self, key: str, upload_id: str) -> None:
        with self._lock:
            self._uploads.pop(upload_id, None)

    def list_multipart(self, prefix: str) -> list[tuple[str, str]]:
        with self._lock:
            return sorted((key, uid) for uid, (key, _) in self._uploads.items() if key.startswith(prefix))

    def multipart_uploads(self) -> list[str]:
        with self._lock:
            return sorted(self._uploads)

    def copy(self, src: str, dst: str, metadata: dict[str, str] | None = None) -> str:
        self.stats.add("s3_copy")
        with self._lock:
            entry = self._objects.get(src)
        if entry is None:
            raise ObjectNotFound(src)
        return self.put(dst, entry[0], entry[1].meta if metadata is None else metadata).etag

    def check_bucket(self, prefix: str = "") -> None:
        if not self.bucket:
            raise UserError("bucket '' does not exist")

    def get_range(self, key: str, start: int, end: int, etag: str | None = None,
                  answered: threading.Event | None = None) -> bytes:
        self.stats.add("s3_get")
        if answered is not None:
            answered.set()
        with self._lock:
            entry = self._objects.get(key)
        if entry is None:
            raise ObjectNotFound(key)
        data, info = entry
        if etag and etag != info.etag:
            raise ObjectChanged(key)
        if self.metadata_seen is not None:
            self.metadata_seen(key, info.etag, dict(info.meta or {}))
        self.stats.add("s3_get_bytes", end - start)
        return data[start:end]

    def head(self, key: str) -> ObjectInfo | None:
        self.stats.add("s3_head")
        with self._lock:
            entry = self._objects.get(key)
        return entry[1] if entry else None

    def list_page(self, prefix: str, token: str | None = None, max_keys: int = 1000,
                  delimiter: str = "/") -> ListPage:
        self.stats.add("s3_list")
        with self._lock:
            keys = sorted(k for k in self._objects if k.startswith(prefix))
            infos = {k: self._objects[k][1] for k in keys}
        # Entries in S3 order: objects and common prefixes interleaved by name.
        entries: list[tuple[str, ObjectInfo | None]] = []
        seen_prefixes = set()
        for k in keys:
            rest = k[len(prefix):]
            cut = rest.find(delimiter) if delimiter else -1
            if cut >= 0:
                p = prefix + rest[:cut + 1]
                if p not in seen_prefixes:
                    seen_prefixes.add(p)
                    entries.append((p, None))
            else:
                entries.append((k, infos[k]))
        if token:
            entries = [e for e in entries if e[0] > token]
        page, more = entries[:max_keys], len(entries) > max_keys
        return ListPage([i for _, i in page if i], [n for n, i in page if i is None],
                        page[-1][0] if more else None)
