"""The CSI Identity service: who we are, what we offer, whether we are ready."""
from __future__ import annotations

from google.protobuf import wrappers_pb2

from cachefs import __version__
from cachefs.csi import DRIVER_NAME
from cachefs.csi.proto import pb, rpc
from cachefs.csi.status import rpc_method

Service = pb.PluginCapability.Service


class IdentityService(rpc.IdentityServicer):
    def __init__(self, controller: bool, ready=lambda: True):
        self.controller = controller
        self.ready = ready

    @rpc_method
    def GetPluginInfo(self, request, context):
        return pb.GetPluginInfoResponse(name=DRIVER_NAME, vendor_version=__version__)

    @rpc_method
    def GetPluginCapabilities(self, request, context):
        # Accessibility constraints: NodeGetInfo reports each node's name as a topology segment,
        # which is what lets the affinity terms target nodes. Volumes themselves are reachable from
        # every node, so CreateVolume returns no accessible_topology.
        types = [Service.VOLUME_ACCESSIBILITY_CONSTRAINTS]
        if self.controller:
            types.insert(0, Service.CONTROLLER_SERVICE)
        return pb.GetPluginCapabilitiesResponse(
            capabilities=[pb.PluginCapability(service=Service(type=t)) for t in types])

    @rpc_method
    def Probe(self, request, context):
        return pb.ProbeResponse(ready=wrappers_pb2.BoolValue(value=bool(self.ready())))
