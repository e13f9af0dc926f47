"""A small OCI image layout writer: layers from directory trees, and the archive that holds an image.

No daemon and no third-party code: tarfile, gzip, hashlib and json. Everything written is reproducible: the
same tree and epoch give the same bytes, hence the same digests, because entries are sorted by path, owners are
numeric (uid/gid only, no names), every mtime is clamped to the epoch (files older than it keep their time, so
the timestamps Debian's compiled stdlib .pyc files record still match their sources), the gzip header carries
no name and mtime 0, and the JSON documents are written with sorted keys.

Files lose their setuid and setgid bits: nothing in these images runs as another user, and a container should
hold no way to gain privileges.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pathlib
import stat
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
GZIP_LEVEL = 6
CHUNK = 1 << 20


@dataclass(frozen=True)
class Blob:
    """A content-addressed blob: its digest ("sha256:<hex>"), size in bytes and media type."""

    digest: str
    size: int
    media_type: str

    def descriptor(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class Layer:
    """A gzipped layer blob, the digest of its uncompressed tar (the config's diff_id) and that tar's size."""

    blob: Blob
    diff_id: str
    uncompressed_size: int

    def to_json(self) -> dict[str, object]:
        return {
            "digest": self.blob.digest,
            "size": self.blob.size,
            "diff_id": self.diff_id,
            "uncompressed_size": self.uncompressed_size,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Layer:
        blob = Blob(str(data["digest"]), int(str(data["size"])), LAYER_MEDIA_TYPE)
        return cls(blob, str(data["diff_id"]), int(str(data["uncompressed_size"])))


class HashingWriter:
    """A write-only file object that hashes and counts the bytes it passes on to target."""

    def __init__(self, target: BinaryIO | HashingWriter | gzip.GzipFile) -> None:
        self.target = target
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        self.target.write(data)
        return len(data)

    def flush(self) -> None:
        self.target.flush()

    def digest(self) -> str:
        return "sha256:" + self.sha256.hexdigest()


def blob_path(blobs: pathlib.Path, digest: str) -> pathlib.Path:
    algorithm, _, hexdigest = digest.partition(":")
    return blobs / algorithm / hexdigest


def tree_entries(root: pathlib.Path, tops: Iterable[str], excluded: Iterable[str]) -> list[str]:
    """Sorted relative paths under root: each of tops with its parent directories and everything below it,
    minus what lies below an excluded directory (the directory itself stays, empty)."""
    skipped = tuple(e.rstrip("/") + "/" for e in excluded)
    entries: set[str] = set()
    for top in tops:
        parts = pathlib.PurePosixPath(top).parts
        entries.update("/".join(parts[:i]) for i in range(1, len(parts)))
        entries.add(top)
        if not (root / top).is_dir() or (root / top).is_symlink():
            continue
        for directory, dirnames, filenames in os.walk(root / top):
            relative = os.path.relpath(directory, root)
            for name in dirnames + filenames:
                entries.add(os.path.normpath(os.path.join(relative, name)))
    return sorted(e for e in entries if e not in (".", "") and not e.startswith(skipped))


def normalized(info: tarfile.TarInfo, epoch: int) -> tarfile.TarInfo:
    info.mtime = min(int(info.mtime), epoch)
    info.uname = info.gname = ""
    if info.isfile() or info.islnk():
        info.mode &= ~(stat.S_ISUID | stat.S_ISGID)
    return info


def write_layer(
    root: pathlib.Path,
    tops: Iterable[str],
    blobs: pathlib.Path,
    epoch: int,
    excluded: Iterable[str] = (),
) -> Layer:
    """Packs tops (paths relative to root) as one gzipped layer blob stored under blobs; returns its digests.

    Device nodes, sockets and FIFOs are left out (the runtime provides /dev)."""
    staging = blobs / "staging.tmp"
    staging.parent.mkdir(parents=True, exist_ok=True)
    with open(staging, "wb") as raw:
        compressed = HashingWriter(raw)
        with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, compresslevel=GZIP_LEVEL, mtime=0) as gz:  # type: ignore[arg-type]
            uncompressed = HashingWriter(gz)
            with tarfile.open(fileobj=uncompressed, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                for relative in tree_entries(root, tops, excluded):
                    info = tar.gettarinfo(str(root / relative), arcname=relative)
                    if info is None or info.ischr() or info.isblk() or info.isfifo():
                        continue
                    info = normalized(info, epoch)
                    if info.isfile():
                        with open(root / relative, "rb") as data:
                            tar.addfile(info, data)
                    else:
                        tar.addfile(info)
    layer = Layer(
        Blob(compressed.digest(), compressed.size, LAYER_MEDIA_TYPE), uncompressed.digest(), uncompressed.size
    )
    target = blob_path(blobs, layer.blob.digest)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, target)
    return layer


def json_bytes(document: object) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def image_documents(
    config: dict[str, object],
    layers: list[Layer],
    history: list[str],
    created: str,
    architecture: str,
) -> tuple[bytes, bytes]:
    """(config JSON, manifest JSON) of an image made of layers (oldest first)."""
    config_json = json_bytes(
        {
            "architecture": architecture,
            "os": "linux",
            "created": created,
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
            "history": [{"created": created, "created_by": line} for line in history],
        }
    )
    config_blob = Blob("sha256:" + hashlib.sha256(config_json).hexdigest(), len(config_json), CONFIG_MEDIA_TYPE)
    manifest_json = json_bytes(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": config_blob.descriptor(),
            "layers": [layer.blob.descriptor() for layer in layers],
            "annotations": dict(labels_subset(config)),
        }
    )
    return config_json, manifest_json


def labels_subset(config: dict[str, object]) -> Iterator[tuple[str, str]]:
    """The org.opencontainers.image.* labels, repeated as manifest annotations (registries show those)."""
    labels = config.get("Labels") or {}
    assert isinstance(labels, dict)
    for key, value in sorted(labels.items()):
        if key.startswith("org.opencontainers.image."):
            yield key, value


def write_archive(
    path: pathlib.Path,
    reference: str,
    config_json: bytes,
    manifest_json: bytes,
    layers: list[Layer],
    blobs: pathlib.Path,
    epoch: int,
) -> str:
    """Writes the OCI image layout (oci-layout, index.json, blobs/sha256/...) of one image as a tar archive at path,
    named reference (ctr/containerd and `docker load` read io.containerd.image.name, skopeo the tag in
    org.opencontainers.image.ref.name); returns the manifest digest."""
    manifest_digest = "sha256:" + hashlib.sha256(manifest_json).hexdigest()
    tag = reference.rpartition(":")[2] if ":" in reference.rpartition("/")[2] else "latest"
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [
            {
                **Blob(manifest_digest, len(manifest_json), MANIFEST_MEDIA_TYPE).descriptor(),
                "annotations": {"io.containerd.image.name": reference, "org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    small = {
        "oci-layout": json_bytes({"imageLayoutVersion": "1.0.0"}),
        "index.json": json_bytes(index),
        blob_name(config_json): config_json,
        blob_name(manifest_json): manifest_json,
    }
    members: dict[str, bytes | pathlib.Path] = {**small}
    for layer in layers:
        members["blobs/" + layer.blob.digest.replace(":", "/")] = blob_path(blobs, layer.blob.digest)
    partial = path.with_name(path.name + ".partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("blobs", "blobs/sha256"):
            tar.addfile(archive_info(directory, 0, epoch, directory=True))
        for name in sorted(members):
            content = members[name]
            if isinstance(content, bytes):
                tar.addfile(archive_info(name, len(content), epoch), io.BytesIO(content))
            else:
                with open(content, "rb") as data:
                    tar.addfile(archive_info(name, content.stat().st_size, epoch), data)
    os.replace(partial, path)
    return manifest_digest


def blob_name(content: bytes) -> str:
    return "blobs/sha256/" + hashlib.sha256(content).hexdigest()


def archive_info(name: str, size: int, epoch: int, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = epoch
    info.mode = 0o755 if directory else 0o644
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    return info
