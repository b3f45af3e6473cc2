"""Writes a one-layer OCI image archive (an OCI image layout in a tar, what
`ctr images import` reads) holding one static binary as /pause, run as 65535.

usage: oci-archive.py BINARY IMAGE-NAME OUT.tar   (IMAGE-NAME like localhost/x/pause:1)
The archive is byte-for-byte reproducible (fixed mtimes, owners and gzip header).
"""
import gzip, hashlib, io, json, sys, tarfile

binary, name, out = sys.argv[1:4]

def tar_bytes(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for path, data, mode in files:
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), mode, 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()

def digest(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()

layer_tar = tar_bytes([("pause", open(binary, "rb").read(), 0o755)])
layer = gzip.compress(layer_tar, mtime=0)
config = json.dumps({
    "architecture": "amd64", "os": "linux",
    "config": {"Entrypoint": ["/pause"], "User": "65535:65535", "WorkingDir": "/"},
    "rootfs": {"type": "layers", "diff_ids": [digest(layer_tar)]},
    "history": [{"created_by": "test/harness/cluster/pause/oci-archive.py"}],
}, sort_keys=True).encode()
manifest = json.dumps({
    "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config), "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(layer), "size": len(layer)}],
}, sort_keys=True).encode()
index = json.dumps({
    "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest(manifest), "size": len(manifest),
        "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]},
        "platform": {"architecture": "amd64", "os": "linux"},
    }],
}, sort_keys=True).encode()

files = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}', 0o644), ("index.json", index, 0o644)]
for blob in (layer, config, manifest):
    files.append(("blobs/sha256/" + digest(blob)[7:], blob, 0o644))
with open(out, "wb") as f:
    f.write(tar_bytes(files))
