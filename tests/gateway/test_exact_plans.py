"""One exact-aggregate plan, two engines: Polars and Spark (over the run's Spark Connect
server) give the same exact numbers as OpenDP's own transformation (its measurement at
scale 0) for every kind the plan serves and for random specs, build the same bounded
view, and are charged the same (ε, δ) at the same noise scales."""

from __future__ import annotations

import hashlib
import hmac
import math
import shutil

import opendp.prelude as dp
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opendp.domains import with_margin
from opendp.extras.polars import Margin, _lazyframe_domain_from_schema
from opendp.measurements import make_private_lazyframe

from sandbox.errors import InputError
from sandbox.gateway.engine import Engine, _public_keys
from sandbox.gateway.noise import release, statistics
from sandbox.queries import bounded
from sandbox.queries.checks import predicate
from sandbox.queries.exact import PolarsExecutor, aggregate_lazy, fixed_expr
from sandbox.queries.plan import BIN, COUNT, SUM, compile_plan
from sandbox.queries.spark import SparkExecutor
from sandbox.queries.spec import QuerySpec
from sandbox.queries.view import RANK_KEY, prepare
from sandbox.queries.withdrawals import Withdrawn

PURPOSE = "medical_research"
EXCLUDED_PATIENTS = 40  # withdrawn at query time: both engines must leave them out


@pytest.fixture(scope="module")
def engines(dataset, spark_server, tmp_path_factory):
    """The session's dataset with a view built by each engine (one rank key), some
    patients withdrawn, and an Engine per executor."""
    root = tmp_path_factory.mktemp("exact")
    records = pl.read_parquet(dataset / "restricted" / "records.parquet")
    withdrawn = records["pseudonym"].unique().sort().head(EXCLUDED_PATIENTS).to_list()
    rows = [(p, "*" if i % 2 else PURPOSE) for i, p in enumerate(withdrawn)]
    (root / "polars").mkdir()
    (root / "polars" / RANK_KEY).write_bytes(b"k" * 32)
    shutil.copytree(root / "polars", root / "spark")
    spark = SparkExecutor(spark_server.remote)
    on_polars = prepare(dataset, root / "polars")
    on_spark = prepare(dataset, root / "spark", spark)
    yield {"polars": (on_polars, Engine(PolarsExecutor())),
           "spark": (on_spark, Engine(spark)),
           "withdrawn": Withdrawn().adding(len(rows), rows)}
    spark.stop()


def _view(ds) -> pl.DataFrame:
    return pl.read_parquet(f"{ds.view}/**/*.parquet", hive_partitioning=False).sort(
        bounded.RANK)


def test_both_engines_build_the_same_bounded_view_by_the_stored_rank_key(engines, dataset):
    (on_polars, _), (on_spark, _) = engines["polars"], engines["spark"]
    assert on_polars.built["built_by"] == "polars" and on_spark.built["built_by"] == "spark"
    left, right = _view(on_polars), _view(on_spark)
    assert left.columns == right.columns and left.equals(right)
    assert left.height == on_polars.built["rows"] == on_spark.built["rows"]
    # The rows kept are each patient's `bound` smallest HMAC(key, pseudonym ␟ row) ranks.
    bound = on_polars.contribution_bound
    records = pl.read_parquet(dataset / "restricted" / "records.parquet").with_row_index("row")
    ranks = [hmac.new(b"k" * 32, f"{p}\x1f{r}".encode(), hashlib.sha256).hexdigest()
             for p, r in zip(records["pseudonym"], records["row"], strict=True)]
    expected = (records.with_columns(pl.Series("rank", ranks))
                .filter(pl.col("rank").rank("ordinal").over("pseudonym") <= bound))
    assert sorted(expected["rank"]) == left[bounded.RANK].to_list()
    assert records.group_by("pseudonym").len()["len"].max() > bound  # bounding did bite
    assert left.group_by("pseudonym").len()["len"].max() == bound


