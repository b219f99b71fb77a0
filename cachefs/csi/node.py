"""The CSI Node service: publish a volume by running a cachefs daemon on the target path."""
from __future__ import annotations

import logging
import os
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field

from cachefs.cache.spec import parse_tier
from cachefs.csi import TOPOLOGY_NODE_KEY, health
from cachefs.csi.mounter import ABSENT, ALIVE, DEAD, FOREIGN, Mounter
from cachefs.csi.mounterd import MounterUnavailable
from cachefs.csi.proto import pb, rpc
from cachefs.csi.records import CacheSlots, Publication, StateDir
from cachefs.csi.status import (
    aborted,
    already_exists,
    failed_precondition,
    internal,
    invalid,
    not_found,
    require,
    rpc_method,
)
from cachefs.csi.volumes import check_capability, dataset_of, is_read_only, mount_options
from cachefs.errors import UserError
from cachefs.mounts import canonical

log = logging.getLogger(__name__)
Mode = pb.VolumeCapability.AccessMode.Mode


@dataclass
class NodeConfig:
    node_id: str
    state_dir: str = "/var/lib/cachefs-csi"
    cache_root: str = "/var/cache/cachefs-csi"
    # `--cache` tier specs with `{slot}` standing for the slot directory name, e.g.
    # "ssd:/nvme/cachefs/{slot}:200GiB"; empty: the default disk tier in the slot directory.
    cache_templates: list[str] = field(default_factory=list)
    cache_size: str = "10GiB"
    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: str | None = None
    max_volumes: int = 0          # 0: no limit announced
    # Each daemon's Prometheus exporter gets its own port, base + i for the i-th concurrent mount (the
    # metrics Service lists `metrics_ports` of them); 0 leaves the daemons' default address alone.
    metrics_port_base: int = 0
    metrics_ports: int = 8
    metrics_host: str = "0.0.0.0"
    # NAME=VALUE shared_cache* options for every mount: the node's shared cache tier (its endpoint and
    # credentials file are the node's, like the cache tiers: never a volume's to choose).
    shared_cache_options: list[str] = field(default_factory=list)
    # Pending uploads this old, with failed attempts, make NodeGetVolumeStats report the volume abnormal.
    upload_stuck_s: float = health.UPLOAD_STUCK_S

    def tiers_for(self, slot: str) -> list[str]:
        return [t.replace("{slot}", slot) for t in self.cache_templates]

    def check(self) -> None:
        """Tier templates must be valid tier specs and give each slot its own directories; shared-tier
        options must be shared_cache* NAME=VALUE pairs."""
        for o in self.shared_cache_options:
            name, sep, _ = o.partition("=")
            if not sep or not name.startswith("shared_cache"):
                raise UserError(f"--shared-cache-option {o!r}: expected shared_cache...=VALUE")
        for t in self.cache_templates:
            spec = parse_tier(t.replace("{slot}", "slot"))
            if spec.dirs and "{slot}" not in t:
                raise UserError(f"--cache {t}: a disk tier's directory must contain {{slot}}")


