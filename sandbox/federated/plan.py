"""Federated queries: what is asked, what each site computes, how it is noised and read.

A query becomes a *plan*: a vector layout (one slot per aggregate), each slot's
per-row sensitivity, and which slots are counts. Every party derives the same plan from
the spec and the dataset's public metadata:

- a **site** computes its local vector over its own rows (``local_vector``): OpenDP's
  stable transformation clamps each value to public bounds on a view holding at most
  ``contribution_bound`` rows per patient, so OpenDP states how many rows one patient can
  change; the slots are then exact sums over those rows. The site adds its own share of
  OpenDP Laplace noise (``noise.noisy``) before it encrypts, so every part that leaves it is
  ε-differentially private on its own;
- the **gateway** only relays: it never holds a key, nor a noise value it could remove;
- the **key service** adds the sites' ciphertexts itself and decrypts only that sum of
  noisy parts; ``finish`` turns it into the answer.

Layouts (x clamped to [L, U], M = max(|L|, |U|), r = rows per patient):

- histogram: one count per bin; a row moves one count by 1;
- mean: [n, Σx, Σx², rows above L, rows below U]; a row moves them by at most 1, M, M²,
  1, 1 (the two row counts are checked, never released: clamped to [0, 1], x is an
  indicator and Σx a count);
- linear regression of y on z = (1, x₁ … x_p) (text features one-hot, first category
  left out): the upper triangle of ZᵀZ (its first slot is n), Zᵀy and Σy²; a row moves
  slot (i, j) by at most max|zᵢ|·max|zⱼ|. Then, per numeric feature and for the target,
  the rows above its low bound and below its high bound (counts the key service checks,
  never released).

Sites encrypt the vector divided slot by slot by those sensitivities (the *normalised*
vector: every slot then has about the magnitude of a row count, which keeps the CKKS error,
shared across slots, small for every slot). At one site it changes by at most
``row_l1 · r`` in L1 when one patient comes or goes (``row_l1`` = 1 for a histogram, the
number of slots otherwise). A patient may be held by up to ``m`` sites (the federation's
declared ``sites_per_patient``, checked against the sites' pseudonyms), so each site's
share is OpenDP's Laplace mechanism with scale ``row_l1 · r · m / ε``: the ``m`` parts one
patient can touch are together ε-DP, and so is everything computed from all parts — the
released total included (post-processing). The total carries the sum of the ``k`` sites'
shares: its noise is √k times one share's (ADR 0011).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import opendp.prelude as dp
import polars as pl

from sandbox.errors import InputError, PolicyRefusal
from sandbox.federated import ckks, counts
from sandbox.federated.spec import FederatedSpec
from sandbox.queries import checks as query_checks
from sandbox.queries import view
from sandbox.queries.withdrawals import Withdrawn

dp.enable_features("contrib")

MIN_PATIENTS = 5
MIN_SITES = 3  # a federated answer adds the parts of at least this many sites


@dataclass(frozen=True)
class Column:
    """One design column: a clamped numeric field, or one category of a text field."""

    name: str
    field: str
    low: float
    high: float
    category: str | None = None
    code: int = -1  # the category's position in the field's public list (its Enum code)

    @property
    def magnitude(self) -> float:
        return max(abs(self.low), abs(self.high))


@dataclass(frozen=True)
class Plan:
    spec: FederatedSpec
    slots: list[str]              # what each slot of the vector holds
    sensitivity: list[float]      # how far one row can move each slot
    count_checks: list[counts.CountCheck]  # the groups of rows the answer reveals
    row_l1: int                   # L1 change of the normalised vector per row
    rows_per_patient: int         # r: rows one patient can change at one site
    sites_per_patient: int        # m: sites that may hold one patient (declared, checked)
    shares: int                   # k: sites whose noisy parts make the total
    records: int                  # public upper bound on the rows a query can read
    columns: list[Column]         # numeric inputs, in slot order (x, or z then y)
    labels: list[str]             # bin labels / coefficient names

    @property
    def size(self) -> int:
        return len(self.slots)

    @property
    def scale(self) -> float:
        """Laplace scale of one site's noise share on the normalised vector."""
        return self.row_l1 * self.rows_per_patient * self.sites_per_patient / \
            self.spec.epsilon

    @property
    def min_count(self) -> int:
        """Noisy row count a released cell needs: ≥ 5 patients of r rows at m sites."""
        return MIN_PATIENTS * self.rows_per_patient * self.sites_per_patient

    def limits(self) -> list[float]:
        """The largest magnitude each normalised slot can take (every row at its bound,
        plus every share's noise far into its tail): what the encrypted range must hold."""
        return [self.records + 50 * self.shares * self.scale] * self.size

    def describe(self) -> dict:
        """What the key service needs to apply its policy."""
        return {"size": self.size, "count_checks": counts.to_json(self.count_checks),
                "min_count": self.min_count, "rows_per_patient": self.rows_per_patient,
                "sites_per_patient": self.sites_per_patient, "noise_scale": self.scale}


