"""ObjectStore over any S3-compatible endpoint, with boto3 (thread-safe client, called from threads)."""
from __future__ import annotations

import configparser
import logging
import os
import stat

import boto3
import botocore.config
import botocore.exceptions as bce
import urllib3.exceptions

from ..errors import (AccessDenied, ConfigError, ObjectChanged, ObjectNotFound, StoreError,
                      StoreUnavailable, UserError)
from ..stats import Stats
from .base import ListPage, ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

_NETWORK_ERRORS = (bce.EndpointConnectionError, bce.ConnectTimeoutError, bce.ReadTimeoutError,
                   bce.ConnectionClosedError, bce.ResponseStreamingError,
                   urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)
_BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                    "InvalidClientTokenId", "AuthorizationHeaderMalformed"}


def load_credentials_file(path: str, profile: str | None) -> dict[str, str]:
    """Keys from an AWS-style INI credentials file, refusing one that others can read."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ConfigError(f"credentials file {path}: {e.strerror}") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigError(f"credentials file {path} has mode {stat.S_IMODE(st.st_mode):04o}; "
                          "it must not be readable by group or others (chmod 600)")
    parser = configparser.ConfigParser()
    try:
        parser.read(path)
    except configparser.Error as e:
        raise ConfigError(f"credentials file {path} is not a valid INI file: {e.message}") from None
    section = profile or "default"
    if not parser.has_section(section):
        raise ConfigError(f"credentials file {path} has no [{section}] section")
    sec = parser[section]
    if "aws_access_key_id" not in sec or "aws_secret_access_key" not in sec:
        raise ConfigError(f"credentials file {path} [{section}] lacks aws_access_key_id/aws_secret_access_key")
    creds = {"aws_access_key_id": sec["aws_access_key_id"], "aws_secret_access_key": sec["aws_secret_access_key"]}
    if "aws_session_token" in sec:
        creds["aws_session_token"] = sec["aws_session_token"]
    return creds


def _code(e: bce.ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _status(e: bce.ClientError) -> int:
    return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


class S3Store(ObjectStore):
    def __init__(self, bucket: str, *, endpoint_url: str | None = None, region: str | None = None,
                 addressing_style: str = "auto", profile: str | None = None,
                 credentials_file: str | None = None, max_attempts: int = 4,
                 connect_timeout: float = 5.0, read_timeout: float = 30.0, max_connections: int = 32,
                 stats: Stats | None = None) -> None:
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.stats = stats or Stats()
        creds = load_credentials_file(credentials_file, profile) if credentials_file else {}
        try:
            session = boto3.Session(profile_name=None if credentials_file else profile, **creds)
        except bce.ProfileNotFound:
            raise ConfigError(f"AWS profile {profile!r} not found") from None
        if session.get_credentials() is None:
            raise UserError("no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                            "--profile or --credentials-file)")
        config = botocore.config.Config(
            region_name=region or session.region_name or "us-east-1",
            retries={"max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=connect_timeout, read_timeout=read_timeout,
            max_pool_connections=max_connections,
            s3={"addressing_style": addressing_style},
        )
        try:
            self.client = session.client("s3", endpoint_url=endpoint_url, config=config)
        except ValueError as e:  # botocore rejects a malformed endpoint URL this way
            raise ConfigError(f"--endpoint-url: {e}") from None

    @property
    def where(self) -> str:
        return self.endpoint_url or "AWS S3"

    # -- start-up check ------------------------------------------------------------------
    def check_bucket(self, prefix: str = "") -> None:
        """One LIST request: unlike HEAD it returns an error body that names the exact cause."""
        try:
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1)
        except bce.NoCredentialsError:
            raise UserError("no AWS credentials found") from None
        except _NETWORK_ERRORS as e:
            raise UserError(f"cannot reach S3 endpoint {self.where}: {e}") from None
        except bce.ClientError as e:
            code, status = _code(e), _status(e)
            if code == "NoSuchBucket" or (status == 404 and not code.startswith("NoSuchKey")):
                raise UserError(f"bucket {self.bucket!r} does not exist at {self.where}") from None
            if code in _BAD_CREDENTIALS:
                raise UserError(f"S3 rejected the credentials for bucket {self.bucket!r} ({code}); "
                                "check the access key and secret") from None
            if code == "AccessDenied" or status == 403:
                raise UserError(f"access denied to bucket {self.bucket!r} at {self.where} ({code or status})") from None
            raise UserError(f"S3 error for bucket {self.bucket!r} at {self.where}: {code or status}") from None

    # -- data ----------------------------------------------------------------------------
    def _translate(self, e: Exception, key: str) -> StoreError:
        self.stats.add("s3_errors")
        if isinstance(e, bce.ClientError):
            code, status = _code(e), _status(e)
            if code in ("NoSuchKey", "404") or status == 404:
                return ObjectNotFound(f"s3://{self.bucket}/{key} no longer exists")
            if code == "PreconditionFailed" or status == 412:
                return ObjectChanged(f"s3://{self.bucket}/{key} changed in S3 while open")
            if status == 403:
                return AccessDenied(f"access denied to s3://{self.bucket}/{key} ({code})")
            return StoreUnavailable(f"S3 error {code or status} for s3://{self.bucket}/{key}")
        return StoreUnavailable(f"S3 unreachable for s3://{self.bucket}/{key}: {e}")

    def get_range(self, key: str, start: int, end: int, etag: str | None = None) -> bytes:
        args = {"Bucket": self.bucket, "Key": key, "Range": f"bytes={start}-{end - 1}"}
        if etag:
            args["IfMatch"] = etag
        self.stats.add("s3_get")
        try:
            resp = self.client.get_object(**args)
            data = resp["Body"].read()
        except (bce.ClientError, *_NETWORK_ERRORS) as e:
            self.stats.add("s3_get_errors")
            raise self._translate(e, key) from e
        if len(data) != end - start:
            self.stats.add("s3_get_errors")
            raise StoreUnavailable(f"short read of s3://{self.bucket}/{key}: {len(data)} of {end - start} bytes")
        self.stats.add("s3_get_bytes", len(data))
        return data

    def head(self, key: str) -> ObjectInfo | None:
        self.stats.add("s3_head")
        try:
            r = self.client.head_object(Bucket=self.bucket, Key=key)
        except bce.ClientError as e:
            if _status(e) == 404:
                return None
            raise self._translate(e, key) from e
        except _NETWORK_ERRORS as e:
            raise self._translate(e, key) from e
        return ObjectInfo(key, r["ContentLength"], r["ETag"], int(r["LastModified"].timestamp() * 1e9))

    def list_page(self, prefix: str, token: str | None = None, max_keys: int = 1000,
                  delimiter: str = "/") -> ListPage:
        args = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": max_keys}
        if delimiter:                 # none: every key below the prefix (a directory rename)
            args["Delimiter"] = delimiter
        if token:
            args["ContinuationToken"] = token
        self.stats.add("s3_list")
        try:
            r = self.client.list_objects_v2(**args)
        except (bce.ClientError, *_NETWORK_ERRORS) as e:
            raise self._translate(e, prefix) from e
        objects = [ObjectInfo(o["Key"], o["Size"], o.get("ETag", ""), int(o["LastModified"].timestamp() * 1e9))
                   for o in r.get("Contents", ())]
        prefixes = [p["Prefix"] for p in r.get("CommonPrefixes", ())]
        return ListPage(objects, prefixes, r.get("NextContinuationToken") if r.get("IsTruncated") else None)

    # -- writes --------------------------------------------------------------------------
    def _call(self, counter: str, key: str, fn, **args):
        self.stats.add(counter)
        try:
            return fn(Bucket=self.bucket, Key=key, **args)
        except (bce.ClientError, *_NETWORK_ERRORS) as e:
            self.stats.add("s3_write_errors")
            raise self._translate(e, key) from e

    def put_object(self, key: str, data: bytes | memoryview) -> str:
        r = self._call("s3_put", key, self.client.put_object, Body=bytes(data))
        self.stats.add("s3_put_bytes", len(data))
        return r["ETag"]

    def create_multipart(self, key: str) -> str:
        return self._call("s3_multipart_create", key, self.client.create_multipart_upload)["UploadId"]

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes | memoryview) -> str:
        r = self._call("s3_put_part", key, self.client.upload_part, UploadId=upload_id, PartNumber=number,
                       Body=bytes(data))
        self.stats.add("s3_put_bytes", len(data))
        return r["ETag"]

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> str:
        body = {"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in sorted(parts)]}
        return self._call("s3_multipart_complete", key, self.client.complete_multipart_upload,
                          UploadId=upload_id, MultipartUpload=body)["ETag"]

    def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            self._call("s3_multipart_abort", key, self.client.abort_multipart_upload, UploadId=upload_id)
        except ObjectNotFound:
            pass        # NoSuchUpload: already completed or aborted

    def delete(self, key: str) -> None:
        self._call("s3_delete", key, self.client.delete_object)

    def copy(self, src: str, dst: str) -> str:
        # boto3's managed copy switches to a multipart copy above 5 GiB, S3's single-copy limit.
        self.stats.add("s3_copy")
        try:
            self.client.copy({"Bucket": self.bucket, "Key": src}, self.bucket, dst)
        except (bce.ClientError, *_NETWORK_ERRORS) as e:
            self.stats.add("s3_write_errors")
            raise self._translate(e, src) from e
        info = self.head(dst)
        if info is None:
            raise StoreUnavailable(f"copy of s3://{self.bucket}/{src} to {dst} did not appear")
        return info.etag

    def close(self) -> None:
        self.client.close()
