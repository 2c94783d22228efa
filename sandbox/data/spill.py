"""Tables too large to hold, kept on disk in buckets that each fit in memory.

Onboarding never holds a whole extract: every step that needs all rows of some key
together (a join, the patients of one equivalence class, the records in output order) first
writes its rows into ``count`` bucket files chosen by a hash or a range of that key, then
works one bucket at a time. The number of buckets grows with the extract and a bucket's size
does not, so peak memory stays flat however many patients there are. Bucket files live under
the output's temporary directory and go with it, on success or failure alike.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc

# Rows per bucket: the working set of one step is a small multiple of this.
BUCKET_ROWS = 250_000
_SEED = 20251231
_PACKED = ipc.IpcWriteOptions(compression="zstd")
_PLAIN = ipc.IpcWriteOptions(compression=None)


def bucket_count(rows: int, bucket_rows: int) -> int:
    """How many buckets keep each near ``bucket_rows`` rows."""
    return max(1, -(-rows // bucket_rows))


def hashed(key: pl.Expr | Sequence[str], count: int) -> pl.Expr:
    """Bucket number of a key (an expression or several columns), the same for equal keys
    of the same type wherever they come from in one run."""
    expr = key if isinstance(key, pl.Expr) else pl.struct(list(key))
    return (expr.hash(_SEED) % count).cast(pl.UInt32)


def ranged(key: pl.Expr, upper: int, count: int) -> pl.Expr:
    """Bucket number of a non-negative integer key below ``upper``, in key order: bucket i
    holds only keys smaller than those of bucket i + 1."""
    return (key.cast(pl.UInt64) * count // max(upper, 1)).cast(pl.UInt32)


class Spill:
    """One table in ``count`` bucket files (Arrow IPC, so a reader may take only some
    columns), appended batch by batch and read back a bucket at a time."""

    def __init__(self, root: Path, name: str, count: int, schema: pl.Schema | None = None,
                 *, compress: bool = True) -> None:
        self.directory = Path(root) / name
        self.directory.mkdir(parents=True)
        self.count = count
        self.rows = 0
        self._schema = schema
        self._options = _PACKED if compress else _PLAIN
        self._writers: dict[int, tuple[pa.OSFile, ipc.RecordBatchFileWriter]] = {}

    @property
    def schema(self) -> pl.Schema:
        return self._schema or pl.Schema()

    def add(self, frame: pl.DataFrame, bucket: pl.Expr) -> None:
        """Append the rows of ``frame`` to their buckets (``bucket`` gives each row's)."""
        if self._schema is None:
            self._schema = frame.schema
        elif frame.schema != self._schema:
            frame = frame.cast(dict(self._schema))
        if frame.height == 0:
            return
        self.rows += frame.height
        keyed = frame.with_columns(bucket.alias("_bucket"))
        for (index,), part in keyed.partition_by("_bucket", as_dict=True,
                                                 include_key=False).items():
            table = part.to_arrow()
            if index not in self._writers:
                sink = pa.OSFile(str(self._path(index)), "wb")
                self._writers[index] = (sink, ipc.new_file(sink, table.schema,
                                                           options=self._options))
            self._writers[index][1].write_table(table)

    def close(self) -> None:
        """Finish writing; buckets can be read from now on."""
        for sink, writer in self._writers.values():
            writer.close()
            sink.close()
        self._writers.clear()

    def read(self, index: int, columns: Sequence[str] | None = None) -> pl.DataFrame:
        """Every row of one bucket (an empty frame of the table's schema if it has none)."""
        path = self._path(index)
        if not path.exists():
            empty = pl.DataFrame(schema=self._schema or {})
            return empty.select(columns) if columns is not None else empty
        frame = pl.read_ipc(path, columns=list(columns) if columns else None,
                            memory_map=False)
        return frame.rechunk()

    def __iter__(self) -> Iterator[pl.DataFrame]:
        for index in range(self.count):
            yield self.read(index)

    def remove(self) -> None:
        """Delete the bucket files (the table is no longer needed)."""
        self.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _path(self, index: int) -> Path:
        return self.directory / f"{index:05d}.arrow"


class Workspace:
    """The directory a run spills into, the number of buckets for this extract, and how
    many partial rows may stay in memory."""

    def __init__(self, root: Path, count: int, limit: int) -> None:
        self.root, self.count, self.limit = Path(root), count, limit
        self._made = 0

    def spill(self, name: str, count: int | None = None, schema: pl.Schema | None = None,
              *, compress: bool = True) -> Spill:
        """A new spill; ``schema`` is what its buckets hold if nothing is ever added.
        Uncompressed suits small integer tables read many times over."""
        self._made += 1
        return Spill(self.root, f"{self._made:03d}-{name}", count or self.count, schema,
                     compress=compress)

    def totals(self, name: str, keys: list[str]) -> GroupTotals:
        self._made += 1
        return GroupTotals(self, f"{self._made:03d}-{name}", keys)


class GroupTotals:
    """Per-group totals over partial results from many buckets: kept in memory while they
    are few, spilled by a hash of the group key once they are not, so that each group's
    partials always end up together in one bucket."""

    def __init__(self, work: Workspace, name: str, keys: list[str]) -> None:
        self.work, self.name, self.keys = work, name, keys
        self.count, self.limit = work.count, work.limit
        self._parts: list[pl.DataFrame] = []
        self._held = 0
        self._spill: Spill | None = None

    def add(self, partial: pl.DataFrame) -> None:
        if self._spill is not None:
            self._spill.add(partial, hashed(self.keys, self.count))
            return
        self._parts.append(partial)
        self._held += partial.height
        if self._held > self.limit:
            self._spill = Spill(self.work.root, self.name, self.count)
            for part in self._parts:
                self._spill.add(part, hashed(self.keys, self.count))
            self._parts, self._held = [], 0

    def groups(self, aggs: Sequence[pl.Expr]) -> Iterator[pl.DataFrame]:
        """Every group once, aggregated with ``aggs``; a bucket of groups at a time."""
        if self._spill is None:
            if self._parts:
                yield pl.concat(self._parts).group_by(self.keys).agg(aggs)
            return
        self._spill.close()
        for part in self._spill:
            if part.height:
                yield part.group_by(self.keys).agg(aggs)

    def remove(self) -> None:
        self._parts = []
        if self._spill is not None:
            self._spill.remove()
