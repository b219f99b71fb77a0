"""The node server's state on disk, so that a restarted server finds the mounts it owns.

STATE_DIR/volumes/<hash of target>.json   one per published target: volume, dataset, slot, mount argv
STATE_DIR/secrets/<hash of target>.ini    the publish secrets as an AWS credentials file, mode 0600
CACHE_ROOT/<dsid>-<n>/slot.json           one per cache slot: which dataset its blocks belong to

Files are written to a temp name and renamed, so a crash leaves the old or the new record, not half.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import xxhash


@dataclass
class Publication:
    volume_id: str
    target_path: str
    dataset: str            # bucket[/prefix]
    slot: str               # cache slot directory name under the cache root
    readonly: bool
    options: dict[str, str]
    argv: list[str] = field(default_factory=list)   # the `cachefs mount` arguments; no secrets
    has_secrets: bool = False
    metrics_port: int = 0
    access_mode: int = 0    # VolumeCapability.AccessMode.Mode; 0 in records written before it was kept

    def fingerprint(self) -> tuple:
        """What must match for a repeated NodePublishVolume to be the same publication."""
        return (self.volume_id, self.dataset, self.readonly, sorted(self.options.items()), self.has_secrets)


def _write_json(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


class StateDir:
    def __init__(self, root: str):
        self.root = root
        self.volumes = os.path.join(root, "volumes")
        self.secrets = os.path.join(root, "secrets")
        for d in (root, self.volumes, self.secrets):
            os.makedirs(d, mode=0o700, exist_ok=True)
        os.chmod(self.secrets, 0o700)

    @staticmethod
    def _key(target: str) -> str:
        return xxhash.xxh64_hexdigest(target.encode())

    def record_path(self, target: str) -> str:
        return os.path.join(self.volumes, self._key(target) + ".json")

    def secret_path(self, target: str) -> str:
        return os.path.join(self.secrets, self._key(target) + ".ini")

    def load(self, target: str) -> Publication | None:
        try:
            with open(self.record_path(target)) as f:
                return Publication(**json.load(f))
        except (OSError, ValueError, TypeError):
            return None

    def save(self, pub: Publication) -> None:
        _write_json(self.record_path(pub.target_path), asdict(pub))

    def remove(self, target: str) -> None:
        for path in (self.record_path(target), self.secret_path(target)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def all(self) -> list[Publication]:
        out = []
        for name in sorted(os.listdir(self.volumes)):
            if name.endswith(".json"):
                try:
                    with open(os.path.join(self.volumes, name)) as f:
                        out.append(Publication(**json.load(f)))
                except (OSError, ValueError, TypeError):
                    continue
        return out

    def write_secrets(self, target: str, secrets: dict[str, str]) -> str:
        """The publish secrets as an AWS INI file the daemon reads with --credentials-file. Created
        0600 before any byte is written (O_EXCL on a temp name), so no other user ever sees it."""
        key_id = _pick(secrets, "aws_access_key_id", "accessKeyID", "AWS_ACCESS_KEY_ID")
        secret = _pick(secrets, "aws_secret_access_key", "secretAccessKey", "AWS_SECRET_ACCESS_KEY")
        token = _pick(secrets, "aws_session_token", "sessionToken", "AWS_SESSION_TOKEN")
        if not key_id or not secret:
            raise ValueError("the publish secret needs aws_access_key_id and aws_secret_access_key "
                             "(or accessKeyID and secretAccessKey)")
        lines = ["[default]", f"aws_access_key_id = {key_id}", f"aws_secret_access_key = {secret}"]
        if token:
            lines.append(f"aws_session_token = {token}")
        path = self.secret_path(target)
        tmp = path + ".tmp"
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, path)
        return path


def _pick(secrets: dict[str, str], *names: str) -> str | None:
    for n in names:
        if secrets.get(n):
            return secrets[n]
    return None


class CacheSlots:
    """Cache directories per dataset. Two pods on one node reading one dataset each get their own
    daemon, and two daemons cannot share a cache directory (it is locked), so a dataset has numbered
    slots; the lowest free one is reused, which keeps the warm one in use."""

    def __init__(self, root: str):
        self.root = root
        os.makedirs(root, mode=0o700, exist_ok=True)

    def path(self, slot: str) -> str:
        return os.path.join(self.root, slot)

    def claim(self, dsid: str, dataset: str, in_use: set[str]) -> str:
        n = 0
        while f"{dsid}-{n}" in in_use:
            n += 1
        slot = f"{dsid}-{n}"
        os.makedirs(self.path(slot), mode=0o700, exist_ok=True)
        _write_json(os.path.join(self.path(slot), "slot.json"), {"dataset": dataset, "dsid": dsid})
        return slot

    def all(self) -> list[tuple[str, str]]:
        """(slot, dataset) of every slot on this node."""
        out = []
        for name in sorted(os.listdir(self.root)):
            try:
                with open(os.path.join(self.root, name, "slot.json")) as f:
                    out.append((name, json.load(f)["dataset"]))
            except (OSError, ValueError, KeyError):
                continue
        return out
