"""The dataset catalog, searchable, in both languages."""

from __future__ import annotations

from flask import Blueprint, abort, current_app, render_template, request
from flask.typing import ResponseReturnValue

from portal import catalog as datasets

bp = Blueprint("catalog", __name__)


def entries() -> list[dict]:
    return datasets.load(current_app.extensions["portal.settings"].datasets_dir)


@bp.route("/")
def index() -> ResponseReturnValue:
    query = request.args.get("q", "")
    return render_template("catalog/index.html", entries=datasets.search(entries(), query),
                           q=query)


@bp.route("/catalog/<dataset_id>")
def dataset(dataset_id: str) -> ResponseReturnValue:
    entry = next((e for e in entries() if e["id"] == dataset_id), None)
    if entry is None:
        abort(404)
    return render_template("catalog/dataset.html", entry=entry, fields=datasets.fields(entry))
