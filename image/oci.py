"""A small OCI image writer and reader, so that the image can be built and checked without a Docker
engine (image/build.sh, `make image`).

    python3 image/oci.py pack ROOTFS LAYOUT --tag TAG --config image/config.json
    python3 image/oci.py unpack LAYOUT TAG DEST

`pack` writes one gzip layer of ROOTFS into an OCI image layout (image-spec 1.1: `oci-layout`,
`index.json`, `blobs/sha256/...`) with an image config holding the runtime settings of
config.json (user, entrypoint, env). Entries are added in sorted order with numeric owners and no
user/group names, so the same rootfs gives the same layer. What a container runtime provides
itself is left out: the contents of /proc, /sys and /dev, and sockets and FIFOs anywhere.
`unpack` extracts the layer of a tag (what a runtime would run), for the chroot checks.

Standard library only: it runs with the host's python3 before any virtualenv exists.
"""
from __future__ import annotations

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import platform
import stat
import sys
import tarfile

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
RUNTIME_DIRS = ("proc", "sys", "dev")     # kept as empty directories: the runtime mounts them
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


class _HashingWriter(io.RawIOBase):
    """A file-like sink that hashes and counts what passes through it on its way to `out`."""

    def __init__(self, out):
        self.out, self.sha, self.size = out, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.sha.update(b)
        self.size += len(b)
        self.out.write(b)
        return len(b)


def _entries(root: str):
    """(path relative to root, path on disk) for everything in the layer, parents first, sorted."""
    yield ".", root
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            rel = os.path.normpath(os.path.join(rel_dir, name))
            path = os.path.join(dirpath, name)
            yield rel, path
        if rel_dir == ".":
            # Do not descend into what the runtime provides (the directories themselves stay).
            dirnames[:] = [d for d in dirnames if d not in RUNTIME_DIRS]


