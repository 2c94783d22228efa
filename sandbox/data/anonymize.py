"""Minimum-count generalisation (the guide's "each description covers ≥ 5 patients").

Three steps, all over integer codes so each pass is one Polars group-by:

1. *Rare values* of every quasi-identifier are lifted one hierarchy level at a time until each
   label covers ≥ k patients — the guide's cervical-cancer example (4 patients → generalise
   the diagnosis). For categories only the rare values move (common siblings keep their own
   label); for bands and dates the whole neighbouring range moves, so ranges never overlap —
   but never to "*", which would take the whole column along for one rare range: those
   records are left to the suppression budget (and to step 2 beyond it).
2. *Combinations*: while more than ``max_suppression`` of the records sit in a combination
   of quasi-identifier values covering < k patients, the quasi-identifier with the most
   distinct values is generalised one level for all values (Datafly). Then each
   quasi-identifier in turn is *lowered* back one level (its most generalised values), as
   long as the records step 3 would then suppress stay within ``max_suppression``: no
   column is left coarser than the budget needs.
3. The remaining records in small combinations are suppressed. The sensitive attribute's
   rare values are lifted the same way (to "*" if need be: rows are never removed for it
   unless even "*" is rare), and steps 3's check is repeated until nothing changes.

k counts distinct patients, not records: a patient with many visits is still one person.

Every step reads the rows a patient bucket at a time (``sandbox.data.codes``); what stays in
memory is per distinct value (each column's ladder and levels) and one bit per row, so the
same extract gives the same result whatever the number of buckets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from sandbox.data import codes
from sandbox.data.codes import Rows
from sandbox.data.hierarchy import TOP, ladder, level_names
from sandbox.data.spec import Hierarchy
from sandbox.data.spill import Workspace
from sandbox.errors import PolicyRefusal


@dataclass
class Column:
    """One generalisable column: its distinct values, their ladder and current levels."""

    name: str
    hierarchy: Hierarchy
    values: list[object]
    labels: np.ndarray  # (levels, distinct + 1) labels; the extra column is null → "*"
    has_null: bool
    level: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.level = np.zeros(self.labels.shape[1], dtype=np.int64)
        self.level[-1] = self.labels.shape[0] - 1

    @classmethod
    def build(cls, name: str, hierarchy: Hierarchy, distinct: pl.Series, has_null: bool
              ) -> Column:
        """From the column's sorted distinct non-null values (row ``codes`` index them)."""
        rungs = ladder(hierarchy, distinct)
        labels = np.array([[*rung, TOP] for rung in rungs], dtype=object)
        return cls(name, hierarchy, distinct.to_list(), labels, has_null)

    @property
    def top(self) -> int:
        return self.labels.shape[0] - 1

    def current(self) -> np.ndarray:
        """Label of every distinct value at its current level."""
        return self.labels[self.level, np.arange(self.labels.shape[1])]

    def distinct_label_ids(self) -> np.ndarray:
        """Per distinct value: an integer id of its current label (equal labels, equal ids)."""
        _, inverse = np.unique(self.current().astype(str), return_inverse=True)
        return inverse

    def distinct_labels(self) -> int:
        """How many labels the rows carry now."""
        present = self.current() if self.has_null else self.current()[:-1]
        return len(set(present))

    @property
    def ordered(self) -> bool:
        """Bands and dates are ranges: a lifted value takes its neighbours along, so ranges
        never overlap. Categories (codes, places, groups) lift alone: common siblings keep
        their own label and the parent label stands for the rare rest ("other")."""
        return self.hierarchy.kind in ("bands", "date")

    def lift(self, which: np.ndarray) -> None:
        """Raise the distinct values ``which`` one level (see ``ordered``)."""
        which = which & (self.level < self.top)
        which[-1] = False
        if self.ordered:
            for up in np.unique(self.level[which] + 1):
                parents = self.labels[up, which & (self.level + 1 == up)]
                siblings = np.isin(self.labels[up], parents)
                self.level[siblings] = np.maximum(self.level[siblings], up)
        else:
            self.level[which] += 1

    def lift_floor(self) -> None:
        """Generalise every value at least one level beyond the least generalised one."""
        floor = min(int(self.level[:-1].min()) + 1, self.top) if len(self.values) else self.top
        self.level = np.maximum(self.level, floor)

    def lowered(self) -> np.ndarray | None:
        """The levels with this column's most generalised values one level lower (for bands
        and dates, whole ranges split into the finer ranges they hold); None if every value
        is raw already."""
        high = int(self.level[:-1].max()) if len(self.values) else 0
        if high == 0:
            return None
        level = self.level.copy()
        level[:-1][self.level[:-1] == high] -= 1
        return level

    def output(self, codes_: np.ndarray) -> pl.Series:
        """The labels of rows with these codes."""
        labels = pl.Series(self.current().astype(str).tolist(), dtype=pl.String)
        return labels.gather(codes_).alias(self.name)

    def describe(self, records: np.ndarray) -> dict[str, object]:
        """How the column was generalised; ``records``: kept records per code."""
        return describe(self.hierarchy, self.values, self.level, self.labels, records)