KINDS = [
    {"kind": "count"},
    {"kind": "count", "filters": [{"field": "visit_type", "op": "in", "value": ["住院", "急诊"]},
                                  {"field": "length_of_stay", "op": "between", "value": [1, 9]}]},
    {"kind": "count", "group_by": ["sex", "visit_type"]},
    {"kind": "count", "group_by": ["diagnosis_code"], "keys": "private", "delta": 1e-6},
    {"kind": "sum", "field": "total_cost", "bounds": [0, 50_000]},
    {"kind": "sum", "field": "length_of_stay", "group_by": ["age_band"],
     "filters": [{"field": "sex", "op": "ne", "value": "男"}]},
    {"kind": "mean", "field": "total_cost", "group_by": ["visit_type"], "bounds": [10, 90_000]},
    {"kind": "mean", "field": "self_paid"},
    {"kind": "histogram", "field": "length_of_stay", "bins": [0, 1, 7, 30, 365]},
    {"kind": "histogram", "field": "total_cost", "bins": [100, 1000, 5000],
     "filters": [{"field": "department", "op": "eq", "value": "儿科"}]},
]


def _spec(body: dict) -> QuerySpec:
    return QuerySpec.model_validate({"dataset": "emr-visits", "epsilon": 1.0, **body})


def _opendp_exact(spec: QuerySpec, ds, engine: Engine, plan, withdrawn: Withdrawn
                  ) -> pl.DataFrame:
    """OpenDP's own transformation of the query — its measurement at scale 0 (threshold
    0 for private keys) — in the plan's layout. Sums are taken over the same fixed-point
    integers (OpenDP's integer sum; its float sum is checked separately)."""
    frame = ds.scan(withdrawn)
    if plan.sums:
        frame = frame.with_columns(fixed_expr(plan).alias("_q"))
    schema = frame.collect_schema()
    domain = with_margin(_lazyframe_domain_from_schema(schema),
                         Margin(by=(), max_length=ds.max_rows))
    if not plan.sums:
        query = engine._plan(spec, ds, PURPOSE)
    else:
        low, high = plan.fixed_bounds()
        rows = pl.LazyFrame(schema=schema).filter(pl.col(plan.consent))
        for flt in spec.filters:
            rows = rows.filter(predicate(flt))
        total = pl.col("_q").clip(low, high).dp.sum((low, high)).alias(SUM)
        if spec.group_by:
            grouped = rows.group_by(spec.group_by).agg(dp.len(signed=True).alias(COUNT), total)
            query = _public_keys(spec.group_by, ds).join(grouped, on=spec.group_by,
                                                          how="left", nulls_equal=True)
        else:
            query = rows.select(dp.len(signed=True).alias(COUNT), total)
    measurement = make_private_lazyframe(
        input_domain=domain, input_metric=dp.symmetric_distance(),
        output_measure=dp.approximate(dp.max_divergence()), lazyframe=query,
        global_scale=0.0, threshold=0 if spec.keys == "private" else None)
    out = measurement(frame).collect()
    out = out.with_columns(pl.col(pl.Categorical, pl.Enum).cast(pl.String))
    columns = list(plan.group_columns) + [COUNT] + ([SUM] if plan.sums else [])
    out = out.select([c for c in columns if c in out.columns])
    if plan.key_values is None:
        return out.sort(list(plan.group_columns), nulls_last=True)
    if plan.edges is not None:
        order = pl.DataFrame({BIN: plan.labels})
        return order.join(out, on=BIN, how="left").with_columns(pl.col(COUNT).fill_null(0))
    if plan.grouped:
        keys = pl.DataFrame(plan.public_rows(), schema=list(plan.keys), orient="row")
        return keys.join(out, on=list(plan.keys), how="left", nulls_equal=True
                         ).with_columns(pl.exclude(plan.keys).fill_null(0))
    return out


def _three_ways(engines, spec: QuerySpec) -> tuple[pl.DataFrame, object]:
    on_polars, engine = engines["polars"]
    on_spark, spark_engine = engines["spark"]
    withdrawn = engines["withdrawn"]
    plan = compile_plan(spec, on_polars.fields, PURPOSE, on_polars.max_rows,
                        withdrawn.excluded(PURPOSE))
    assert len(plan.excluded) == EXCLUDED_PATIENTS
    exact_polars = engine.executor.aggregate(plan, str(on_polars.view))
    exact_spark = spark_engine.executor.aggregate(plan, str(on_spark.view))
    reference = _opendp_exact(spec, on_polars, engine, plan, withdrawn)
    assert exact_polars.equals(exact_spark), (exact_polars, exact_spark)
    scanned = PolarsExecutor(in_memory=False).aggregate(plan, str(on_polars.view))
    assert exact_polars.equals(scanned)  # the frame kept in memory reads as the files
    assert exact_polars.select(reference.columns).equals(reference), (exact_polars, reference)
    return exact_polars, plan


