"""The minimum-count generalisation as it ran before onboarding streamed: every row in
memory at once, one NumPy code array per column. Kept as the oracle the bucketed version
(``sandbox.data.anonymize``) must agree with row for row; not used by the product."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from sandbox.data.anonymize import describe
from sandbox.data.hierarchy import TOP, ladder
from sandbox.data.spec import Hierarchy
from sandbox.errors import PolicyRefusal


@dataclass
class Column:
    """One generalisable column: its distinct values, their ladder and current levels."""

    name: str
    hierarchy: Hierarchy
    codes: np.ndarray  # per row: index into ``values`` (len(values) for null)
    values: list[object]
    labels: np.ndarray  # (levels, distinct + 1) labels; the extra column is null → "*"
    level: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.level = np.zeros(self.labels.shape[1], dtype=np.int64)
        self.level[-1] = self.labels.shape[0] - 1

    @classmethod
    def build(cls, name: str, hierarchy: Hierarchy, series: pl.Series) -> Column:
        distinct = series.drop_nulls().unique(maintain_order=False).sort()
        codes = (
            pl.DataFrame({"v": series})
            .join(pl.DataFrame({"v": distinct, "i": pl.arange(0, len(distinct), eager=True)}),
                  on="v", how="left", maintain_order="left")
            .get_column("i").fill_null(len(distinct)).to_numpy().astype(np.int64)
        )
        rungs = ladder(hierarchy, distinct)
        labels = np.array([[*rung, TOP] for rung in rungs], dtype=object)
        return cls(name, hierarchy, codes, distinct.to_list(), labels)

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

    def label_ids(self) -> np.ndarray:
        """Per row: the id of its current label."""
        return self.distinct_label_ids()[self.codes]

    def distinct_labels(self, rows: np.ndarray | None = None) -> int:
        codes = self.codes if rows is None else self.codes[rows]
        return len(set(self.current()[np.unique(codes)]))

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

    def output(self, rows: np.ndarray) -> pl.Series:
        labels = pl.Series(self.current().astype(str).tolist(), dtype=pl.String)
        return labels.gather(self.codes[rows]).alias(self.name)

    def lowered(self) -> np.ndarray | None:
        """The levels with the most generalised values one level lower; None if all raw."""
        if not len(self.values) or self.level[:-1].max() == 0:
            return None
        level = self.level.copy()
        high = self.level[:-1].max()
        level[:-1][self.level[:-1] == high] -= 1
        return level

    def describe(self, records: np.ndarray) -> dict[str, object]:
        return describe(self.hierarchy, self.values, self.level, self.labels, records)


@dataclass
class Outcome:
    """Which rows survive and how each column was generalised."""

    keep: np.ndarray  # boolean per row
    columns: dict[str, Column]
    rounds: int
    suppressed_records: int
    suppressed_patients: int


def _patients_per_label(label_ids: np.ndarray, patients: np.ndarray, rows: np.ndarray
                        ) -> np.ndarray:
    counts = (
        pl.DataFrame({"l": label_ids[rows], "p": patients[rows]})
        .group_by("l").agg(pl.col("p").n_unique().alias("n"))
    )
    per_label = np.zeros(int(label_ids.max()) + 1 if len(label_ids) else 1, dtype=np.int64)
    per_label[counts["l"].to_numpy()] = counts["n"].to_numpy()
    return per_label


def lift_rare(column: Column, patients: np.ndarray, rows: np.ndarray, k: int,
              whole: bool = False) -> None:
    """Step 1 for one column: lift values covering < k patients (among ``rows``); a band or
    date range to "*" only if ``whole``."""
    ceiling = column.top - (1 if column.ordered and not whole else 0)
    while True:
        distinct_ids = column.distinct_label_ids()
        per_label = _patients_per_label(distinct_ids[column.codes], patients, rows)
        present = np.zeros(len(column.level), dtype=bool)
        present[np.unique(column.codes[rows])] = True
        rare = present & (per_label[distinct_ids] < k) & (column.level < ceiling)
        if not rare.any():
            return
        column.lift(rare)


def small_classes(columns: list[Column], patients: np.ndarray, rows: np.ndarray, k: int
                  ) -> np.ndarray:
    """Boolean per row in ``rows``: whether its combination covers < k patients."""
    frame = pl.DataFrame({c.name: c.label_ids()[rows] for c in columns} | {"_p": patients[rows]})
    names = [c.name for c in columns]
    sizes = frame.group_by(names).agg(pl.col("_p").n_unique().alias("_n"))
    joined = frame.join(sizes, on=names, how="left", maintain_order="left")
    return (joined["_n"] < k).to_numpy()


def _suppress(qi: list[Column], sens: Column | None, patients: np.ndarray, k: int
              ) -> np.ndarray:
    """Step 3 over every row: which rows are kept."""
    keep = ~small_classes(qi, patients, np.arange(len(patients)), k)
    while True:
        rows = np.flatnonzero(keep)
        changed = False
        if sens is not None:
            lift_rare(sens, patients, rows, k, whole=True)
            ids = sens.label_ids()
            per_label = _patients_per_label(ids, patients, rows)
            rare_rows = per_label[ids[rows]] < k
            if rare_rows.any():
                keep[rows[rare_rows]] = False
                changed = True
                rows = np.flatnonzero(keep)
        small = small_classes(qi, patients, rows, k)
        if small.any():
            keep[rows[small]] = False
            changed = True
        if not changed:
            return keep


def generalise(
    frame: pl.DataFrame,
    quasi: dict[str, Hierarchy],
    sensitive: tuple[str, Hierarchy] | None,
    patient_column: str,
    k: int,
    max_suppression: float,
) -> Outcome:
    """Run the three steps on ``frame`` and say which rows to keep, with what labels."""
    patients = frame[patient_column].rank("dense").to_numpy().astype(np.int64)
    total_patients = len(np.unique(patients))
    if total_patients < k:
        raise PolicyRefusal(
            f"the dataset covers {total_patients} patients, fewer than the minimum count {k}"
        )
    all_rows = np.arange(frame.height)
    qi = [Column.build(name, h, frame[name]) for name, h in quasi.items()]
    for column in qi:
        lift_rare(column, patients, all_rows, k)

    rounds = 0
    while True:
        rounds += 1
        small = small_classes(qi, patients, all_rows, k)
        if small.mean() <= max_suppression:
            break
        candidates = [c for c in qi if (c.level[:-1] < c.top).any()]
        if not candidates:
            break
        max(candidates, key=lambda c: c.distinct_labels()).lift_floor()
    sens = Column.build(sensitive[0], sensitive[1], frame[sensitive[0]]) if sensitive else None
    lowered = True
    while lowered:  # each column back one level while step 3 stays within the budget
        lowered = False
        for column in qi:
            finer = column.lowered()
            if finer is None:
                continue
            coarser, column.level = column.level, finer
            trial = None if sens is None else sens.level.copy()
            within = int((~_suppress(qi, sens, patients, k)).sum()) <= max_suppression * len(
                patients)
            if sens is not None:
                sens.level = trial
            if within:
                lowered = True
            else:
                column.level = coarser

    keep = _suppress(qi, sens, patients, k)
    if not keep.any():
        raise PolicyRefusal("no record survives the minimum count; the data is too sparse")
    dropped = ~keep
    kept_patients = set(np.unique(patients[keep]).tolist())
    lost_patients = len(set(np.unique(patients[dropped]).tolist()) - kept_patients)
    columns = {c.name: c for c in qi}
    if sens is not None:
        columns[sens.name] = sens
    return Outcome(keep, columns, rounds, int(dropped.sum()), lost_patients)
