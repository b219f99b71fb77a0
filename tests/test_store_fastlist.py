"""The listing without botocore's response parser (store/fastlist.py), against a real S3 endpoint
over HTTP: the same pages as boto3 gives (keys XML cannot carry, pagination, common prefixes),
signed right, the same errors, and a switch to boto3 for good on an answer it does not handle."""
from __future__ import annotations

import pytest
from mount_helpers import REGION, fast_path_store, signed_store

from cachefs.devtools.faultproxy import Fault
from cachefs.errors import AccessDenied, StoreUnavailable
from cachefs.store.fastget import FallBack
from cachefs.store.fastlist import parse_page
from cachefs.store.s3 import S3Store

pytestmark = pytest.mark.timeout(120)

AWKWARD = ["dir/with space+plus%and~tilde/ünï.bin", "dir/ctrl\x01char", "dir/amp&lt<gt>.bin", "dir/a'b\"c"]
KEYS = {**{f"dir/{i:03d}.bin": b"x" * i for i in range(25)}, **{k: b"odd" for k in AWKWARD},
        "dir/sub/one": b"1", "dir/sub2/two": b"22", "top": b"t"}


@pytest.fixture(scope="module")
def list_bucket(make_bucket):
    return make_bucket("fastlist", KEYS)


def all_pages(store, prefix, max_keys, delimiter):
    pages, token = [], None
    while True:
        page = store.list_page(prefix, token, max_keys, delimiter)
        pages.append(page)
        if page.next_token is None:
            return pages
        token = page.next_token


@pytest.mark.parametrize("prefix,max_keys,delimiter", [("dir/", 1000, "/"), ("dir/", 7, "/"), ("", 1000, ""),
                                                       ("", 4, "/"), ("nothing-here/", 1000, "/")])
def test_pages_are_the_same_as_through_boto3(aws_env, moto_server, list_bucket, prefix, max_keys, delimiter):
    fast = fast_path_store(moto_server.endpoint_url, list_bucket)
    slow = fast_path_store(moto_server.endpoint_url, list_bucket, fast_get=False)
    try:
        assert fast._fast_list is not None and slow._fast_list is None
        got, want = all_pages(fast, prefix, max_keys, delimiter), all_pages(slow, prefix, max_keys, delimiter)
        assert [(p.objects, p.prefixes) for p in got] == [(p.objects, p.prefixes) for p in want]
        assert fast._fast_list is not None, "fell back to boto3 on an ordinary listing"
    finally:
        fast.close()
        slow.close()
    keys = {o.key for p in got for o in p.objects}
    if prefix == "":
        assert keys == (set(KEYS) if not delimiter else {"top"})
    if prefix == "dir/":
        assert set(AWKWARD[1:]) <= keys and {p for page in got for p in page.prefixes} == {"dir/sub/", "dir/sub2/",
                                                                                   "dir/with space+plus%and~tilde/"}
        sizes = {o.key: o.size for p in got for o in p.objects}
        assert sizes["dir/024.bin"] == 24 and all(o.etag.startswith('"') and o.mtime_ns > 0
                                                  for p in got for o in p.objects)


def test_signature_is_checked_by_an_endpoint_that_enforces_credentials(monkeypatch, auth_moto):
    with signed_store(monkeypatch, auth_moto, auth_moto.secret) as store:
        assert "hello.txt" in [o.key for o in store.list_page("", None, 1000, "/").objects]
        assert store._fast_list is not None, "the signed listing was not accepted: fell back to boto3"
    with signed_store(monkeypatch, auth_moto, "not-the-secret") as store:
        with pytest.raises(AccessDenied):
            store.list_page("", None, 1000, "/")
        assert store._fast_list is not None


def test_an_answer_it_does_not_handle_switches_to_boto3_for_good(aws_env, fault_proxy, list_bucket):
    store = fast_path_store(fault_proxy.url, list_bucket)
    try:
        fault_proxy.add(Fault("error", ops="list", status=301, code="PermanentRedirect", count=1))
        assert "top" in [o.key for o in store.list_page("", None, 1000, "/").objects]
        assert store._fast_list is None
        assert len(store.list_page("dir/", None, 1000, "/").objects) == 25 + len(AWKWARD) - 1
    finally:
        store.close()
    assert [s.outcome for s in fault_proxy.seen("list")] == ["error", "forwarded", "forwarded"]


def test_retryable_errors_are_retried_on_the_fast_path(aws_env, fault_proxy, list_bucket):
    store = S3Store(list_bucket, endpoint_url=fault_proxy.url, region=REGION, addressing_style="path",
                    max_attempts=3, read_deadline=10.0)
    try:
        fault_proxy.add(Fault("error", ops="list", status=503, code="SlowDown", count=2))
        assert "top" in [o.key for o in store.list_page("", None, 1000, "/").objects]
        assert store._fast_list is not None
        fault_proxy.add(Fault("error", ops="list", status=500, code="InternalError"))
        with pytest.raises(StoreUnavailable, match="after 3 attempts"):
            store.list_page("", None, 1000, "/")
    finally:
        store.close()


NS = "http://s3.amazonaws.com/doc/2006-03-01/"


def test_parse_decodes_only_what_the_answer_says_is_encoded():
    doc = (f'<ListBucketResult xmlns="{NS}"><IsTruncated>true</IsTruncated>'
           '<Contents><Key>a%2Bb+c</Key><LastModified>2026-11-23T02:12:30.123Z</LastModified>'
           '<ETag>"e"</ETag><Size>5</Size></Contents><CommonPrefixes><Prefix>p%25/</Prefix></CommonPrefixes>'
           '<NextContinuationToken>tok</NextContinuationToken>{enc}</ListBucketResult>')
    encoded = parse_page(doc.format(enc="<EncodingType>url</EncodingType>").encode())
    assert [o.key for o in encoded.objects] == ["a+b c"] and encoded.prefixes == ["p%/"]
    assert encoded.next_token == "tok" and abs(encoded.objects[0].mtime_ns - 1795399950123000000) < 1000
    plain = parse_page(doc.format(enc="").encode())        # an endpoint that ignored encoding-type
    assert [o.key for o in plain.objects] == ["a%2Bb+c"] and plain.prefixes == ["p%25/"]


@pytest.mark.parametrize("body", [b"<html>proxy error</html>", b"not xml at all", b"",
                                  f'<ListBucketResult xmlns="{NS}"><Contents><Key>k</Key></Contents>'
                                  '</ListBucketResult>'.encode(),                          # no Size
                                  f'<ListBucketResult xmlns="{NS}"><Contents><Key>k</Key><Size>1</Size>'
                                  '<LastModified>yesterday</LastModified></Contents></ListBucketResult>'.encode()])
def test_parse_hands_anything_else_to_boto3(body):
    with pytest.raises(FallBack):
        parse_page(body)