@dataclass
class Outcome:
    """Which rows survive (``rows`` keeps the flags) and how each column was generalised."""

    rows: Rows
    columns: dict[str, Column]
    rounds: int
    suppressed_records: int
    suppressed_patients: int


def describe(hierarchy: Hierarchy, values: list[object], level: np.ndarray,
             labels: np.ndarray, records: np.ndarray) -> dict[str, object]:
    """A column's generalisation for the risk report, with the information it lost: the
    share of (kept, non-null) records shown coarser than the hierarchy's finest level, and
    the precision lost — each record's level over the hierarchy's height, averaged (0:
    every value at the finest level; 1: every value "*")."""
    names = level_names(hierarchy)
    levels, top = level[:-1], labels.shape[0] - 1
    current = labels[level, np.arange(labels.shape[1])]
    lifted = np.flatnonzero(levels > 0)
    weights = records[:-1]
    total = int(weights.sum())
    return {
        "hierarchy": hierarchy.kind,
        "levels_used": ([names[i] for i in sorted({int(x) for x in levels})] if values
                        else [names[top]]),
        "distinct_before": len(values),
        "distinct_after": len(set(current[:-1])) if values else 0,
        "values_lifted": len(lifted),
        "records_generalised": round(float(weights[levels > 0].sum()) / total, 6)
        if total else 0.0,
        "precision_lost": round(float((weights * levels).sum()) / (total * top), 6)
        if total and top else 0.0,
        "examples": {str(values[i]): str(current[i]) for i in lifted[:20]},
    }


def maps(columns: list[Column]) -> dict[str, np.ndarray]:
    """Code → current label id, per column."""
    return {c.name: c.distinct_label_ids() for c in columns}


def lift_rare(columns: list[Column], rows: Rows, k: int, *, whole: bool = False
              ) -> dict[str, np.ndarray]:
    """Step 1: lift values covering < k patients among the kept rows, every column at once
    (they do not interact); returns the final patients per label id of each column. A band
    or date range goes to "*" only if ``whole`` (the sensitive attribute)."""
    pending = list(columns)
    final: dict[str, np.ndarray] = {}
    while pending:
        current = maps(pending)
        counts = codes.patients_per_label(rows, current)
        still = []
        for column in pending:
            per_label, present = counts[column.name]
            ceiling = column.top - (1 if column.ordered and not whole else 0)
            rare = present & (per_label[current[column.name]] < k) & (column.level < ceiling)
            if rare.any():
                column.lift(rare)
                still.append(column)
            else:
                final[column.name] = per_label
        pending = still
    return final