def make_plan(spec: FederatedSpec, metadata: dict, allowed: set[str] | None = None) -> Plan:
    """Check ``spec`` against the public metadata (and the grant's fields) and lay out its
    vector; refuses what cannot be answered within the encrypted range."""
    fields = {f["name"]: f for f in metadata["tables"]["records"]["fields"]}
    query_checks.check_fields(spec.fields_used(), fields,
                              set(fields) if allowed is None else allowed)
    query_checks.check_filters(spec.filters, fields)
    r = int(metadata["contribution_bound"])
    m = sites_per_patient(metadata)
    shares = max(1, len(metadata.get("sites") or [])) if metadata.get("federated") else 1
    records = int(metadata["sample_size"]["records"])
    if spec.kind == "histogram":
        column = _numeric(fields, spec.field, (spec.bins[0], spec.bins[-1]), "bins")
        labels = [f"[{a:g}, {b:g})" for a, b in itertools.pairwise(spec.bins)]
        labels[-1] = labels[-1][:-1] + "]"
        k = len(labels)
        plan = Plan(spec, [f"count {label}" for label in labels], [1.0] * k,
                    [counts.single(i) for i in range(k)], 1, r, m, shares, records, [column],
                    labels)
    elif spec.kind == "mean":
        column = _numeric(fields, spec.field, spec.bounds, "bounds")
        top = column.magnitude
        plan = Plan(spec, ["n", f"sum {column.name}", f"sum {column.name}²",
                           *_away_slots(column)],
                    [1.0, top, top * top, 1.0, 1.0],
                    [counts.single(0), counts.single(3), counts.single(4)], 5, r, m, shares,
                    records, [column], ["count", "mean", "std"])
    else:
        design = [Column("intercept", "", 1.0, 1.0)]
        for name in spec.features:
            design += _design(fields, name, spec.feature_bounds.get(name))
        target = _numeric(fields, spec.target, spec.bounds, "bounds")
        slots, sensitivity, cells = [], [], {}
        for i, j in itertools.combinations_with_replacement(range(len(design)), 2):
            cells[(i, j)] = len(slots)
            slots.append("n" if i == j == 0 else f"Σ {design[i].name}·{design[j].name}")
            sensitivity.append(design[i].magnitude * design[j].magnitude)
        for column in design:
            slots.append(f"Σ {column.name}·{target.name}")
            sensitivity.append(column.magnitude * target.magnitude)
        slots.append(f"Σ {target.name}²")
        sensitivity.append(target.magnitude ** 2)
        # one-hot cells (and n) have sensitivity 1: their normalised values are counts
        checks = counts.regression(
            [c.field if c.category is not None else None for c in design],
            lambda i, j: cells[(min(i, j), max(i, j))])
        # A number speaks about the rows away from its bounds: clamped to [0, 1] it is an
        # indicator; 0 for all but a few rows, it speaks about those few. So for each
        # numeric feature, and the target, the rows above its low bound and below its high
        # bound are counted (checked, never released) like the groups of a text feature.
        for column in [*_numeric_features(design), target]:
            checks += [counts.single(len(slots)), counts.single(len(slots) + 1)]
            slots += _away_slots(column)
            sensitivity += [1.0, 1.0]
        plan = Plan(spec, slots, sensitivity, checks, len(slots), r, m, shares, records,
                    [*design, target], [c.name for c in design])
    if plan.size > ckks.SLOTS:
        raise InputError(f"this query needs {plan.size} slots; one ciphertext holds "
                         f"{ckks.SLOTS}")
    ckks.check_range(plan.limits())
    return plan


