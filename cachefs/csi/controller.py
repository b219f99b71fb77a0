"""The CSI Controller service: a volume is a prefix in a bucket that the StorageClass names.

CreateVolume writes the prefix's directory marker `PREFIX/` with the volume's name, capacity and
delete policy in its metadata; that marker is the volume's record (idempotency, ALREADY_EXISTS) and
cachefs shows it as the directory itself, never as a file. DeleteVolume removes the marker and, only
when the StorageClass said `onDelete: delete`, every object under the prefix."""
from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass

import boto3
import botocore.config
import botocore.exceptions
import grpc

from cachefs.csi.proto import pb, rpc
from cachefs.csi.status import CsiError, already_exists, internal, invalid, not_found, out_of_range, require, rpc_method
from cachefs.csi.volumes import CONTROLLER_KEYS, Dataset, check_capabilities, check_capability, mount_options

log = logging.getLogger(__name__)

ON_DELETE = ("retain", "delete")
_META = "cachefs-volume"     # x-amz-meta-cachefs-volume: JSON {name, capacity, on_delete, params}
_NAME_MAX = 128              # the CSI spec's limit on names and ids a CO must accept (bytes)
# Control characters the spec bans in a CreateVolume name (every other string of <= 128 bytes is allowed).
_BANNED = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


@dataclass
class ControllerConfig:
    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: str = "auto"


def _s3_client(cfg: ControllerConfig, secrets: dict[str, str]):
    keys = {}
    key_id = secrets.get("aws_access_key_id") or secrets.get("accessKeyID")
    secret = secrets.get("aws_secret_access_key") or secrets.get("secretAccessKey")
    if key_id and secret:
        keys = {"aws_access_key_id": key_id, "aws_secret_access_key": secret,
                "aws_session_token": secrets.get("aws_session_token") or secrets.get("sessionToken")}
    conf = botocore.config.Config(retries={"mode": "standard", "max_attempts": 4},
                                  s3={"addressing_style": cfg.addressing_style})
    return boto3.client("s3", endpoint_url=cfg.endpoint_url, region_name=cfg.region, config=conf, **keys)


def _missing(e: botocore.exceptions.ClientError) -> bool:
    return e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NoSuchBucket", "NotFound")


class NoBucket(CsiError):
    def __init__(self, message: str):
        super().__init__(grpc.StatusCode.FAILED_PRECONDITION, message)


