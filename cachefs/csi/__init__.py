"""cachefs as a Kubernetes CSI driver: identity, node and controller services over gRPC on a Unix
socket, adoption of mounts after a restart, and the data-affinity hints (see docs/KUBERNETES.md)."""

# The CSI driver name: domain notation, at most 63 characters (CSI spec, GetPluginInfo). It is also
# the CSIDriver object's name and the StorageClass provisioner in the Helm chart.
DRIVER_NAME = "csi.cachefs.io"
# The topology segment NodeGetInfo reports; kubelet copies it onto the Node as a label, so an
# affinity term can name one node through it.
TOPOLOGY_NODE_KEY = "topology.csi.cachefs.io/node"
