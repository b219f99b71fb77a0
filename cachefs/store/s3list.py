"""ListObjectsV2 answers parsed without botocore's response parser.

botocore parses a listing's XML in Python, shape by shape: about 100 us of CPU per listed object
against about 14 us here, and 5.5 against 1.7 ms for a directory of 30 (`python -m bench.listing`,
docs/BENCHMARKS.md). A cold pass over a dataset lists every directory once, and a bucket of a
million objects would cost the daemon minutes of CPU in parsing alone. Here the page is parsed by
ElementTree's C parser into the same ListPage the boto3 path builds. The request (store/curlengine.py)
asks for `encoding-type=url`, like boto3, so that keys XML cannot carry survive; what the answer says
was encoded is decoded here.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import datetime
from urllib.parse import unquote_plus

from cachefs.store.base import ListPage, ObjectInfo


class FallBack(Exception):
    """An answer the libcurl engine does not handle: this request (and every later one) goes through boto3."""


def _mtime_ns(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1e9)


def _field(item: ET.Element, tag: str) -> str:
    text = item.findtext(tag)
    if text is None:
        raise TypeError(f"no {tag}")
    return text


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
