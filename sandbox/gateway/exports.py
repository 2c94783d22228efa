"""Export requests: files and receipts a project asks to take out. The gateway records them
(with each file's size and SHA-256) and the portal collects them for review; nothing leaves
until the controllers approve it there."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine, insert, select

from sandbox import audit
from sandbox.audit import AuditAction
from sandbox.errors import InputError
from sandbox.gateway.grants import Grant, now
from sandbox.gateway.store import exports


class ExportFileIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=r"^[^/\\\x00]+$")
    content: str = Field(description="base64")


class ExportIn(BaseModel):
    """Files and receipts a project asks to take out (checked and reviewed in the portal)."""

    model_config = ConfigDict(extra="forbid")

    files: list[ExportFileIn] = Field(min_length=1, max_length=200)
    receipts: list[dict] = Field(default_factory=list, max_length=1000)
    note: str = Field(default="", max_length=5000, pattern=r"^[^\x00]*$")


def submit(db: Engine, grant: Grant, request: ExportIn, actor: str | None = None) -> dict:
    """Record an export request of this project; nothing leaves until it is reviewed.
    ``actor``: who asked, when not the project's own token (the portal, for files it read
    from the project's sandbox on the researcher's request)."""
    grant.check_usable()
    files = []
    for item in request.files:
        if item.name.startswith(".") or item.name in {n["name"] for n in files}:
            raise InputError(f"file name {item.name!r} is hidden or given twice")
        try:
            content = base64.b64decode(item.content, validate=True)
        except ValueError:
            raise InputError(f"{item.name}: content is not base64") from None
        files.append({"name": item.name, "size": len(content),
                      "sha256": hashlib.sha256(content).hexdigest(), "content": item.content})
    row = {"id": uuid.uuid4().hex, "grant_id": grant.id, "project": grant.project,
           "note": request.note, "files": json.dumps(files),
           "receipts": json.dumps(request.receipts), "created_at": now()}
    with db.begin() as conn:
        conn.execute(insert(exports).values(**row))
        audit.append(conn, AuditAction.EXPORT_SUBMITTED, actor or f"grant:{grant.id}",
                     f"export:{row['id']}", {"grant": grant.id, "files": len(files),
                                             "bytes": sum(f["size"] for f in files),
                                             "receipts": len(request.receipts)})
    return {"export": row["id"], "files": [{k: f[k] for k in ("name", "size", "sha256")}
                                           for f in files]}


def after(db: Engine, created_after: str) -> list[dict]:
    """Export requests recorded after ``created_after`` (a creation time), with their files."""
    with db.connect() as conn:
        rows = conn.execute(select(exports).where(exports.c.created_at > created_after)
                            .order_by(exports.c.created_at)).mappings().all()
    return [{**dict(r), "files": json.loads(r["files"]), "receipts": json.loads(r["receipts"])}
            for r in rows]