@pytest.mark.parametrize("body", KINDS, ids=lambda b: "-".join(
    [b["kind"], *b.get("group_by", []), b.get("keys", ""), *(f["op"] for f in
                                                             b.get("filters", []))]))
def test_polars_spark_and_opendp_agree_exactly(engines, body):
    spec = _spec(body)
    exact, plan = _three_ways(engines, spec)
    assert exact[COUNT].sum() > 0
    if plan.sums and not plan.grouped and spec.kind == "sum":
        # OpenDP's float sum of the same clamped values is the fixed-point sum, to within
        # one fixed-point step per row (the floor) and float rounding.
        on_polars, engine = engines["polars"]
        floats = engine._make(on_polars, engine._plan(spec, on_polars, PURPOSE), 0.0, None)
        total = floats(on_polars.scan(engines["withdrawn"])).collect().item()
        fixed = exact[SUM].item() * plan.unit
        assert abs(total - fixed) <= exact[COUNT].item() * plan.unit + 1e-9 * abs(total)


def test_many_withdrawals_are_anti_joined_on_spark_with_the_same_result(engines, dataset):
    """Past a few hundred excluded patients Spark anti-joins a table of them instead of
    carrying them as literals: the answer is still Polars'."""
    on_polars, engine = engines["polars"]
    on_spark, spark_engine = engines["spark"]
    records = pl.read_parquet(dataset / "restricted" / "records.parquet")
    many = frozenset(records["pseudonym"].unique().sort().tail(600).to_list())
    spec = _spec({"kind": "count", "group_by": ["visit_type"]})
    plan = compile_plan(spec, on_polars.fields, PURPOSE, on_polars.max_rows, many)
    fewer = engine.executor.aggregate(plan, str(on_polars.view))
    assert fewer.equals(spark_engine.executor.aggregate(plan, str(on_spark.view)))
    everyone = engine.executor.aggregate(compile_plan(
        spec, on_polars.fields, PURPOSE, on_polars.max_rows), str(on_polars.view))
    assert fewer[COUNT].sum() < everyone[COUNT].sum()


# Random specs over the fields a grant commonly holds: any kind the plan serves, any
# filter the checks accept, grouped or not.
TEXT = {"sex": ["男", "女"], "visit_type": ["门诊", "急诊", "住院"],
        "age_band": ["0-9", "20-29", "60-69", "80-89"], "department": ["儿科", "骨科", "产科"]}
NUMERIC = {"length_of_stay": (0, 365), "total_cost": (0, 500_000), "self_paid": (0, 500_000)}


