"""The `cachefs csi` and `cachefs affinity` subcommands (wired into cachefs/cli.py)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import threading

from cachefs.errors import UserError
from cachefs.units import parse_size


def add_subcommands(sub) -> None:
    c = sub.add_parser("csi", help="run the Kubernetes CSI driver (node and/or controller) on a Unix socket")
    c.add_argument("--endpoint", default=os.environ.get("CSI_ENDPOINT", "unix:///csi/csi.sock"),
                   help="unix:///PATH of the gRPC socket (env CSI_ENDPOINT)")
    c.add_argument("--mode", choices=("node", "controller", "all"), default="all")
    c.add_argument("--node-id", default=os.environ.get("NODE_NAME") or socket.gethostname(),
                   help="this node's name (env NODE_NAME; the Kubernetes node name)")
    c.add_argument("--state-dir", default="/var/lib/cachefs-csi", help="node: publication records, secrets")
    c.add_argument("--cache-root", default="/var/cache/cachefs-csi", help="node: one cache slot per dataset")
    c.add_argument("--cache", action="append", default=[], metavar="TIER",
                   help="node: a cache tier for every mount, {slot} standing for the slot name, "
                        "e.g. ssd:/nvme/cachefs/{slot}:200GiB (repeatable)")
    c.add_argument("--cache-size", default="10GiB", help="node: default disk tier size without --cache")
    c.add_argument("--endpoint-url", help="S3 endpoint for mounts and provisioning")
    c.add_argument("--region")
    c.add_argument("--addressing-style", choices=("auto", "path", "virtual"), default="auto")
    c.add_argument("--shared-cache-option", action="append", default=[], metavar="NAME=VALUE", dest="shared_cache",
                   help="node: a shared_cache* mount option given to every mount (the shared tier, docs/CACHING.md)")
    c.add_argument("--max-volumes", type=int, default=0, help="node: volumes per node announced (0: no limit)")
    c.add_argument("--metrics-port-base", type=int, default=0,
                   help="node: give the i-th mount's exporter port BASE+i (0: the daemons' default)")
    c.add_argument("--metrics-ports", type=int, default=8, help="node: how many such ports")
    c.add_argument("--unhealthy-upload-age", type=float, default=900.0, metavar="SECONDS",
                   help="node: pending uploads this old, with failed attempts, make a volume's condition abnormal")
    c.add_argument("--warm-labels", action="store_true", help="node: maintain warm.cachefs.io/* node labels")
    c.add_argument("--warm-min", default="1GiB", help="smallest warm size that gets a label")
    c.add_argument("--warm-max-labels", type=int, default=16, help="most warm labels on one node")
    c.add_argument("--warm-interval", type=float, default=300.0, help="seconds between label patches, at least")
    c.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    c.add_argument("--supervise", action="store_true",
                   help="run the server as a child and restart it when it dies (the container's first process)")
    c.add_argument("--mounter", metavar="ENDPOINT", default=os.environ.get("CACHEFS_CSI_MOUNTER", ""),
                   help="node: unix:///PATH of a `cachefs csi mounter` that runs the FUSE daemons, so this "
                        "server can restart without ending them (env CACHEFS_CSI_MOUNTER); "
                        "empty: this server runs them itself")
    c.add_argument("--unmount-timeout", type=float, default=600.0,
                   help="node: seconds an unpublish waits for `cachefs umount` (pending uploads) to finish")
    csub = c.add_subparsers(dest="csi_command", metavar="{mounter}")
    mt = csub.add_parser("mounter", help="run the process that holds a node's FUSE daemons (its own container)")
    mt.add_argument("--socket", default=os.environ.get("CACHEFS_CSI_MOUNTER", "unix:///run/cachefs-csi/mounter.sock"),
                    help="unix:///PATH to listen on (env CACHEFS_CSI_MOUNTER); the node server's --mounter")
    mt.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default=argparse.SUPPRESS)
    mt.add_argument("--stop-flush-timeout", type=float, default=20.0,
                    help="on SIGTERM: seconds to let every daemon flush pending uploads before exiting")
    mt.add_argument("--unmount-timeout", type=float, default=600.0, dest="mounter_unmount_timeout",
                    help="seconds an unmount waits for `cachefs umount` (pending uploads)")

    a = sub.add_parser("affinity", help="print nodeAffinity terms preferring nodes warm for a dataset")
    a.add_argument("dataset", help="s3://BUCKET[/PREFIX] or BUCKET[/PREFIX] (the volume's data)")
    a.add_argument("--required", action="store_true", help="also require a warm node (hard constraint)")
    a.add_argument("--min-warm", default="1GiB", help="with --required: the least warm size a node must hold")
    a.add_argument("--nodes", metavar="FILE",
                   help="`kubectl get nodes -o json` output ('-' for stdin) to weigh the terms by; "
                        "default: ask the API server when run in a pod, else generic terms")
    a.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")


def cmd_csi(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.csi_command == "mounter":
        from cachefs.csi import mounterd
        return mounterd.run(args.socket, args.stop_flush_timeout, unmount_timeout=args.mounter_unmount_timeout)
    if args.supervise:
        from cachefs.csi.supervise import supervise
        return supervise([sys.executable, "-m", "cachefs", *[a for a in sys.argv[1:] if a != "--supervise"]])
    from cachefs.csi.identity import IdentityService
    from cachefs.csi.server import build, run_until_signalled
    node = controller = None
    stop = threading.Event()
    if args.mode in ("node", "all"):
        node = _node_service(args)
        if args.mounter:
            _watch_mounter(node, stop)
        else:
            node.adopt()
        if args.warm_labels:
            _start_reporter(args, node, stop)
    if args.mode in ("controller", "all"):
        from cachefs.csi.controller import ControllerConfig, ControllerService
        controller = ControllerService(ControllerConfig(args.endpoint_url, args.region, args.addressing_style))
    server = build(args.endpoint, IdentityService(controller is not None), node, controller)
    run_until_signalled(server, stop)
    return 0


def _node_service(args):
    from cachefs.csi.node import NodeConfig, NodeService
    _size(args.cache_size, "--cache-size")
    cfg = NodeConfig(
        node_id=args.node_id, state_dir=args.state_dir, cache_root=args.cache_root,
        cache_templates=args.cache, cache_size=args.cache_size, endpoint_url=args.endpoint_url,
        region=args.region, addressing_style=args.addressing_style, max_volumes=args.max_volumes,
        metrics_port_base=args.metrics_port_base, metrics_ports=args.metrics_ports,
        shared_cache_options=args.shared_cache,
        upload_stuck_s=args.unhealthy_upload_age)
    try:
        cfg.check()
    except ValueError as e:
        raise UserError(f"--cache: {e}") from None
    if args.mounter:
        from cachefs.csi.mounterd import RemoteMounter
        return NodeService(cfg, RemoteMounter(args.mounter, unmount_timeout=args.unmount_timeout))
    from cachefs.csi.mounter import Mounter
    return NodeService(cfg, Mounter(unmount_timeout=args.unmount_timeout))


def _watch_mounter(node, stop: threading.Event) -> None:
    """Adopt once the mounter answers, and again whenever it is a new one. In a thread from the
    start: remounting many volumes takes minutes, and the server must answer its liveness probe
    meanwhile (an operation on a target being adopted answers ABORTED, and kubelet retries)."""
    from cachefs.csi.mounterd import MounterWatch
    watch = MounterWatch(node.mounter, node.adopt)
    threading.Thread(target=watch.run, args=(stop,), name="mounter-watch", daemon=True).start()


def _size(text: str, flag: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise UserError(f"{flag}: {e}") from None


def _start_reporter(args, node, stop: threading.Event) -> None:
    from cachefs.csi.kube import KubeClient
    from cachefs.csi.labels import WarmReporter
    from cachefs.csi.warm import warm_bytes
    reporter = WarmReporter(KubeClient.in_cluster(), args.node_id,
                            lambda: warm_bytes(node.state, node.slots, node.tier_dirs, node.mounter.stats),
                            min_bytes=_size(args.warm_min, "--warm-min"), max_labels=args.warm_max_labels,
                            min_interval=args.warm_interval)
    threading.Thread(target=reporter.run, args=(stop,), name="warm-labels", daemon=True).start()


def cmd_affinity(args: argparse.Namespace) -> int:
    from cachefs.csi.affinity import node_affinity, to_yaml
    from cachefs.csi.status import CsiError
    from cachefs.csi.volumes import Dataset
    try:
        dataset = Dataset.parse(args.dataset).volume_id
    except CsiError as e:
        raise UserError(e.message) from None
    nodes = _load_nodes(args.nodes, dataset)
    gib = -(-_size(args.min_warm, "--min-warm") // (1 << 30))
    terms = node_affinity(dataset, nodes, args.required, gib)
    print(json.dumps(terms, indent=2) if args.output == "json" else to_yaml(terms))
    return 0


def _load_nodes(source: str | None, dataset: str) -> list[dict]:
    if source is not None:
        try:
            text = sys.stdin.read() if source == "-" else open(source).read()
            doc = json.loads(text)
        except (OSError, ValueError) as e:
            raise UserError(f"--nodes {source}: {e}") from None
        return doc.get("items", [doc]) if isinstance(doc, dict) else doc
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        from cachefs.csi.kube import KubeClient
        from cachefs.csi.labels import label_key
        return KubeClient.in_cluster().list_nodes(label_key(dataset))
    return []
