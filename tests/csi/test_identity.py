"""Identity RPCs against the running server."""
from __future__ import annotations

import re

from cachefs import __version__
from cachefs.csi import DRIVER_NAME, TOPOLOGY_NODE_KEY
from cachefs.csi.proto import pb

Service = pb.PluginCapability.Service


def test_plugin_info_is_a_valid_driver_name_and_version(csi_server):
    info = csi_server.identity.GetPluginInfo(pb.GetPluginInfoRequest())
    assert info.name == DRIVER_NAME
    # The spec: at most 63 characters, alphanumerics at both ends, dashes and dots between.
    assert len(info.name) <= 63 and re.fullmatch(r"[a-zA-Z0-9]([a-zA-Z0-9.-]*[a-zA-Z0-9])?", info.name)
    assert info.vendor_version == __version__


def test_capabilities_and_probe_are_stable(csi_server):
    for _ in range(2):      # repeated calls answer the same
        caps = csi_server.identity.GetPluginCapabilities(pb.GetPluginCapabilitiesRequest())
        assert {c.service.type for c in caps.capabilities} == {
            Service.CONTROLLER_SERVICE, Service.VOLUME_ACCESSIBILITY_CONSTRAINTS}
        probe = csi_server.identity.Probe(pb.ProbeRequest())
        assert probe.HasField("ready") and probe.ready.value


def test_node_info_carries_the_node_name_as_topology(csi_server):
    info = csi_server.node.NodeGetInfo(pb.NodeGetInfoRequest())
    assert info.node_id == "node-a"
    assert dict(info.accessible_topology.segments) == {TOPOLOGY_NODE_KEY: "node-a"}
    caps = csi_server.node.NodeGetCapabilities(pb.NodeGetCapabilitiesRequest())
    RPC = pb.NodeServiceCapability.RPC       # publish only (no staging); stats and volume condition
    assert [c.rpc.type for c in caps.capabilities] == [RPC.GET_VOLUME_STATS, RPC.VOLUME_CONDITION]


def test_controller_capabilities(csi_server):
    caps = csi_server.controller.ControllerGetCapabilities(pb.ControllerGetCapabilitiesRequest())
    RPC = pb.ControllerServiceCapability.RPC
    assert [c.rpc.type for c in caps.capabilities] == [RPC.CREATE_DELETE_VOLUME]
