"""The CSI spec's MUST and SHOULD statements for every RPC the driver implements, one test each,
named after the statement, over the Unix socket of a real `cachefs csi --mode all` (docs/KUBERNETES.md,
"Spec conformance", lists them with how each holds)."""
from __future__ import annotations

import os
import re

import grpc
import pytest
from mount_helpers import ACCESS_KEY_ID, SECRET_ACCESS_KEY, is_mounted, list_all_keys

from cachefs.csi import DRIVER_NAME
from cachefs.csi.proto import pb

from .conftest import mount_capability, status_of
from .test_node import publish_request, unpublish

Code = grpc.StatusCode
Mode = pb.VolumeCapability.AccessMode
RPC = pb.NodeServiceCapability.RPC
SECRETS = {"accessKeyID": ACCESS_KEY_ID, "secretAccessKey": SECRET_ACCESS_KEY}


def create(server, name, bucket, **params):
    return server.controller.CreateVolume(pb.CreateVolumeRequest(
        name=name, volume_capabilities=[mount_capability()], parameters={"bucket": bucket, **params},
        secrets=SECRETS))


def delete(server, volume_id):
    return server.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=volume_id, secrets=SECRETS))


def stats(server, volume_id, path):
    return server.node.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(volume_id=volume_id, volume_path=str(path)))


# ---------------------------------------------------------------- Identity

def test_get_plugin_info_name_is_domain_notation_and_vendor_version_is_set(csi_server):
    info = csi_server.identity.GetPluginInfo(pb.GetPluginInfoRequest())
    assert info.name == DRIVER_NAME and len(info.name) <= 63
    assert re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?", info.name)
    assert info.vendor_version


def test_get_plugin_capabilities_reports_controller_service_when_it_is_served(csi_server):
    caps = csi_server.identity.GetPluginCapabilities(pb.GetPluginCapabilitiesRequest()).capabilities
    kinds = {c.service.type for c in caps}
    assert pb.PluginCapability.Service.CONTROLLER_SERVICE in kinds
    # NodeGetInfo returns accessible_topology: that MUST come with this capability.
    assert pb.PluginCapability.Service.VOLUME_ACCESSIBILITY_CONSTRAINTS in kinds


def test_probe_answers_ok_with_readiness(csi_server):
    answer = csi_server.identity.Probe(pb.ProbeRequest())
    assert answer.HasField("ready") and answer.ready.value is True


# ---------------------------------------------------------------- Controller

def test_create_volume_must_be_idempotent_for_the_same_name_and_parameters(csi_server, make_bucket, s3):
    bucket = make_bucket("conf-idem")
    first = create(csi_server, "pvc-idem", bucket).volume
    assert create(csi_server, "pvc-idem", bucket).volume == first
    assert list_all_keys(s3, bucket) == ["pvc-idem/"]          # one marker: one piece of storage


def test_create_volume_existing_but_incompatible_is_already_exists(csi_server, make_bucket):
    bucket = make_bucket("conf-exists")
    create(csi_server, "pvc-x", bucket)
    assert status_of(create, csi_server, "pvc-x", bucket, onDelete="delete") == Code.ALREADY_EXISTS


def test_create_volume_missing_required_field_is_invalid_argument(csi_server, make_bucket):
    bucket = make_bucket("conf-missing")
    call = csi_server.controller.CreateVolume
    assert status_of(call, pb.CreateVolumeRequest(volume_capabilities=[mount_capability()],
                                                  parameters={"bucket": bucket}, secrets=SECRETS)) \
        == Code.INVALID_ARGUMENT                                    # no name
    assert status_of(call, pb.CreateVolumeRequest(name="pvc-nocaps", parameters={"bucket": bucket},
                                                  secrets=SECRETS)) == Code.INVALID_ARGUMENT


def test_create_volume_accepts_any_name_within_128_bytes_except_control_characters(csi_server, make_bucket, s3):
    bucket = make_bucket("conf-names")
    odd = create(csi_server, "team/a ../b", bucket).volume
    assert odd.volume_id.startswith(f"{bucket}/vol-") and "/" not in odd.volume_id.removeprefix(f"{bucket}/")
    assert create(csi_server, "team/a ../b", bucket).volume == odd              # idempotent by name
    assert create(csi_server, "x" * 128, bucket).volume.volume_id == f"{bucket}/{'x' * 128}"
    assert status_of(create, csi_server, "x" * 129, bucket) == Code.INVALID_ARGUMENT
    assert status_of(create, csi_server, "bell\x07", bucket) == Code.INVALID_ARGUMENT


