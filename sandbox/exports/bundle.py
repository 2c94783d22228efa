"""The export bundle: a zip of the approved files, a provenance manifest (project,
datasets and versions, receipts, ε spent, times, reviewers, file digests), citation text,
and the manifest's Ed25519 signature, verifiable with the portal's public key.

The bundle is built once at release (the record of what was released) and again for every
download: each file is rebuilt as the reviewers saw it (``reviewed``: no notebook or PDF
metadata they were not shown), each downloaded copy carries a watermark naming the
account and the time on every file (``watermark``), and its signed manifest names them
too, with the digests of the marked files — so the copy verifies, and says whose it is.
The manifest's ``reviewed_sha256`` is the digest of the file as submitted and reviewed."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from datetime import datetime

from sandbox import receipts
from sandbox.errors import InputError
from sandbox.exports.reviewed import rebuild
from sandbox.exports.watermark import watermark

__all__ = ["CITATION", "MANIFEST", "SIGNATURE", "Download", "build", "check_reviewed",
           "citation", "verify", "watermark"]

MANIFEST, SIGNATURE, CITATION = "manifest.json", "manifest.sig.json", "CITATION.txt"


@dataclass(frozen=True)
class Download:
    """Who downloads a bundle, and when."""

    account: str  # the account's sign-in name (e-mail)
    user: int
    at: datetime

    def mark(self, project: str) -> str:
        return (f"{project} | downloaded by {self.account} (user {self.user}) | "
                f"{self.at:%Y-%m-%d %H:%M:%S} UTC")


def build(files: list[tuple[str, bytes]], manifest: dict, signer: receipts.Signer,
          released_at: datetime, download: Download | None = None) -> bytes:
    """The zip: marked files, manifest with their digests (and, for a download, who and
    when), signature, citation. Without ``download`` the mark names the release."""
    project = manifest["project"]
    mark = download.mark(project) if download else \
        f"{project} | released {released_at:%Y-%m-%d %H:%M} UTC"
    marked = [(name, watermark(name, rebuild(name, content), mark)) for name, content in files]
    manifest = {k: v for k, v in manifest.items()
                if k not in ("files", receipts.DOMAIN_FIELD)}
    manifest |= {"released_at": released_at.isoformat(timespec="seconds"), "watermark": mark,
                 "files": [{"name": name, "sha256": hashlib.sha256(content).hexdigest(),
                            "bytes": len(content),
                            "reviewed_sha256": hashlib.sha256(original).hexdigest()}
                           for (name, content), (_, original) in zip(marked, files,
                                                                     strict=True)]}
    if download:
        manifest |= {"downloaded_by": {"account": download.account, "user": download.user},
                     "downloaded_at": download.at.isoformat(timespec="seconds")}
    signed = signer.sign(manifest, receipts.Domain.MANIFEST)
    manifest = signed["payload"]  # what was signed, its domain included
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in marked:
            archive.writestr(f"files/{name}", content)
        archive.writestr(MANIFEST, json.dumps(manifest, ensure_ascii=False, indent=2))
        archive.writestr(SIGNATURE, json.dumps({k: v for k, v in signed.items()
                                                if k != "payload"}, indent=2))
        archive.writestr(CITATION, citation(manifest))
    return out.getvalue()


def check_reviewed(manifest: dict, files: list[tuple[str, bytes]]) -> None:
    """Raise ``InputError`` unless ``files`` are exactly the reviewed files the signed
    release ``manifest`` lists (by their digests before marking)."""
    released = {f["name"]: f.get("reviewed_sha256") for f in manifest["files"]}
    given = {name: hashlib.sha256(content).hexdigest() for name, content in files}
    if released != given:
        changed = sorted(n for n in released.keys() | given.keys()
                         if released.get(n) != given.get(n))
        raise InputError(f"the files differ from those released: {', '.join(changed)}",
                         zh=f"文件与发布时不一致：{'、'.join(changed)}")


def citation(manifest: dict) -> str:
    datasets = ", ".join(f"{d['id']} {d['version']}" for d in manifest["datasets"])
    return (f"数据来源：{datasets}，经医疗数据沙箱以差分隐私方式发布（项目 {manifest['project']}，"
            f"ε = {manifest['epsilon_spent']:g}），发布编号 {manifest['export']}。\n"
            f"Data source: {datasets}, released with differential privacy through the "
            f"medical data sandbox (project {manifest['project']}, "
            f"ε = {manifest['epsilon_spent']:g}), export {manifest['export']}.\n")


def verify(bundle: bytes, public_pem: bytes) -> dict:
    """The manifest of a genuine, unaltered bundle; raises ``InputError`` otherwise."""
    with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
        manifest = json.loads(archive.read(MANIFEST))
        signature = json.loads(archive.read(SIGNATURE))
        receipts.verify({"payload": manifest, **signature}, public_pem,
                        receipts.Domain.MANIFEST)
        for entry in manifest["files"]:
            if hashlib.sha256(archive.read(f"files/{entry['name']}")).hexdigest() \
                    != entry["sha256"]:
                raise InputError(f"{entry['name']} was altered after release")
    return manifest