def lower(quasi: list[Column], sensitive: Column | None, rows: Rows, k: int,
          max_suppression: float, work: Workspace) -> None:
    """Step 2's end: lower each column back one level while the records step 3 would
    suppress stay within ``max_suppression``, until none can be."""
    budget = max_suppression * rows.records
    lowered = True
    while lowered:
        lowered = False
        for column in quasi:
            finer = column.lowered()
            if finer is None:
                continue
            coarser, column.level = column.level, finer
            # step 3 suppresses at least the records in small combinations (and, with no
            # sensitive attribute, exactly those): the whole step is tried only if need be
            within = _small(rows, quasi, k, work, count_only=True)[0] <= budget
            if within and sensitive is not None:
                within = _trial(rows, quasi, sensitive, k, work) <= budget
            if within:
                lowered = True
            else:
                column.level = coarser


def suppress(rows: Rows, quasi: list[Column], sensitive: Column | None, k: int,
             work: Workspace) -> int:
    """Step 3: suppress the records in small combinations, and the sensitive attribute's
    rare values (lifted first), until nothing changes; how many records are suppressed."""
    _, combinations = _small(rows, quasi, k, work)
    if combinations is not None:
        codes.drop_combinations(rows, maps(quasi), combinations)
    while True:
        changed = False
        if sensitive is not None:
            per_label = lift_rare([sensitive], rows, k, whole=True)[sensitive.name]
            changed = codes.drop_labels(rows, sensitive.name, sensitive.distinct_label_ids(),
                                        per_label < k) > 0
        _, combinations = _small(rows, quasi, k, work)
        if combinations is not None:
            changed = codes.drop_combinations(rows, maps(quasi), combinations) > 0 or changed
        if not changed:
            return rows.records - rows.kept


def _trial(rows: Rows, quasi: list[Column], sensitive: Column, k: int, work: Workspace
           ) -> int:
    """How many records step 3 would suppress at the current levels; nothing changed."""
    kept, levels = rows.snapshot(), sensitive.level.copy()
    try:
        return suppress(rows, quasi, sensitive, k, work)
    finally:
        rows.restore(kept)
        sensitive.level = levels


def _small(rows: Rows, qi: list[Column], k: int, work: Workspace, count_only: bool = False
           ) -> tuple[int, pl.DataFrame | None]:
    """Records in combinations covering < k patients; those combinations if any."""
    totals = codes.combination_totals(rows, maps(qi), work)
    try:
        aggs = [pl.col("n").sum(), pl.col("r").sum()]
        in_small = sum(int(g.filter(pl.col("n") < k)["r"].sum()) for g in totals.groups(aggs))
        if not in_small or count_only:
            return in_small, None
        return in_small, pl.concat([g.filter(pl.col("n") < k) for g in totals.groups(aggs)])
    finally:
        totals.remove()


def generalise(rows: Rows, quasi: list[Column], sensitive: Column | None, k: int,
               max_suppression: float, work: Workspace) -> Outcome:
    """Run the three steps over ``rows`` and say which to keep, with what labels."""
    if rows.patients < k:
        raise PolicyRefusal(
            f"the dataset covers {rows.patients} patients, fewer than the minimum count {k}"
        )
    lift_rare(quasi, rows, k)

    rounds = 1
    while _small(rows, quasi, k, work, count_only=True)[0] / rows.records > max_suppression:
        candidates = [c for c in quasi if (c.level[:-1] < c.top).any()]
        if not candidates:
            break
        max(candidates, key=lambda c: c.distinct_labels()).lift_floor()
        rounds += 1
    lower(quasi, sensitive, rows, k, max_suppression, work)
    suppress(rows, quasi, sensitive, k, work)
    kept = rows.kept
    if not kept:
        raise PolicyRefusal("no record survives the minimum count; the data is too sparse")
    columns = {c.name: c for c in quasi}
    if sensitive is not None:
        columns[sensitive.name] = sensitive
    return Outcome(rows, columns, rounds, rows.records - kept, codes.lost_patients(rows))