def sites_per_patient(metadata: dict) -> int:
    """How many sites of the federation may hold one patient (``sites_per_patient`` in
    the public metadata; 1 where each patient is at one site, as ``site split`` makes)."""
    m = metadata.get("sites_per_patient", 1)
    if not isinstance(m, int) or isinstance(m, bool) or m < 1:
        raise InputError(f"sites_per_patient must be a whole number ≥ 1, not {m!r}")
    return m


def _numeric(fields: dict, name: str, bounds: tuple[float, float] | None,
             what: str) -> Column:
    f = fields[name]
    if f["type"] not in ("integer", "float"):
        raise InputError(f"{name!r} is {f['type']}; this needs a numeric field")
    low, high = f["bounds"]
    chosen = bounds or (low, high)
    if chosen[0] < low or chosen[1] > high:
        raise InputError(f"{what} {list(chosen)} lie outside the public bounds "
                         f"[{low:g}, {high:g}] of {name!r}")
    return Column(name, name, float(chosen[0]), float(chosen[1]))


def _away_slots(column: Column) -> list[str]:
    return [f"rows {column.name} > {column.low:g}", f"rows {column.name} < {column.high:g}"]


def _away(column: Column, values: np.ndarray) -> list[int]:
    """The rows above ``column``'s low bound and below its high bound."""
    return [int((values > column.low).sum()), int((values < column.high).sum())]


def _numeric_features(design: list[Column]) -> list[Column]:
    return [c for c in design if c.field and c.category is None]


def _design(fields: dict, name: str, bounds: tuple[float, float] | None) -> list[Column]:
    f = fields[name]
    if f["type"] == "string" and f.get("categories"):
        if bounds is not None:
            raise InputError(f"{name!r} is a text field; it takes no bounds")
        return [Column(f"{name}={c}", name, 0.0, 1.0, c, code)
                for code, c in enumerate(f["categories"]) if code > 0]
    return [_numeric(fields, name, bounds, f"bounds of {name}")]


# -- at a site ----------------------------------------------------------------------------

def local_vector(plan: Plan, dataset: view.Dataset, purpose: str,
                 withdrawn: Withdrawn | None = None) -> np.ndarray:
    """This site's exact aggregate vector over its consented rows — less those of the
    patients ``withdrawn`` from ``purpose`` — normalised (never leaves the site: only ``noisy``
    shares of it do, encrypted)."""
    spec = plan.spec
    frame = dataset.placeholder().filter(pl.col(view.consent_column(purpose)))
    for flt in spec.filters:
        frame = frame.filter(query_checks.predicate(flt))
    numeric = [c for c in plan.columns if c.category is None and c.field]
    text = sorted({c.field for c in plan.columns if c.category is not None})
    frame = frame.select(
        *(pl.col(c.field).cast(pl.Float64).fill_null(c.low).clip(c.low, c.high).alias(c.name)
          for c in numeric), *text)
    stable = dp.t.make_stable_lazyframe(dataset.domain, dp.symmetric_distance(), frame)
    rows_per_patient = max(b.per_group or 0 for b in stable.map(dataset.contribution_bound))
    if rows_per_patient > plan.rows_per_patient:
        raise PolicyRefusal(f"a patient can change {rows_per_patient} rows here, more than "
                            f"the {plan.rows_per_patient} the plan allows for")
    rows = stable(dataset.scan(withdrawn)).collect()
    return _exact(plan, rows) / np.asarray(plan.sensitivity)