def test_create_volume_response_carries_the_required_volume_id(csi_server, make_bucket):
    resp = create(csi_server, "pvc-resp", make_bucket("conf-resp"))
    assert resp.HasField("volume") and resp.volume.volume_id
    assert resp.volume.capacity_bytes >= 0


def test_delete_volume_of_a_volume_that_does_not_exist_must_reply_ok(csi_server, make_bucket, s3):
    bucket = make_bucket("conf-del-none", {"data/keep.bin": b"k"})
    for volume_id in (f"{bucket}/never-created", "no-such-bucket-conformance/pvc-1"):
        assert status_of(delete, csi_server, volume_id) == Code.OK, volume_id
    assert list_all_keys(s3, bucket) == ["data/keep.bin"]


def test_delete_volume_of_a_malformed_or_foreign_id_replies_ok_and_deletes_nothing(csi_server, make_bucket, s3):
    bucket = make_bucket("conf-del-foreign", {"data/keep.bin": b"k", "top.bin": b"t"})
    for volume_id in (bucket, f"s3://{bucket}", f"{bucket}/data", "Not_A_Bucket/x", "../..", "a",
                      f"{bucket}/a//b", "pvc-0a1b2c3d-kubernetes-style-handle"):
        assert status_of(delete, csi_server, volume_id) == Code.OK, volume_id
    assert list_all_keys(s3, bucket) == ["data/keep.bin", "top.bin"]


def test_delete_volume_must_be_idempotent(csi_server, make_bucket, s3):
    bucket = make_bucket("conf-del-twice")
    vol = create(csi_server, "pvc-twice", bucket, onDelete="delete").volume
    s3.put_object(Bucket=bucket, Key="pvc-twice/f.bin", Body=b"x")
    for _ in range(3):
        assert status_of(delete, csi_server, vol.volume_id) == Code.OK
    assert list_all_keys(s3, bucket) == []


def test_delete_volume_missing_volume_id_is_invalid_argument(csi_server):
    assert status_of(delete, csi_server, "") == Code.INVALID_ARGUMENT


def test_validate_volume_capabilities_of_a_volume_that_does_not_exist_is_not_found(csi_server, make_bucket):
    bucket = make_bucket("conf-validate")
    validate = csi_server.controller.ValidateVolumeCapabilities
    for volume_id in (f"{bucket}/nothing", "no-such-bucket-conformance", "Not_A_Bucket/x"):
        req = pb.ValidateVolumeCapabilitiesRequest(volume_id=volume_id, volume_capabilities=[mount_capability()],
                                                   secrets=SECRETS)
        assert status_of(validate, req) == Code.NOT_FOUND, volume_id


def test_validate_volume_capabilities_missing_required_field_is_invalid_argument(csi_server, make_bucket):
    vol = create(csi_server, "pvc-val", make_bucket("conf-val-missing")).volume
    validate = csi_server.controller.ValidateVolumeCapabilities
    assert status_of(validate, pb.ValidateVolumeCapabilitiesRequest(
        volume_capabilities=[mount_capability()], secrets=SECRETS)) == Code.INVALID_ARGUMENT
    assert status_of(validate, pb.ValidateVolumeCapabilitiesRequest(
        volume_id=vol.volume_id, secrets=SECRETS)) == Code.INVALID_ARGUMENT


def test_controller_get_capabilities_reports_create_delete_volume(csi_server):
    caps = csi_server.controller.ControllerGetCapabilities(pb.ControllerGetCapabilitiesRequest()).capabilities
    CRPC = pb.ControllerServiceCapability.RPC
    assert [c.rpc.type for c in caps] == [CRPC.CREATE_DELETE_VOLUME]


@pytest.mark.parametrize("method", ["/csi.v1.Controller/ControllerPublishVolume", "/csi.v1.Controller/ListVolumes",
                                    "/csi.v1.Node/NodeStageVolume", "/csi.v1.Node/NodeExpandVolume"])
def test_rpcs_not_offered_answer_unimplemented(csi_server, method):
    call = csi_server.channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    assert status_of(call, b"") == Code.UNIMPLEMENTED


# ---------------------------------------------------------------- Node

def test_node_get_capabilities_reports_volume_stats_and_condition(csi_server):
    caps = csi_server.node.NodeGetCapabilities(pb.NodeGetCapabilitiesRequest()).capabilities
    assert sorted(c.rpc.type for c in caps) == [RPC.GET_VOLUME_STATS, RPC.VOLUME_CONDITION]


def test_node_get_info_node_id_is_set_and_topology_segments_are_valid(csi_server):
    info = csi_server.node.NodeGetInfo(pb.NodeGetInfoRequest())
    assert info.node_id == "node-a" and info.max_volumes_per_node >= 0
    for key, value in info.accessible_topology.segments.items():
        prefix, _, name = key.rpartition("/")
        assert re.fullmatch(r"[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?", prefix) and len(name) <= 63
        assert re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?", value)


