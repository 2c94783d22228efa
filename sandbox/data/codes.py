"""The generalised columns as small integers, a patient bucket at a time, and the counts
the minimum count is decided on.

Each row of a generalised column is stored as the index of its value among the column's
sorted distinct values (the last index for null); a hierarchy level then maps every index
to a label id with one NumPy gather, so generalising never rewrites rows. Patients are
numbered uniquely across buckets and all rows of one patient share a bucket, so the number
of distinct patients of a label is the sum over buckets of its distinct patients there.
Counts per combination of labels, which may be as many as the rows, are totalled through
``GroupTotals`` and never held whole.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import polars as pl

from sandbox.data.spill import GroupTotals, Spill, Workspace

P = "_p"  # a patient's number, unique across buckets


class Rows:
    """Codes per row, one file per patient bucket, and which rows are still kept."""

    def __init__(self, codes: Spill, sizes: list[int], patients: int) -> None:
        self.codes = codes
        self.records = sum(sizes)
        self.patients = patients
        # One flag per row, bit-packed: the only per-row state kept in memory.
        self._sizes = sizes
        self._keep = [np.packbits(np.ones(size, dtype=bool)) for size in sizes]

    def each(self) -> Iterator[tuple[int, pl.DataFrame, np.ndarray]]:
        """Every bucket: its index, its codes, and its keep flags."""
        for index in range(self.codes.count):
            yield index, self.codes.read(index), self.keep(index)

    def keep(self, index: int) -> np.ndarray:
        return np.unpackbits(self._keep[index], count=self._sizes[index]).astype(bool)

    def set_keep(self, index: int, keep: np.ndarray) -> None:
        self._keep[index] = np.packbits(keep)

    def snapshot(self) -> list[np.ndarray]:
        """Which rows are kept now (to ``restore`` after a trial)."""
        return list(self._keep)

    def restore(self, snapshot: list[np.ndarray]) -> None:
        self._keep = list(snapshot)

    @property
    def kept(self) -> int:
        return sum(int(self.keep(b).sum()) for b in range(self.codes.count))


def encode(published: Spill, distinct: dict[str, pl.Series], work: Workspace) -> Rows:
    """Codes of the ``distinct``-valued columns for every published row."""
    codes = work.spill("codes", compress=False)
    sizes: list[int] = []
    patients = 0
    tables = {name: pl.DataFrame({name: values,
                                  "_code": pl.arange(0, len(values), eager=True,
                                                     dtype=pl.UInt32)})
              for name, values in distinct.items()}
    for index in range(published.count):
        frame = published.read(index, ["_id", *distinct])
        local = frame["_id"].rank("dense").cast(pl.UInt64) - 1
        columns = {P: local + (index << 32)}
        for name, table in tables.items():
            columns[name] = (frame.select(name)
                             .join(table, on=name, how="left", maintain_order="left")
                             .get_column("_code").fill_null(len(table)))
        codes.add(pl.DataFrame(columns), pl.lit(index, dtype=pl.UInt32))
        sizes.append(frame.height)
        patients += int(local.max()) + 1 if frame.height else 0
    codes.close()
    return Rows(codes, sizes, patients)


def label_frame(frame: pl.DataFrame, keep: np.ndarray | None, maps: dict[str, np.ndarray],
                extra: Sequence[str] = (P,)) -> pl.DataFrame:
    """The rows (kept ones, if ``keep``) with each column's codes mapped through ``maps``."""
    columns = {name: pl.Series(name, _take(mapping, frame[name].to_numpy(), keep))
               for name, mapping in maps.items()}
    for name in extra:
        values = frame[name].to_numpy()
        columns[name] = pl.Series(name, values[keep] if keep is not None else values)
    return pl.DataFrame(columns)


