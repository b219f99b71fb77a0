"""A volume context's `manifest` reaches the mount's --manifest (docs/MANIFESTS.md): published from
s3://, loaded before the mount serves; a file on the node is no volume's to name."""
from __future__ import annotations

import grpc
from mount_helpers import is_mounted, s3_client

from cachefs.csi.records import StateDir
from cachefs.manifest.format import Manifest, ManifestEntry, dumps

from .conftest import status_of
from .test_node import daemon_log, publish_request, unpublish

Code = grpc.StatusCode


def test_volume_context_manifest_is_passed_to_the_mount(csi_server, auth_moto, target):
    s3 = s3_client(auth_moto.endpoint_url, auth_moto.key_id, auth_moto.secret)
    head = s3.head_object(Bucket=auth_moto.bucket, Key="hello.txt")
    m = Manifest.from_entries(auth_moto.bucket, "", [ManifestEntry("hello.txt", head["ContentLength"],
                                                                   head["ETag"], 0)])
    s3.put_object(Bucket=auth_moto.bucket, Key=".cachefs-manifest", Body=dumps(m))
    try:
        assert status_of(csi_server.node.NodePublishVolume,
                         publish_request(auth_moto, target, manifest="/etc/hostname")) == Code.INVALID_ARGUMENT
        csi_server.node.NodePublishVolume(publish_request(auth_moto, target, manifest=f"s3://{auth_moto.bucket}/",
                                                          manifest_max_age="1d"))
        assert is_mounted(target)
        [pub] = StateDir(str(csi_server.state_dir)).all()
        assert pub.argv[pub.argv.index("--manifest") + 1] == f"s3://{auth_moto.bucket}/"
        assert (target / "hello.txt").read_bytes() == b"hello\n"
        assert f"manifest s3://{auth_moto.bucket}/.cachefs-manifest" in daemon_log(csi_server)
        unpublish(csi_server, target, auth_moto.bucket)
    finally:
        s3.delete_object(Bucket=auth_moto.bucket, Key=".cachefs-manifest")