def _exact(plan: Plan, rows: pl.DataFrame) -> np.ndarray:
    spec = plan.spec
    if spec.kind == "histogram":
        values = rows[plan.columns[0].name].to_numpy()
        bins = np.searchsorted(np.asarray(spec.bins[1:-1]), values, side="right")
        return np.bincount(bins, minlength=len(plan.labels)).astype(np.float64)
    if spec.kind == "mean":
        x = rows[plan.columns[0].name].to_numpy()
        return np.array([len(x), x.sum(), (x * x).sum(), *_away(plan.columns[0], x)],
                        dtype=np.float64)
    codes = {f: rows[f].to_physical().to_numpy() for f in
             {c.field for c in plan.columns if c.category is not None}}
    z = np.column_stack([_design_values(c, rows, codes) for c in plan.columns[:-1]])
    y = rows[plan.columns[-1].name].to_numpy()
    upper = np.triu_indices(z.shape[1])
    away = [_away(c, z[:, i]) for i, c in enumerate(plan.columns[:-1])
            if c.field and c.category is None]
    return np.concatenate([(z.T @ z)[upper], z.T @ y, [y @ y], *away,
                           _away(plan.columns[-1], y)]).astype(np.float64)


def _design_values(column: Column, rows: pl.DataFrame, codes: dict[str, np.ndarray]
                   ) -> np.ndarray:
    if not column.field:
        return np.ones(rows.height)
    if column.category is not None:  # one-hot on the Enum codes (a missing value: all 0)
        return (codes[column.field] == column.code).astype(np.float64)
    return rows[column.name].to_numpy()


def finish(plan: Plan, normalised: list[float | None]) -> list[dict]:
    """The released rows from the decrypted noisy normalised vector (post-processing)."""
    spec = plan.spec
    values = [None if v is None else v * s
              for v, s in zip(normalised, plan.sensitivity, strict=True)]
    if spec.kind == "histogram":
        return [{"bin": label, "count": None if v is None else max(0, round(v)),
                 "suppressed": v is None} for label, v in zip(plan.labels, values,
                                                               strict=True)]
    if spec.kind == "mean":
        n, total, squares = values[:3]  # the row counts after them: checked, not released
        column = plan.columns[0]
        mean = min(max(total / n, column.low), column.high)
        std = math.sqrt(max(0.0, squares / n - mean * mean))
        return [{"count": round(n), "mean": mean, "std": std}]
    p = len(plan.labels)
    upper = np.triu_indices(p)
    xtx = np.zeros((p, p))
    xtx[upper] = values[:len(upper[0])]
    xtx = xtx + np.triu(xtx, 1).T
    xty = np.asarray(values[len(upper[0]):len(upper[0]) + p])
    yty = values[len(upper[0]) + p]  # the counts after it are checked, not released
    beta, *_ = np.linalg.lstsq(xtx, xty, rcond=None)
    n = xtx[0, 0]
    ss_res = yty - 2 * beta @ xty + beta @ xtx @ beta
    ss_tot = yty - xty[0] ** 2 / n
    # With noise either sum of squares can come out ≤ 0: then R² cannot be told.
    r2 = float(1 - ss_res / ss_tot) if ss_res > 0 and ss_tot > 0 else None
    return [{"term": name, "coefficient": float(b), "n": round(n),
             "r2": None if r2 is None else min(max(r2, 0.0), 1.0)}
            for name, b in zip(plan.labels, beta, strict=True)]