class NodeService(rpc.NodeServicer):
    """`mounter` carries out mounts: a `Mounter` (this process runs the daemons) or a
    `mounterd.RemoteMounter` (the mounter process holds them, so this one may restart freely)."""

    def __init__(self, cfg: NodeConfig, mounter=None):
        self.cfg = cfg
        self.state = StateDir(cfg.state_dir)
        self.slots = CacheSlots(cfg.cache_root)
        self.mounter = mounter or Mounter()
        self._busy: set[str] = set()
        self._busy_lock = threading.Lock()

    @contextmanager
    def _exclusive(self, target: str):
        """One operation per target at a time; a concurrent one is ABORTED, as the spec asks, and
        the CO retries it."""
        if not self._claim(target):
            raise aborted(f"an operation on {target} is already in progress")
        try:
            yield
        finally:
            with self._busy_lock:
                self._busy.discard(target)

    def _claim(self, target: str) -> bool:
        with self._busy_lock:
            if target in self._busy:
                return False
            self._busy.add(target)
            return True

    def _state(self, target: str) -> str:
        return self.mounter.state(target) if os.path.lexists(target) else ABSENT

    def tier_dirs(self, slot: str) -> list[str]:
        """The directories holding a slot's cached blocks (for measuring warm bytes)."""
        if not self.cfg.cache_templates:
            return [self.slots.path(slot)]
        return [d for t in self.cfg.tiers_for(slot) for d in parse_tier(t).dirs]

    # ---- publish
    @rpc_method
    def NodePublishVolume(self, request, context):
        require(request, "volume_id", "target_path", "volume_capability")
        check_capability(request.volume_capability)
        context_map = dict(request.volume_context)
        ds = dataset_of(request.volume_id, context_map)
        options = mount_options(context_map)
        target = canonical(request.target_path)
        read_only = is_read_only(request.volume_capability, request.readonly)
        pub = Publication(request.volume_id, target, ds.volume_id, slot="", readonly=read_only,
                          options=options, has_secrets=bool(request.secrets),
                          access_mode=request.volume_capability.access_mode.mode)
        with self._exclusive(target):
            self._publish(pub, ds, dict(request.secrets))
        return pb.NodePublishVolumeResponse()

    def _publish(self, pub: Publication, ds, secrets: dict[str, str]) -> None:
        target = pub.target_path
        old = self.state.load(target)
        st = self._state(target)
        if st == FOREIGN:
            raise already_exists(f"{target} already has another filesystem mounted")
        if st in (ALIVE, DEAD):
            if old is None or old.fingerprint() != pub.fingerprint() or (
                    old.access_mode and old.access_mode != pub.access_mode):
                raise already_exists(f"{target} is already published with a different volume, access mode "
                                     f"or options")
            if st == ALIVE:
                return                          # the same request again: nothing to do
            self.mounter.unmount(target)        # dead: clear it and mount again below
        self._check_single_writer(pub)
        pub.slot = old.slot if old and old.dataset == pub.dataset else self._claim_slot(ds)
        os.makedirs(target, exist_ok=True)
        pub.argv = self._mount_argv(pub, ds)
        try:
            if secrets:
                creds = self.state.write_secrets(target, secrets)
                pub.argv += ["--credentials-file", creds]
            self.state.save(pub)
            self.mounter.mount(pub.argv)
        except ValueError as e:
            self.state.remove(target)
            raise invalid(str(e)) from None
        except UserError as e:
            self.state.remove(target)
            if "does not exist" in str(e):       # `cachefs mount`: "bucket 'x' does not exist at ..."
                raise not_found(f"volume {pub.volume_id}: {e}") from None
            raise internal(f"mounting {ds.url} on {target} failed: {e}") from None
        except MounterUnavailable:
            self.state.remove(target)
            raise
        log.info("published %s (%s) on %s, %s, cache slot %s", pub.volume_id, ds.url, target,
                 "read-only" if pub.readonly else "read-write", pub.slot)

    def _check_single_writer(self, pub: Publication) -> None:
        """SINGLE_NODE_SINGLE_WRITER (ReadWriteOncePod) is published at one target at a time: a second
        target is FAILED_PRECONDITION, as the spec asks. SINGLE_NODE_WRITER (ReadWriteOnce) is not held
        to it: Kubernetes lets several pods of one node share such a volume (docs/KUBERNETES.md)."""
        single = Mode.SINGLE_NODE_SINGLE_WRITER
        for other in self.state.all():
            if other.volume_id == pub.volume_id and other.target_path != pub.target_path and \
                    single in (other.access_mode, pub.access_mode):
                raise failed_precondition(f"volume {pub.volume_id} is SINGLE_NODE_SINGLE_WRITER and already "
                                          f"published at {other.target_path}")

    def _claim_slot(self, ds) -> str:
        in_use = {p.slot for p in self.state.all()}
        return self.slots.claim(ds.dsid, ds.volume_id, in_use)

    def _mount_argv(self, pub: Publication, ds) -> list[str]:
        argv = [ds.url, pub.target_path, "--cache-dir", self.slots.path(pub.slot)]
        for name in ("endpoint_url", "region", "addressing_style"):
            value = getattr(self.cfg, name)
            if value and name not in pub.options:
                argv += ["--" + name.replace("_", "-"), value]
        tiers = self.cfg.tiers_for(pub.slot)
        for tier in tiers:
            argv += ["--cache", tier]
        if not tiers:
            argv += ["--cache-size", self.cfg.cache_size]
        for name, value in sorted(pub.options.items()):
            argv += ["--" + name.replace("_", "-"), value]
        for option in self.cfg.shared_cache_options:
            name, _, value = option.partition("=")
            argv += ["--" + name.replace("_", "-"), value]
        if self.cfg.metrics_port_base:
            argv += ["--metrics-addr", self._metrics_addr(pub)]
        if pub.readonly:
            argv.append("--read-only")
        return argv

    def _metrics_addr(self, pub: Publication) -> str:
        taken = {p.metrics_port for p in self.state.all() if p.target_path != pub.target_path}
        for port in range(self.cfg.metrics_port_base, self.cfg.metrics_port_base + self.cfg.metrics_ports):
            if port not in taken and _port_free(self.cfg.metrics_host, port):
                pub.metrics_port = port
                return f"{self.cfg.metrics_host}:{port}"
        log.warning("no metrics port left for %s (all %d in use): its exporter is off",
                    pub.target_path, self.cfg.metrics_ports)
        return "none"

    # ---- unpublish
    @rpc_method
    def NodeUnpublishVolume(self, request, context):
        require(request, "volume_id", "target_path")
        target = canonical(request.target_path)
        with self._exclusive(target):
            self._unpublish(request.volume_id, target)
        return pb.NodeUnpublishVolumeResponse()

    def _unpublish(self, volume_id: str, target: str) -> None:
        pub = self.state.load(target)
        if pub is not None and pub.volume_id != volume_id:
            raise not_found(f"{target} holds volume {pub.volume_id}, not {volume_id}")
        if not os.path.lexists(target):
            self.state.remove(target)
            return                               # already done: idempotent
        st = self.mounter.state(target)
        if st == FOREIGN:
            raise failed_precondition(f"{target} has a filesystem mounted that this driver did not mount")
        try:
            self.mounter.unmount(target)
        except UserError as e:
            raise internal(str(e)) from None
        self.state.remove(target)
        try:
            os.rmdir(target)
        except FileNotFoundError:
            pass
        except OSError as e:
            # Never remove what is inside: a non-empty directory here is not ours to delete.
            log.warning("left %s in place: %s", target, e.strerror)
        log.info("unpublished %s from %s", volume_id, target)

    # ---- health
    @rpc_method
    def NodeGetVolumeStats(self, request, context):
        """statfs of the mount and its condition (cachefs.csi.health); NOT_FOUND unless this node
        published `volume_id` at `volume_path`."""
        require(request, "volume_id", "volume_path")
        target = canonical(request.volume_path)
        pub = self.state.load(target)
        if pub is None or pub.volume_id != request.volume_id or not os.path.lexists(target):
            raise not_found(f"volume {request.volume_id} is not published at {target}")
        state, usage, problem = health.probe(target)
        if problem:
            abnormal, message = True, problem
        else:
            abnormal, message = health.condition(state, lambda: self.mounter.stats(target),
                                                 self.cfg.upload_stuck_s)
        if abnormal:
            log.warning("volume %s at %s is abnormal: %s", request.volume_id, target, message)
        Unit = pb.VolumeUsage.Unit
        out = pb.NodeGetVolumeStatsResponse(volume_condition=pb.VolumeCondition(abnormal=abnormal, message=message))
        if usage is not None:
            out.usage.append(pb.VolumeUsage(unit=Unit.BYTES, total=usage.total_bytes,
                                            available=usage.available_bytes, used=usage.used_bytes))
            out.usage.append(pb.VolumeUsage(unit=Unit.INODES, total=usage.total_inodes,
                                            available=usage.free_inodes, used=usage.used_inodes))
        return out

    # ---- info
    @rpc_method
    def NodeGetCapabilities(self, request, context):
        # No staging (publish does it all); stats and the volume's condition (NodeGetVolumeStats).
        RPC = pb.NodeServiceCapability.RPC
        return pb.NodeGetCapabilitiesResponse(capabilities=[
            pb.NodeServiceCapability(rpc=RPC(type=t)) for t in (RPC.GET_VOLUME_STATS, RPC.VOLUME_CONDITION)])

    @rpc_method
    def NodeGetInfo(self, request, context):
        return pb.NodeGetInfoResponse(
            node_id=self.cfg.node_id, max_volumes_per_node=self.cfg.max_volumes,
            accessible_topology=pb.Topology(segments={TOPOLOGY_NODE_KEY: self.cfg.node_id}))

    # ---- restart
    def adopt(self) -> dict[str, list[str]]:
        """Find the publications this node owns after a restart (of this server, or of the mounter).
        Live mounts are adopted as they are; dead ones (their daemon died, e.g. with the mounter's
        container) are mounted again from the record; records whose target is gone are dropped
        (kubelet unpublished while we were away). Targets with an operation in progress are left to
        it. Raises MounterUnavailable, having dropped nothing, when the mounter does not answer."""
        found: dict[str, list[str]] = {"adopted": [], "remounted": [], "dropped": [], "busy": []}
        for pub in self.state.all():
            target = pub.target_path
            if not self._claim(target):
                found["busy"].append(target)
                continue
            try:
                found[self._adopt_one(pub)].append(target)
            finally:
                with self._busy_lock:
                    self._busy.discard(target)
        log.info("adopted %d mounts, remounted %d, dropped %d stale records",
                 len(found["adopted"]), len(found["remounted"]), len(found["dropped"]))
        return found

    def _adopt_one(self, pub: Publication) -> str:
        target = pub.target_path
        try:
            st = self.mounter.state(target) if _present(target) else None
        except (UserError, OSError) as e:
            log.error("cannot tell the state of %s (record kept): %s", target, e)
            return "busy"
        if st == ALIVE:
            return "adopted"
        if st in (DEAD, ABSENT) and pub.argv:
            try:
                if st == DEAD:
                    self.mounter.unmount(target)
                if pub.has_secrets and not os.path.exists(self.state.secret_path(target)):
                    raise UserError("its credentials file is gone")
                self.mounter.mount(pub.argv)
                return "remounted"
            except (UserError, OSError) as e:
                log.error("could not mount %s again: %s", target, e)
        self.state.remove(target)
        return "dropped"


def _present(path: str) -> bool:
    """Whether something is at `path`: a dead FUSE mount answers lstat with ENOTCONN unless the kernel
    kept its root's attributes (os.path.lexists would say no, and its record would be dropped
    instead of mounted again: a daemon killed before it answered anything)."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return True


def _port_free(host: str, port: int) -> bool:
    """Whether nothing else on the node listens there (another program, or a daemon this server
    does not know of): an explicitly given metrics address that is taken fails the mount."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