def patients_per_label(rows: Rows, maps: dict[str, np.ndarray]
                       ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per column: distinct kept patients per label id, and which codes occur among kept
    rows."""
    result = {name: (np.zeros(int(m.max()) + 1, dtype=np.int64), np.zeros(len(m), dtype=bool))
              for name, m in maps.items()}
    for _, frame, keep in rows.each():
        patients = frame[P].to_numpy()[keep]
        for name, mapping in maps.items():
            codes = frame[name].to_numpy()[keep]
            counts = (pl.DataFrame({"l": mapping[codes], "p": patients})
                      .group_by("l").agg(pl.col("p").n_unique().alias("n")))
            per_label, present = result[name]
            np.add.at(per_label, counts["l"].to_numpy(), counts["n"].to_numpy())
            present[np.unique(codes)] = True
    return result


def records_per_code(rows: Rows, sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """Per column (name → number of codes): kept records per code."""
    result = {name: np.zeros(size, dtype=np.int64) for name, size in sizes.items()}
    for _, frame, keep in rows.each():
        for name, counts in result.items():
            counts += np.bincount(frame[name].to_numpy()[keep], minlength=len(counts))
    return result


def combination_totals(rows: Rows, maps: dict[str, np.ndarray], work: Workspace
                       ) -> GroupTotals:
    """Distinct patients ``n`` and records ``r`` per combination of labels, kept rows only
    (aggregate with ``pl.col("n").sum(), pl.col("r").sum()``)."""
    names = list(maps)
    totals = work.totals("combinations", names)
    for _, frame, keep in rows.each():
        partial = (label_frame(frame, keep, maps)
                   .group_by(names).agg(pl.col(P).n_unique().alias("n"), pl.len().alias("r")))
        totals.add(partial)
    return totals


def drop_combinations(rows: Rows, maps: dict[str, np.ndarray], combinations: pl.DataFrame
                      ) -> int:
    """Stop keeping the rows whose labels form one of ``combinations``; how many were."""
    dropped = 0
    marked = combinations.select(list(maps)).with_columns(pl.lit(True).alias("_hit"))
    for index, frame, keep in rows.each():
        hit = (label_frame(frame, None, maps, extra=())
               .join(marked, on=list(maps), how="left", maintain_order="left")
               .get_column("_hit").fill_null(False).to_numpy())
        drop = keep & hit
        if drop.any():
            dropped += int(drop.sum())
            rows.set_keep(index, keep & ~hit)
    return dropped


def drop_labels(rows: Rows, name: str, mapping: np.ndarray, rare: np.ndarray) -> int:
    """Stop keeping the rows whose label of ``name`` is flagged in ``rare``."""
    dropped = 0
    for index, frame, keep in rows.each():
        drop = keep & rare[mapping[frame[name].to_numpy()]]
        if drop.any():
            dropped += int(drop.sum())
            rows.set_keep(index, keep & ~drop)
    return dropped


def class_partials(rows: Rows, maps: dict[str, np.ndarray], sensitive: tuple[str, np.ndarray]
                   | None, work: Workspace, kept_only: bool) -> GroupTotals:
    """Per class (combination of ``maps`` labels): rows of each (sensitive label, patient),
    to aggregate into records, patients and l-diversity (see ``risk.summarise``)."""
    names = list(maps)
    every = dict(maps) | (dict([sensitive]) if sensitive else {})
    keys = [*every, P]
    totals = work.totals("classes", names)
    for _, frame, keep in rows.each():
        partial = (label_frame(frame, keep if kept_only else None, every)
                   .group_by(keys).agg(pl.len().alias("r")))
        totals.add(partial)
    return totals


def lost_patients(rows: Rows) -> int:
    """Patients none of whose rows are kept."""
    lost = 0
    for _, frame, keep in rows.each():
        patients = frame[P].to_numpy()
        lost += len(np.unique(patients)) - len(np.unique(patients[keep]))
    return lost


def _take(mapping: np.ndarray, codes: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
    if keep is not None:
        codes = codes[keep]
    return mapping[codes].astype(np.uint32)
