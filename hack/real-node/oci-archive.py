#!/usr/bin/env python3
"""Packs files into a one-layer OCI image-layout archive that `ctr images import` loads; no daemon, stdlib only.

    oci-archive.py --name localhost/x:1 --file /bin/busybox=bin/busybox --link bin/sh=busybox \
        --entrypoint /bin/busybox --user 10001:10001 -o x.oci.tar

Reproducible: file times, owners and gzip's header time are fixed, entries are sorted, so the same inputs give
the same digests (the image's identity) on every run. Used for the real node's pause image and its test image
(hack/real-node/build-tools.sh); the project's own images come from `make images`.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import tarfile

EPOCH = "1970-01-01T00:00:00Z"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def layer_tar(files: list[tuple[str, str]], links: list[tuple[str, str]]) -> bytes:
    """An uncompressed layer: regular files (mode kept, owner root) and symlinks, their parent directories first."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({"/".join(p.split("/")[:i]) for p, _ in files + links for i in range(1, p.count("/") + 1)})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for dest, src in sorted(files):
            info = tar.gettarinfo(src, arcname=dest)
            info.uid = info.gid = info.mtime = 0
            info.uname = info.gname = ""
            with open(src, "rb") as f:
                tar.addfile(info, f)
        for dest, target in sorted(links):
            info = tarfile.TarInfo(dest)
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
            tar.addfile(info)
    return out.getvalue()


def pair(text: str, sep: str) -> tuple[str, str]:
    left, found, right = text.partition(sep)
    if not found or not left or not right:
        raise argparse.ArgumentTypeError(f"expected A{sep}B, got {text!r}")
    return left, right


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True, help="image reference, e.g. localhost/hdc-real-node/pause:3.10.2")
    ap.add_argument("--file", action="append", default=[], type=lambda s: pair(s, "="), help="SRC=PATH_IN_IMAGE")
    ap.add_argument("--link", action="append", default=[], type=lambda s: pair(s, "="), help="PATH=TARGET")
    ap.add_argument("--entrypoint", action="append", default=[])
    ap.add_argument("--user", default="")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()

    files = [(dest.lstrip("/"), src) for src, dest in args.file]
    links = [(path.lstrip("/"), target) for path, target in args.link]
    layer = layer_tar(files, links)
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0) as z:
        z.write(layer)
    blobs: dict[str, bytes] = {}

    def blob(data: bytes, media_type: str) -> dict[str, object]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    config = {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "WorkingDir": "/"}
    if args.entrypoint:
        config["Entrypoint"] = args.entrypoint
    if args.user:
        config["User"] = args.user
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "created": EPOCH,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
        "history": [{"created": EPOCH, "created_by": "hack/real-node/oci-archive.py"}],
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": blob(json.dumps(image_config, sort_keys=True).encode(), "application/vnd.oci.image.config.v1+json"),
        "layers": [blob(gz.getvalue(), "application/vnd.oci.image.layer.v1.tar+gzip")],
    }
    descriptor = blob(json.dumps(manifest, sort_keys=True).encode(), OCI_MANIFEST)
    tag = args.name.rsplit(":", 1)[1] if ":" in args.name.rsplit("/", 1)[-1] else "latest"
    descriptor["annotations"] = {"io.containerd.image.name": args.name, "org.opencontainers.image.ref.name": tag}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [descriptor]}
    entries = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}', "index.json": json.dumps(index).encode()}
    entries.update({f"blobs/sha256/{d.removeprefix('sha256:')}": data for d, data in sorted(blobs.items())})
    with tarfile.open(args.output, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    print(f"{args.output}: {args.name} {descriptor['digest']}")


if __name__ == "__main__":
    main()
