"""ListObjectsV2 without botocore's response parser.

botocore parses a listing's XML in Python, shape by shape: about 100 us of CPU per listed object
against about 14 us here, and 5.5 against 1.7 ms for a directory of 30 (`python -m bench.listing`,
docs/BENCHMARKS.md). A cold pass over a dataset lists every directory once, and a bucket of a
million objects would cost the daemon minutes of CPU in parsing alone. Here the page is parsed by
ElementTree's C parser. Signing, the HTTP session, errors and FallBack are those of the fast GET
(fastget.SignedRequests); the result is the same ListPage that the boto3 path builds.

Like boto3, the request asks for `encoding-type=url` (so that keys XML cannot carry survive) and
decodes what the answer says was encoded.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

from cachefs.store.base import ListPage, ObjectInfo
from cachefs.store.fastget import FallBack, SignedRequests, bucket_url


def _mtime_ns(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1e9)


def _field(item: ET.Element, tag: str) -> str:
    text = item.findtext(tag)
    if text is None:
        raise TypeError(f"no {tag}")
    return text


class FastLister(SignedRequests):
    def __init__(self, client: Any, bucket: str) -> None:
        super().__init__(client)
        self.url = bucket_url(client, "list_objects_v2", {"Bucket": bucket})

    def list_page(self, prefix: str, token: str | None, max_keys: int, delimiter: str,
                  deadline: float | None = None) -> ListPage:
        """One page of the listing below `prefix` (with `delimiter`: its common prefixes too).
        Raises botocore's exceptions, DeadlinePassed or FallBack, like FastGetter.get."""
        params = {"list-type": "2", "prefix": prefix, "max-keys": str(max_keys), "encoding-type": "url"}
        if delimiter:
            params["delimiter"] = delimiter
        if token:
            params["continuation-token"] = token
        response = self._send("ListObjectsV2", self.url, {}, deadline, params)
        raw = response.raw
        if response.status_code != 200:
            raise self._error("ListObjectsV2", response.status_code, raw)
        try:
            body = raw.read()
        finally:
            raw.release_conn()
        return parse_page(body)


def parse_page(body: bytes) -> ListPage:
    """A ListBucketResult document as a ListPage; FallBack if it is not one."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError as e:
        raise FallBack(f"a listing that is not XML ({e})") from None
    ns = root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    if root.tag != ns + "ListBucketResult":
        raise FallBack(f"a listing answered with {root.tag}")
    encoded = root.findtext(ns + "EncodingType") == "url"
    decode = unquote_plus if encoded else str
    objects, prefixes = [], []
    key_tag, size_tag, etag_tag, mtime_tag = (ns + t for t in ("Key", "Size", "ETag", "LastModified"))
    try:
        for item in root.iterfind(ns + "Contents"):
            objects.append(ObjectInfo(decode(_field(item, key_tag)), int(_field(item, size_tag)),
                                      item.findtext(etag_tag) or "", _mtime_ns(_field(item, mtime_tag))))
        for item in root.iterfind(ns + "CommonPrefixes"):
            prefixes.append(decode(_field(item, ns + "Prefix")))
    except (TypeError, ValueError) as e:       # a field missing or malformed: boto3 says what is wrong
        raise FallBack(f"a listing entry this parser does not understand ({e})") from None
    truncated = (root.findtext(ns + "IsTruncated") or "").lower() == "true"
    return ListPage(objects, prefixes, root.findtext(ns + "NextContinuationToken") if truncated else None)
