"""Generalisation ladders: for the distinct values of one column, the label each value has
at every level of its hierarchy. The last level is always "*" (the value suppressed), so
every column can be generalised until the minimum count holds."""

from __future__ import annotations

import polars as pl

from sandbox.data.reference import icd10
from sandbox.data.spec import (
    BandsHierarchy,
    DateHierarchy,
    GroupingHierarchy,
    Hierarchy,
    Icd10Hierarchy,
    PathHierarchy,
    SuppressHierarchy,
)

TOP = "*"


def level_names(hierarchy: Hierarchy) -> list[str]:
    """Human names of the levels, "*" last."""
    match hierarchy:
        case BandsHierarchy(widths=widths):
            names = [f"{w}-wide bands" for w in widths]
        case DateHierarchy(levels=levels) | Icd10Hierarchy(levels=levels):
            names = list(levels)
        case PathHierarchy(depths=depths):
            names = [f"first {d} parts" for d in depths]
        case GroupingHierarchy(groups=groups):
            names = ["value"] + [f"groups {i + 1}" for i in range(len(groups))]
        case SuppressHierarchy():
            names = ["value"]
    return [*names, "suppressed"]


def ladder(hierarchy: Hierarchy, values: pl.Series) -> list[list[str]]:
    """Labels of ``values`` (distinct, non-null) at each level, coarsest ("*") last."""
    frame = pl.DataFrame({"v": values})
    match hierarchy:
        case BandsHierarchy(widths=widths):
            levels = [_bands(frame, w) for w in widths]
        case DateHierarchy(levels=names):
            levels = [_dates(frame, name) for name in names]
        case PathHierarchy(depths=depths, separator=sep):
            levels = [
                frame.select(pl.col("v").str.split(sep).list.head(d).list.join(sep))
                .to_series().to_list()
                for d in depths
            ]
        case Icd10Hierarchy(levels=names):
            codes = values.to_list()
            levels = [[_icd10(code, name) for code in codes] for name in names]
        case GroupingHierarchy(groups=groups):
            current = [str(v) for v in values.to_list()]
            levels = [current]
            for mapping in groups:
                member_of = {m: group for group, members in mapping.items() for m in members}
                current = [member_of.get(v, v) for v in current]
                levels.append(current)
        case SuppressHierarchy():
            levels = [[str(v) for v in values.to_list()]]
    return [*levels, [TOP] * len(values)]


def icd10_label(label: str) -> str:
    """Chinese name of a generalised ICD-10 label. A label above code level holds only the
    rare codes lifted into it, so its name says "other"."""
    if label == TOP:
        return "其他罕见诊断（已泛化）"
    names = {d.code: d.name for d in icd10.DIAGNOSES}
    if label in names:
        return names[label]
    same_category = [d.name for d in icd10.DIAGNOSES if icd10.category(d.code) == label]
    if same_category:
        return f"{same_category[0]}等（同类其他）"
    for start, end, name in icd10.BLOCKS:
        if label == f"{start}-{end}":
            return f"{name}（其他）"
    for numeral, _, _, name in icd10.CHAPTERS:
        if label == f"Chapter {numeral}":
            return f"{name}（其他）"
    return label


def _bands(frame: pl.DataFrame, width: int) -> list[str]:
    low = (pl.col("v") // width * width).cast(pl.Int64)
    return frame.select(pl.format("{}-{}", low, low + width - 1)).to_series().to_list()


def _dates(frame: pl.DataFrame, level: str) -> list[str]:
    v = pl.col("v")
    expr = {
        "day": v.dt.strftime("%Y-%m-%d"),
        "month": v.dt.strftime("%Y-%m"),
        "quarter": pl.format("{}-Q{}", v.dt.year(), v.dt.quarter()),
        "year": v.dt.year().cast(pl.String),
    }[level]
    return frame.select(expr).to_series().to_list()


def _icd10(code: str, level: str) -> str:
    if level == "code":
        return code
    if level == "category":
        return icd10.category(code)
    if level == "block":
        block, _ = icd10.block_of(code)
        return block if "-" in block else f"Chapter {block}"
    numeral, _ = icd10.chapter_of(code)
    return f"Chapter {numeral}"
