"""The released export bundle: a zip of the approved files — figures and PDFs watermarked
with the project and the time — a provenance manifest (project, datasets and versions,
receipts, ε spent, times, reviewers, file digests), citation text, and the manifest's
Ed25519 signature, verifiable with the portal's public key."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from datetime import datetime

from PIL import Image, ImageDraw
from pypdf import PdfReader, PdfWriter
from reportlab.lib.pagesizes import A4
from reportlab.pdfgen import canvas

from sandbox import receipts
from sandbox.errors import InputError

MANIFEST, SIGNATURE, CITATION = "manifest.json", "manifest.sig.json", "CITATION.txt"


def watermark(name: str, content: bytes, mark: str) -> bytes:
    """``content`` with ``mark`` drawn on it, for PNG/JPEG figures and PDFs; other files
    are returned as they are."""
    suffix = name.lower().rsplit(".", 1)[-1]
    if suffix in ("png", "jpg", "jpeg"):
        image = Image.open(io.BytesIO(content)).convert("RGB")
        draw = ImageDraw.Draw(image)
        box = draw.textbbox((0, 0), mark)
        height = box[3] - box[1] + 6
        draw.rectangle((0, image.height - height, image.width, image.height), fill="white")
        draw.text((4, image.height - height + 2), mark, fill=(120, 120, 120))
        out = io.BytesIO()
        image.save(out, format="PNG" if suffix == "png" else "JPEG")
        return out.getvalue()
    if suffix == "pdf":
        stamp = io.BytesIO()
        pdf = canvas.Canvas(stamp, pagesize=A4)
        pdf.setFont("Helvetica", 8)
        pdf.setFillGray(0.45)
        pdf.drawString(20, 12, mark)
        pdf.save()
        overlay = PdfReader(io.BytesIO(stamp.getvalue())).pages[0]
        writer = PdfWriter()
        for page in PdfReader(io.BytesIO(content)).pages:
            page.merge_page(overlay)
            writer.add_page(page)
        out = io.BytesIO()
        writer.write(out)
        return out.getvalue()
    return content


def build(files: list[tuple[str, bytes]], manifest: dict, signer: receipts.Signer,
          released_at: datetime) -> bytes:
    """The zip: watermarked files, manifest with their digests, signature, citation."""
    mark = f"{manifest['project']} · released {released_at:%Y-%m-%d %H:%M} UTC"
    marked = [(name, watermark(name, content, mark)) for name, content in files]
    manifest = {**manifest, "released_at": released_at.isoformat(timespec="seconds"),
                "files": [{"name": name, "sha256": hashlib.sha256(content).hexdigest(),
                           "bytes": len(content)} for name, content in marked]}
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