@st.composite
def filters(draw):
    if draw(st.booleans()):
        field = draw(st.sampled_from(sorted(TEXT)))
        op = draw(st.sampled_from(["eq", "ne", "in"]))
        values = draw(st.lists(st.sampled_from(TEXT[field]), min_size=1, max_size=3,
                               unique=True))
        return {"field": field, "op": op, "value": values if op == "in" else values[0]}
    field = draw(st.sampled_from(sorted(NUMERIC)))
    low, high = NUMERIC[field]
    number = st.one_of(st.integers(low, high // 10),
                       st.floats(low, high / 10, allow_nan=False).map(lambda x: round(x, 2)))
    op = draw(st.sampled_from(["lt", "le", "gt", "ge", "between"]))
    if op == "between":
        a, b = sorted([draw(number), draw(number)])
        return {"field": field, "op": op, "value": [a, b]}
    return {"field": field, "op": op, "value": draw(number)}


@st.composite
def specs(draw):
    kind = draw(st.sampled_from(["count", "sum", "mean", "histogram"]))
    body: dict = {"kind": kind, "filters": draw(st.lists(filters(), max_size=3))}
    if kind != "count":
        field = draw(st.sampled_from(sorted(NUMERIC)))
        body["field"] = field
        low, high = NUMERIC[field]
        if kind == "histogram":
            body["bins"] = sorted(set(draw(st.lists(st.integers(low, high // 20), min_size=2,
                                                    max_size=6))))
            if len(body["bins"]) < 2:
                body["bins"] = [low, high]
            return body
        if draw(st.booleans()):
            a = draw(st.floats(low, high / 50, allow_nan=False))
            body["bounds"] = [a, a + draw(st.floats(0.5, high / 5))]
    body["group_by"] = draw(st.lists(st.sampled_from(sorted(TEXT)), max_size=2, unique=True))
    if kind == "count" and body["group_by"] and draw(st.booleans()):
        body.update(keys="private", delta=1e-6)
    return body


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=specs())
def test_random_specs_agree_exactly_on_both_engines_and_opendp(engines, body):
    _three_ways(engines, _spec(body))


@pytest.mark.parametrize("body", [*KINDS[2:9:2], KINDS[3]], ids=lambda b: b["kind"])
def test_both_engines_charge_the_same_loss_at_the_same_scales(engines, body):
    spec = _spec(body)
    on_polars, engine = engines["polars"]
    on_spark, spark_engine = engines["spark"]
    here = engine.compile(spec, on_polars, PURPOSE)
    there = spark_engine.compile(spec, on_spark, PURPOSE)
    d_in = on_polars.contribution_bound
    assert here.measurement.map(d_in) == there.measurement.map(d_in)
    assert here.noise.statistics == there.noise.statistics
    assert statistics(here.measurement) == list(here.noise.statistics)
    assert (here.noise.epsilon, here.noise.delta) == (there.noise.epsilon, there.noise.delta)
    eps, delta = here.measurement.map(d_in)
    assert here.noise.epsilon <= eps * (1 + 1e-9) and here.noise.delta <= delta + 1e-15
    assert engine.preview(spec, on_polars, PURPOSE) == \
        spark_engine.preview(spec, on_spark, PURPOSE)


def test_quantiles_are_refused_on_spark_before_anything_runs(engines):
    spec = _spec({"kind": "quantiles", "field": "length_of_stay", "quantiles": [0.5],
                  "bounds": [0, 60]})
    on_spark, spark_engine = engines["spark"]
    with pytest.raises(InputError, match="not served by this gateway's spark engine"):
        spark_engine.compile(spec, on_spark, PURPOSE)
    with pytest.raises(InputError, match="not served by this gateway's spark engine"):
        spark_engine.preview(spec, on_spark, PURPOSE)  # nor previewed as if it were
    on_polars, engine = engines["polars"]
    assert engine.compile(spec, on_polars, PURPOSE).plan is None  # OpenDP's own, on Polars


def _discrete_laplace_sd(scale: float) -> float:
    q = math.exp(-1 / scale)
    return math.sqrt(2 * q / (1 - q) ** 2)


def test_the_noise_is_opendps_at_the_measurements_scale(engines):
    """The released count's error has the spread of OpenDP's discrete Laplace at the scale
    OpenDP reports, centred on the exact count."""
    on_polars, engine = engines["polars"]
    spec = _spec({"kind": "count", "epsilon": 1.0})
    compiled = engine.compile(spec, on_polars, PURPOSE)
    exact = engine.executor.aggregate(compiled.plan, str(on_polars.view))[COUNT].item()
    runs = 2000
    errors = pl.Series([release(compiled.plan, compiled.noise, pl.DataFrame(
        {COUNT: [exact]}))[COUNT].item() - exact for _ in range(runs)])
    sd = _discrete_laplace_sd(compiled.noise.statistics[0].scale)
    assert abs(errors.mean()) < 4 * sd / math.sqrt(runs)
    assert errors.std() == pytest.approx(sd, rel=0.1)


@pytest.mark.parametrize("body", [
    {"kind": "sum", "field": "length_of_stay", "bounds": [0, 30]},
    {"kind": "histogram", "field": "length_of_stay", "bins": [0, 5, 30]}])
def test_a_row_without_the_value_is_in_no_sum_or_bin_on_the_exact_path(body):
    """As in the gateway's OpenDP plan: a null is left out, not counted at the low bound."""
    spec = _spec(body)
    plan = compile_plan(spec, {"length_of_stay": {"type": "integer", "bounds": [0, 30]}},
                        PURPOSE, 6)
    frame = pl.LazyFrame({plan.consent: [True] * 6,
                          "length_of_stay": [3, None, 7, None, None, 12]})
    exact = aggregate_lazy(plan, frame).collect()
    assert exact[COUNT].sum() == 3
    if plan.sums:
        assert exact[SUM].item() * plan.unit == pytest.approx(22, abs=3 * plan.unit)