class ControllerService(rpc.ControllerServicer):
    def __init__(self, cfg: ControllerConfig):
        self.cfg = cfg

    # ---- create
    @rpc_method
    def CreateVolume(self, request, context):
        require(request, "name")
        if len(request.name.encode()) > _NAME_MAX or _BANNED.search(request.name):
            raise invalid(f"bad volume name {request.name!r} (at most {_NAME_MAX} bytes, no control characters)")
        check_capabilities(request.volume_capabilities)
        params = dict(request.parameters)
        if not params.get("bucket"):
            raise invalid("StorageClass parameter 'bucket' missing")
        on_delete = params.get("onDelete", "retain")
        if on_delete not in ON_DELETE:
            raise invalid(f"onDelete must be one of {', '.join(ON_DELETE)}, got {on_delete!r}")
        options = mount_options(params, extra_allowed=CONTROLLER_KEYS)
        base = params.get("prefixBase", "").strip("/")
        leaf = prefix_name(request.name)
        ds = Dataset.parse(params["bucket"] + "/" + (f"{base}/{leaf}" if base else leaf))
        capacity = _capacity(request.capacity_range)
        record = {"name": request.name, "capacity": capacity, "on_delete": on_delete,
                  "params": hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]}
        s3 = _s3_client(self.cfg, dict(request.secrets))
        existing = self._record(s3, ds)
        if existing is not None:
            if existing != record:
                raise already_exists(f"volume {request.name} exists with other capacity, parameters or "
                                     f"delete policy")
        else:
            self._put_marker(s3, ds, record)
            log.info("created volume %s at %s (onDelete=%s)", request.name, ds.url, on_delete)
        ctx = {"bucket": ds.bucket, "prefix": ds.prefix, **options}
        return pb.CreateVolumeResponse(volume=pb.Volume(volume_id=ds.volume_id, capacity_bytes=capacity,
                                                        volume_context=ctx))

    def _record(self, s3, ds: Dataset) -> dict | None:
        try:
            head = s3.head_object(Bucket=ds.bucket, Key=ds.prefix + "/")
        except botocore.exceptions.ClientError as e:
            if _missing(e):
                self._check_bucket(s3, ds)
                return None
            raise internal(f"S3: {e}") from None
        try:
            return json.loads(head.get("Metadata", {}).get(_META, ""))
        except ValueError:
            return {}                           # a marker not ours: incompatible with any request

    @staticmethod
    def _check_bucket(s3, ds: Dataset) -> None:
        try:
            s3.head_bucket(Bucket=ds.bucket)
        except botocore.exceptions.ClientError as e:
            if _missing(e):
                raise NoBucket(f"bucket {ds.bucket} does not exist") from None
            raise internal(f"S3: {e}") from None

    @staticmethod
    def _put_marker(s3, ds: Dataset, record: dict) -> None:
        try:
            s3.put_object(Bucket=ds.bucket, Key=ds.prefix + "/", Body=b"",
                          Metadata={_META: json.dumps(record, sort_keys=True)})
        except botocore.exceptions.ClientError as e:
            raise internal(f"S3: {e}") from None

    # ---- delete
    @rpc_method
    def DeleteVolume(self, request, context):
        """Only what CreateVolume made is ever deleted: an id that is malformed, names a whole bucket
        or a prefix without our marker is no volume of ours, and the spec's answer for a volume that
        does not exist is OK (a provisioner retries anything else for ever). Nothing is touched."""
        require(request, "volume_id")
        ds = _parse_or_none(request.volume_id)
        if ds is None or not ds.prefix:
            log.info("DeleteVolume %r: not a volume this driver provisioned; nothing deleted", request.volume_id)
            return pb.DeleteVolumeResponse()
        s3 = _s3_client(self.cfg, dict(request.secrets))
        try:
            record = self._record(s3, ds)
        except NoBucket:
            return pb.DeleteVolumeResponse()       # bucket gone: so is the volume
        if record is None or "name" not in record:
            # Not provisioned by us (or already deleted): nothing to do, and never touch its data.
            return pb.DeleteVolumeResponse()
        if record.get("on_delete") == "delete":
            removed = self._delete_prefix(s3, ds)
            log.info("deleted volume %s: %d objects under %s", record["name"], removed, ds.url)
        else:
            log.info("deleted volume %s, data under %s retained", record["name"], ds.url)
        s3.delete_object(Bucket=ds.bucket, Key=ds.prefix + "/")
        return pb.DeleteVolumeResponse()

    @staticmethod
    def _delete_prefix(s3, ds: Dataset) -> int:
        removed = 0
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=ds.bucket, Prefix=ds.prefix + "/"):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", []) if o["Key"] != ds.prefix + "/"]
            if keys:
                s3.delete_objects(Bucket=ds.bucket, Delete={"Objects": keys, "Quiet": True})
                removed += len(keys)
        return removed

    # ---- validate, capabilities
    @rpc_method
    def ValidateVolumeCapabilities(self, request, context):
        require(request, "volume_id", "volume_capabilities")
        ds = _parse_or_none(request.volume_id)
        s3 = _s3_client(self.cfg, dict(request.secrets))
        if ds is None or not self._exists(s3, ds):
            raise not_found(f"volume {request.volume_id} does not exist")
        try:
            for cap in request.volume_capabilities:
                check_capability(cap)
        except Exception as e:
            return pb.ValidateVolumeCapabilitiesResponse(message=getattr(e, "message", str(e)))
        return pb.ValidateVolumeCapabilitiesResponse(confirmed=pb.ValidateVolumeCapabilitiesResponse.Confirmed(
            volume_context=request.volume_context, volume_capabilities=request.volume_capabilities,
            parameters=request.parameters))

    def _exists(self, s3, ds: Dataset) -> bool:
        """A provisioned volume has its marker; a static one (a PV naming existing data) has objects."""
        try:
            if self._record(s3, ds) is not None:
                return True
        except NoBucket:
            return False
        prefix = ds.prefix + "/" if ds.prefix else ""
        return bool(s3.list_objects_v2(Bucket=ds.bucket, Prefix=prefix, MaxKeys=1).get("KeyCount"))

    @rpc_method
    def ControllerGetCapabilities(self, request, context):
        RPC = pb.ControllerServiceCapability.RPC
        return pb.ControllerGetCapabilitiesResponse(capabilities=[
            pb.ControllerServiceCapability(rpc=RPC(type=RPC.CREATE_DELETE_VOLUME))])


def prefix_name(name: str) -> str:
    """The key component a volume's name becomes: itself, unless it cannot be one path segment of a
    prefix ('/', '.', '..': names the spec allows), then a digest of it (the marker keeps the name)."""
    if "/" in name or name in (".", ".."):
        return "vol-" + hashlib.sha256(name.encode()).hexdigest()[:40]
    return name


def _parse_or_none(volume_id: str) -> Dataset | None:
    """The dataset a volume id names, or None when it is not of the form this driver makes."""
    try:
        return Dataset.parse(volume_id)
    except CsiError:
        return None


def _capacity(rng) -> int:
    """Object storage has no size to reserve; the requested capacity is recorded and echoed."""
    if rng.required_bytes < 0 or rng.limit_bytes < 0:
        raise invalid("capacity must not be negative")
    if rng.limit_bytes and rng.required_bytes > rng.limit_bytes:
        raise out_of_range("required_bytes exceeds limit_bytes")
    return rng.required_bytes or rng.limit_bytes