def test_node_publish_must_be_idempotent_and_node_unpublish_must_be_idempotent(csi_server, auth_moto, target):
    req = publish_request(auth_moto, target, volume_id="vol-idem")
    for _ in range(2):
        assert status_of(csi_server.node.NodePublishVolume, req) == Code.OK
    assert is_mounted(target)
    for _ in range(2):
        assert status_of(unpublish, csi_server, target, "vol-idem") == Code.OK
    assert not target.exists()                  # the SP MUST delete what it created at target_path


def test_node_publish_same_target_with_other_capability_is_already_exists(csi_server, auth_moto, target):
    req = publish_request(auth_moto, target, volume_id="vol-cap")
    csi_server.node.NodePublishVolume(req)
    try:
        other = pb.NodePublishVolumeRequest()
        other.CopyFrom(req)
        other.volume_capability.access_mode.mode = Mode.SINGLE_NODE_READER_ONLY     # readonly stays true
        assert status_of(csi_server.node.NodePublishVolume, other) == Code.ALREADY_EXISTS
    finally:
        unpublish(csi_server, target, "vol-cap")


def test_node_publish_single_writer_volume_at_a_second_target_is_failed_precondition(csi_server, auth_moto, target):
    req = publish_request(auth_moto, target, volume_id="vol-rwop")
    req.volume_capability.access_mode.mode = Mode.SINGLE_NODE_SINGLE_WRITER
    csi_server.node.NodePublishVolume(req)
    second = target.parent.parent / "second-pod" / "mount"
    second.parent.mkdir(parents=True, exist_ok=True)
    try:
        again = publish_request(auth_moto, second, volume_id="vol-rwop")
        again.volume_capability.access_mode.mode = Mode.SINGLE_NODE_SINGLE_WRITER
        assert status_of(csi_server.node.NodePublishVolume, again) == Code.FAILED_PRECONDITION
        assert not is_mounted(second)
    finally:
        unpublish(csi_server, target, "vol-rwop")


def test_node_publish_of_a_volume_that_does_not_exist_is_not_found(csi_server, auth_moto, target):
    req = publish_request(auth_moto, target, volume_id="vol-gone", bucket="no-such-bucket-conformance",
                          s3_max_attempts="1")
    assert status_of(csi_server.node.NodePublishVolume, req) == Code.NOT_FOUND
    assert not is_mounted(target)


def test_node_unpublish_of_another_volume_at_the_target_is_not_found(csi_server, auth_moto, target):
    csi_server.node.NodePublishVolume(publish_request(auth_moto, target, volume_id="vol-mine"))
    try:
        assert status_of(unpublish, csi_server, target, "vol-other") == Code.NOT_FOUND
        assert is_mounted(target)
    finally:
        unpublish(csi_server, target, "vol-mine")


def test_node_get_volume_stats_of_a_volume_not_at_that_path_is_not_found(csi_server, auth_moto, target):
    assert status_of(stats, csi_server, "vol-none", target) == Code.NOT_FOUND
    csi_server.node.NodePublishVolume(publish_request(auth_moto, target, volume_id="vol-st"))
    try:
        assert status_of(stats, csi_server, "vol-other", target) == Code.NOT_FOUND
        assert status_of(stats, csi_server, "", target) == Code.INVALID_ARGUMENT
        assert status_of(stats, csi_server, "vol-st", "") == Code.INVALID_ARGUMENT
    finally:
        unpublish(csi_server, target, "vol-st")


def test_node_get_volume_stats_usage_is_statfs_and_condition_is_always_present(csi_server, auth_moto, target):
    csi_server.node.NodePublishVolume(publish_request(auth_moto, target, volume_id="vol-usage"))
    try:
        answer = stats(csi_server, "vol-usage", target)
        assert answer.HasField("volume_condition")             # MUST, with VOLUME_CONDITION
        assert answer.volume_condition.abnormal is False and answer.volume_condition.message
        by_unit = {u.unit: u for u in answer.usage}
        st = os.statvfs(target)
        Unit = pb.VolumeUsage.Unit
        assert by_unit[Unit.BYTES].total == st.f_blocks * st.f_frsize > 0
        assert by_unit[Unit.INODES].total == st.f_files > 0
        for u in answer.usage:                                  # MUST NOT be negative
            assert u.total >= 0 and u.used >= 0 and u.available >= 0 and u.unit != Unit.UNKNOWN
    finally:
        unpublish(csi_server, target, "vol-usage")
