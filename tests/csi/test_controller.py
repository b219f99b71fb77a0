"""Controller RPCs against the running server and moto: prefix-backed volumes."""
from __future__ import annotations

import grpc
import pytest
from mount_helpers import ACCESS_KEY_ID, SECRET_ACCESS_KEY, list_all_keys

from cachefs.csi.proto import pb

from .conftest import block_capability, mount_capability, status_of

Code = grpc.StatusCode
Mode = pb.VolumeCapability.AccessMode
SECRETS = {"accessKeyID": ACCESS_KEY_ID, "secretAccessKey": SECRET_ACCESS_KEY}


def create(server, name, bucket, capacity=1 << 30, caps=None, **params):
    return server.controller.CreateVolume(pb.CreateVolumeRequest(
        name=name, capacity_range=pb.CapacityRange(required_bytes=capacity),
        volume_capabilities=caps if caps is not None else [mount_capability()],
        parameters={"bucket": bucket, **params}, secrets=SECRETS))


def delete(server, volume_id):
    return server.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=volume_id, secrets=SECRETS))


def test_create_is_idempotent_and_conflicts_are_already_exists(csi_server, make_bucket):
    bucket = make_bucket("csi-create")
    first = create(csi_server, "pvc-1", bucket, prefixBase="vols", block_size="1MiB").volume
    assert first.volume_id == f"{bucket}/vols/pvc-1"
    assert first.capacity_bytes == 1 << 30
    assert dict(first.volume_context) == {"bucket": bucket, "prefix": "vols/pvc-1", "block_size": "1MiB"}
    again = create(csi_server, "pvc-1", bucket, prefixBase="vols", block_size="1MiB").volume
    assert again == first
    assert status_of(create, csi_server, "pvc-1", bucket, capacity=2 << 30, prefixBase="vols",
                     block_size="1MiB") == Code.ALREADY_EXISTS
    assert status_of(create, csi_server, "pvc-1", bucket, prefixBase="vols", onDelete="delete",
                     block_size="1MiB") == Code.ALREADY_EXISTS


@pytest.mark.parametrize("change, code", [
    ({"name": ""}, Code.INVALID_ARGUMENT),
    ({"caps": []}, Code.INVALID_ARGUMENT),
    ({"caps": [block_capability()]}, Code.INVALID_ARGUMENT),
    ({"caps": [mount_capability(Mode.MULTI_NODE_MULTI_WRITER)]}, Code.INVALID_ARGUMENT),
    ({"bucket": ""}, Code.INVALID_ARGUMENT),
    ({"onDelete": "sometimes"}, Code.INVALID_ARGUMENT),
    ({"cache_dir": "/etc"}, Code.INVALID_ARGUMENT),        # node-owned: a volume may not set it
    ({"log_target": "syslog"}, Code.INVALID_ARGUMENT),
    ({"block_size": "1KiB"}, Code.INVALID_ARGUMENT),       # cachefs's own validation
    ({"bucket": "no-such-bucket-csi"}, Code.FAILED_PRECONDITION),
])
def test_create_rejects_bad_requests(csi_server, make_bucket, change, code):
    args = {"name": "pvc-bad", "bucket": make_bucket("csi-bad"), **change}
    assert status_of(create, csi_server, args.pop("name"), args.pop("bucket"), **args) == code


def test_create_out_of_range_capacity(csi_server, make_bucket):
    req = pb.CreateVolumeRequest(name="pvc-r", volume_capabilities=[mount_capability()], secrets=SECRETS,
                                 parameters={"bucket": make_bucket("csi-range")},
                                 capacity_range=pb.CapacityRange(required_bytes=10, limit_bytes=5))
    assert status_of(csi_server.controller.CreateVolume, req) == Code.OUT_OF_RANGE


def test_delete_retains_data_by_default(csi_server, make_bucket, s3):
    bucket = make_bucket("csi-retain")
    vol = create(csi_server, "pvc-keep", bucket).volume
    s3.put_object(Bucket=bucket, Key="pvc-keep/model.pt", Body=b"weights")
    delete(csi_server, vol.volume_id)
    assert list_all_keys(s3, bucket) == ["pvc-keep/model.pt"]     # only the volume marker went
    delete(csi_server, vol.volume_id)                               # idempotent
    assert list_all_keys(s3, bucket) == ["pvc-keep/model.pt"]


def test_delete_policy_delete_removes_the_prefix_only(csi_server, make_bucket, s3):
    bucket = make_bucket("csi-del")
    vol = create(csi_server, "pvc-tmp", bucket, onDelete="delete").volume
    s3.put_object(Bucket=bucket, Key="pvc-tmp/a/b.bin", Body=b"x")
    s3.put_object(Bucket=bucket, Key="pvc-tmp-other/keep.bin", Body=b"y")
    delete(csi_server, vol.volume_id)
    assert list_all_keys(s3, bucket) == ["pvc-tmp-other/keep.bin"]
    delete(csi_server, vol.volume_id)


def test_delete_never_touches_data_it_did_not_provision(csi_server, make_bucket, s3):
    bucket = make_bucket("csi-static", {"datasets/imagenet/x.jpg": b"img"})
    delete(csi_server, f"{bucket}/datasets/imagenet")
    delete(csi_server, f"{bucket}/datasets")
    assert list_all_keys(s3, bucket) == ["datasets/imagenet/x.jpg"]
    assert status_of(delete, csi_server, "") == Code.INVALID_ARGUMENT
    delete(csi_server, bucket)          # a whole bucket is never a volume: OK, and nothing deleted
    assert list_all_keys(s3, bucket) == ["datasets/imagenet/x.jpg"]


def test_validate_volume_capabilities(csi_server, make_bucket):
    bucket = make_bucket("csi-validate", {"static/data.bin": b"d"})
    vol = create(csi_server, "pvc-v", bucket).volume
    validate = csi_server.controller.ValidateVolumeCapabilities

    def req(volume_id, caps):
        return pb.ValidateVolumeCapabilitiesRequest(volume_id=volume_id, volume_capabilities=caps,
                                                    volume_context=vol.volume_context, secrets=SECRETS)

    ok = validate(req(vol.volume_id, [mount_capability()]))
    assert list(ok.confirmed.volume_capabilities) == [mount_capability()]
    assert validate(req(f"{bucket}/static", [mount_capability()])).HasField("confirmed")   # a static PV
    for mode in (Mode.SINGLE_NODE_WRITER, Mode.SINGLE_NODE_SINGLE_WRITER, Mode.MULTI_NODE_SINGLE_WRITER):
        assert validate(req(vol.volume_id, [mount_capability(mode)])).HasField("confirmed"), Mode.Name(mode)
    many = validate(req(vol.volume_id, [mount_capability(Mode.MULTI_NODE_MULTI_WRITER)]))
    assert not many.HasField("confirmed") and "one writer per prefix" in many.message
    assert status_of(validate, req(f"{bucket}/nothing-here", [mount_capability()])) == Code.NOT_FOUND
    assert status_of(validate, req("", [mount_capability()])) == Code.INVALID_ARGUMENT
    assert status_of(validate, req(vol.volume_id, [])) == Code.INVALID_ARGUMENT
