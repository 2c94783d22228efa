"""The reviewer's pictures of SVG figures are drawn by the server (resvg), so no file's own
bytes are ever served as a preview. The adversary is a researcher whose SVG would make
the server read its own files into the picture, or exhaust it with a huge canvas."""

from __future__ import annotations

import base64
import io

import nbformat
import pytest
from PIL import Image

from portal import previews
from tests.exports.disguises import figure

SVG = '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '


def red_png(path) -> None:
    Image.new("RGB", (50, 50), (255, 0, 0)).save(path)


def reds(png: bytes) -> int:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    return sum(1 for r, g, b in image.getdata() if r > 200 and g < 60 and b < 60)


def test_an_svg_preview_is_a_picture_drawn_by_the_server():
    svg = figure("svg")
    png = previews.picture("figure.svg", svg)
    assert png.startswith(b"\x89PNG") and svg not in png
    image = Image.open(io.BytesIO(png))
    assert image.size == (768, 576)  # 288×216 pt, drawn at twice its size
    assert image.convert("L").getextrema()[0] < 100  # the bars and axes are drawn


@pytest.mark.parametrize("link", ["{path}", "file://{path}"])
def test_an_svg_preview_never_reads_a_file_of_the_server(tmp_path, link):
    red_png(tmp_path / "secret.png")
    target = link.format(path=tmp_path / "secret.png")
    svg = (f'{SVG}width="100" height="100"><image width="100" height="100" '
           f'xlink:href="{target}"/><image width="100" height="100" href="{target}"/>'
           "</svg>").encode()
    assert reds(previews.picture("figure.svg", svg)) == 0
    inline = base64.b64encode((tmp_path / "secret.png").read_bytes()).decode()
    embedded = (f'{SVG}width="100" height="100"><image width="100" height="100" '
                f'xlink:href="data:image/png;base64,{inline}"/></svg>').encode()
    assert reds(previews.picture("figure.svg", embedded)) > 1000  # its own data: drawn


def test_a_huge_svg_canvas_is_drawn_small():
    svg = f'{SVG}width="200000" height="100000"><rect width="10" height="10"/></svg>'
    image = Image.open(io.BytesIO(previews.picture("figure.svg", svg.encode())))
    assert max(image.size) <= previews.MAX_SIDE


def test_text_in_a_font_the_server_lacks_is_still_drawn():
    svg = (f'{SVG}width="200" height="40"><text x="5" y="25" font-size="18" '
           'font-family="No Such Font">P00039</text></svg>').encode()
    image = Image.open(io.BytesIO(previews.picture("figure.svg", svg))).convert("L")
    assert image.getextrema()[0] < 100


def test_a_notebook_attachment_is_shown():
    png = figure("png")
    book = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_markdown_cell("![chart](attachment:chart.png)")
    cell.attachments = {"chart.png": {"image/png": base64.b64encode(png).decode()}}
    book.cells = [cell]
    data = nbformat.writes(book).encode()
    shown = previews.preview("analysis.ipynb", data)
    [output] = shown.cells[0].outputs
    assert output["image"] == (0, "attachment:chart.png", "image/png")
    picture = previews.picture("analysis.ipynb", data, cell=0, output="attachment:chart.png")
    assert Image.open(io.BytesIO(picture)).size == Image.open(io.BytesIO(png)).size