def write_layer(root: str, out, mtime: int | None = None) -> tuple[str, str, int]:
    """Write ROOT as a gzip'd tar to `out`; returns (diff_id, digest, size): the sha256 of the tar
    itself (what the config lists) and of the compressed blob (what the manifest lists)."""
    blob = _HashingWriter(out)
    with gzip.GzipFile(fileobj=blob, mode="wb", mtime=0, compresslevel=6) as gz:
        raw = _HashingWriter(gz)
        with tarfile.open(fileobj=raw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for rel, path in _entries(root):
                st = os.lstat(path)
                if stat.S_ISSOCK(st.st_mode) or stat.S_ISFIFO(st.st_mode):
                    continue
                if (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
                    continue                 # device nodes: the runtime makes /dev
                info = tar.gettarinfo(path, arcname=rel)
                info.uname = info.gname = ""
                if mtime is not None:
                    info.mtime = min(info.mtime, mtime)
                if info.isreg():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    return "sha256:" + raw.sha.hexdigest(), "sha256:" + blob.sha.hexdigest(), blob.size


def _put_blob(layout: str, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(layout, "blobs", "sha256", digest)
    with open(path, "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + digest, "size": len(data)}


def _canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def pack(rootfs: str, layout: str, tag: str, runtime_config: dict, name: str = "",
         labels: dict[str, str] | None = None) -> dict:
    """Write (or add to) the OCI layout at `layout`; the tag replaces an older one of that name."""
    blobs = os.path.join(layout, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    tmp = os.path.join(blobs, "layer.tmp")
    with open(tmp, "wb") as f:
        diff_id, digest, size = write_layer(rootfs, f, int(epoch) if epoch else None)
    os.replace(tmp, os.path.join(blobs, digest.split(":", 1)[1]))
    created = (datetime.datetime.fromtimestamp(int(epoch), datetime.UTC) if epoch
               else datetime.datetime.now(datetime.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    config = {
        "created": created, "architecture": ARCH, "os": "linux",
        "config": {**runtime_config, "Labels": {**runtime_config.get("Labels", {}), **(labels or {})}},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": "image/build.sh (debootstrap, image/oci.py)"}],
    }
    config_desc = {"mediaType": MEDIA_CONFIG, **_put_blob(layout, _canonical_json(config))}
    manifest = {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST, "config": config_desc,
                "layers": [{"mediaType": MEDIA_LAYER, "digest": digest, "size": size}]}
    ref_annotations = {"org.opencontainers.image.ref.name": tag}
    if name:
        ref_annotations["io.containerd.image.name"] = f"{name}:{tag}"
    manifest_desc = {"mediaType": MEDIA_MANIFEST, **_put_blob(layout, _canonical_json(manifest)),
                     "platform": {"architecture": ARCH, "os": "linux"}, "annotations": ref_annotations}
    index_path = os.path.join(layout, "index.json")
    try:
        with open(index_path) as f:
            index = json.load(f)
    except FileNotFoundError:
        index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": []}
    index["manifests"] = [m for m in index["manifests"]
                          if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag]
    index["manifests"].append(manifest_desc)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(index_path + ".tmp", "w") as f:
        json.dump(index, f, indent=1)
    os.replace(index_path + ".tmp", index_path)
    _collect_garbage(layout, index)
    return manifest


def _read_blob(layout: str, digest: str, verify: bool = True) -> bytes:
    algo, hexd = digest.split(":", 1)
    with open(os.path.join(layout, "blobs", algo, hexd), "rb") as f:
        data = f.read()
    if verify and hashlib.sha256(data).hexdigest() != hexd:
        raise ValueError(f"blob {digest} does not match its digest")
    return data


def _collect_garbage(layout: str, index: dict) -> None:
    """Remove blobs no tag refers to any more (older builds of the same tag)."""
    live = set()
    for m in index["manifests"]:
        live.add(m["digest"].split(":", 1)[1])
        manifest = json.loads(_read_blob(layout, m["digest"], verify=False))
        for d in [manifest["config"], *manifest["layers"]]:
            live.add(d["digest"].split(":", 1)[1])
    blobs = os.path.join(layout, "blobs", "sha256")
    for name in os.listdir(blobs):
        if name not in live:
            os.unlink(os.path.join(blobs, name))


def read_image(layout: str, tag: str) -> tuple[dict, dict]:
    """(manifest, config) of a tag, every digest verified."""
    with open(os.path.join(layout, "index.json")) as f:
        index = json.load(f)
    for m in index["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            manifest = json.loads(_read_blob(layout, m["digest"]))
            config = json.loads(_read_blob(layout, manifest["config"]["digest"]))
            return manifest, config
    raise KeyError(f"no tag {tag!r} in {layout}")


def unpack(layout: str, tag: str, dest: str) -> dict:
    """Extract the layers of `tag` into `dest` (which should be empty); returns the image config."""
    manifest, config = read_image(layout, tag)
    os.makedirs(dest, exist_ok=True)
    for i, layer in enumerate(manifest["layers"]):
        data = _read_blob(layout, layer["digest"])
        raw = gzip.decompress(data)
        if "sha256:" + hashlib.sha256(raw).hexdigest() != config["rootfs"]["diff_ids"][i]:
            raise ValueError(f"layer {i} does not match its diff_id")
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            tar.extractall(dest, numeric_owner=True, filter="fully_trusted")
    return config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="oci.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("rootfs")
    a.add_argument("layout")
    a.add_argument("--tag", required=True)
    a.add_argument("--config", required=True, help="JSON: the image config's `config` (User, Entrypoint ...)")
    a.add_argument("--name", default="", help="repository, recorded for containerd (io.containerd.image.name)")
    a.add_argument("--version", default="")
    a.add_argument("--revision", default="")
    u = sub.add_parser("unpack")
    u.add_argument("layout")
    u.add_argument("tag")
    u.add_argument("dest")
    args = p.parse_args(argv)
    if args.cmd == "pack":
        with open(args.config) as f:
            runtime_config = json.load(f)
        labels = {"org.opencontainers.image.title": "cachefs",
                  "org.opencontainers.image.version": args.version or args.tag,
                  "org.opencontainers.image.revision": args.revision,
                  "org.opencontainers.image.base.name": "debian:bookworm (debootstrap minbase)"}
        manifest = pack(args.rootfs, args.layout, args.tag, runtime_config, args.name,
                        {k: v for k, v in labels.items() if v})
        layer = manifest["layers"][0]
        print(f"{args.layout}: {args.tag} layer {layer['digest'][:19]} {layer['size'] / 2**20:.1f} MiB",
              file=sys.stderr)
    else:
        unpack(args.layout, args.tag, args.dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
