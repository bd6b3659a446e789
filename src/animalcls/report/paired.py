"""Paired comparisons: is configuration b better than a, over the same seeds? Pure functions.

Two runs pair when they have the same seed and every recorded setting matches except the ones
compared (data identity, split, precision, epochs, test_on, ... all equal). Why paired: runs with
one seed share the data split, the initialisation and the batch order, so most of the seed-to-seed
swing cancels in their difference; an interval over those differences is far narrower than one
over two independent groups, and honest about what was measured.

- `paired_interval(diffs)`: mean difference and its Student-t interval over seeds (n-1 df).
- `pair_runs(table, a, b, where, vary)`: picks each side by column filters, refuses sides that
  are not one group of seed repeats, and pairs them by seed (`Pairing`: pairs and unpaired rows).
- `compare_metrics(pairing)`: per metric n, each side's mean ± std, b - a, interval, verdict.
- `render_text` / `as_dict` / `sentence`: what `animalcls compare` and scripts/claims.py print.

A verdict ("b beats a") needs n >= 3 pairs and an interval that excludes 0: two seeds say too
little about the spread to claim anything.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from animalcls import paper
from animalcls.errors import AnimalclsError
from animalcls.report.aggregate import BOOLEANS, NUMERIC, prepare
from animalcls.report.text import is_blank, plain

MIN_VERDICT_N = 3
# Every recorded setting of a run (record.COLUMNS minus ids, outcomes and bookkeeping); the data
# set is compared by name (`data_name`, old rows recorded a path), identity and split. The seed
# is what pairs, never a setting.
SETTINGS = (
    "model",
    "pretrained",
    "weights",
    "optimizer",
    "lr",
    "momentum",
    "weight_decay",
    "batch_size",
    "epochs",
    "loss",
    "aug",
    "batch_norm",
    "dropout",
    "data_name",
    "data_id",
    "split",
    "precision",
    "test_on",
    "pipeline",
    "recipe",
    "recipe_settings",
    "init_from",  # a warm start pairs only with runs from the same source weights
)
# Columns that only select runs (not settings): `a.repeat_id=...`, `a.tags=sweep1`.
SELECTORS = ("run_id", "repeat_id", "paper_config", "tags")
# The config's key names, for users who type the override they trained with (`a.optim=sgd`).
ALIASES = {
    "optim": "optimizer",
    "optim.name": "optimizer",
    "optim.momentum": "momentum",
    "optim.weight_decay": "weight_decay",
    "model.name": "model",
    "model.pretrained": "pretrained",
    "model.weights": "weights",
    "model.batch_norm": "batch_norm",
    "model.dropout": "dropout",
    "loss.name": "loss",
    "aug.name": "aug",
    "data": "data_name",
    "data.name": "data_name",
    "data.pipeline": "pipeline",
}


@dataclass(frozen=True)
class Metric:
    column: str
    label: str
    higher_is_better: bool = True


METRICS = (
    Metric("test_top1", "test top-1 %"),
    Metric("test_top5", "test top-5 %"),
    Metric("val_top1", "val top-1 %"),
    Metric("train_seconds", "train seconds", higher_is_better=False),
    Metric("images_per_s", "images/s"),
)
PRIMARY = "test_top1"  # a row without it is no measurement: left out of the comparison

# Student t quantiles for a two-sided 95 % interval, df 1..30: used when scipy is not installed.
T95: tuple[float, ...] = (
    *(12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.306, 2.2622, 2.2281),
    *(2.201, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.093, 2.086),
    *(2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423),
)


class PairingError(AnimalclsError):
    """The sides cannot be paired as asked; the message says which runs and what to change."""


# ---------------------------------------------------------------- the arithmetic


@dataclass(frozen=True)
class Interval:
    """Mean of paired differences with its Student-t interval (NaN bounds for n < 2)."""

    n: int
    mean: float
    std: float
    low: float
    high: float
    confidence: float

    def excludes_zero(self) -> bool:
        return self.n >= 2 and (self.low > 0 or self.high < 0)


def t_quantile(confidence: float, df: int) -> float:
    """The two-sided Student-t quantile: scipy's when installed, else a table (95 % only)."""
    try:
        from scipy import stats
    except ImportError:
        if not math.isclose(confidence, 0.95):
            raise AnimalclsError(
                f"confidence={confidence} needs scipy (pip install scipy); 0.95 works without it."
            ) from None
        if df <= len(T95):
            return T95[df - 1]
        z = 1.959964  # Cornish-Fisher to second order: within 1e-4 of the t quantile for df > 30
        return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
    return float(stats.t.ppf((1 + confidence) / 2, df))


def paired_interval(diffs: Sequence[float], confidence: float = 0.95) -> Interval:
    """mean ± t(n-1) * s / sqrt(n) of the paired differences b - a."""
    if not 0 < confidence < 1:
        raise AnimalclsError(f"confidence={confidence} must be between 0 and 1, e.g. 0.95.")
    values = [float(d) for d in diffs]
    n = len(values)
    nan = float("nan")
    if n == 0:
        return Interval(0, nan, nan, nan, nan, confidence)
    mean = statistics.fmean(values)
    if n == 1:
        return Interval(1, mean, nan, nan, nan, confidence)
    std = statistics.stdev(values)
    half = t_quantile(confidence, n - 1) * std / math.sqrt(n)
    return Interval(n, mean, std, mean - half, mean + half, confidence)


def verdict(interval: Interval, higher_is_better: bool = True) -> str:
    """'b beats a' / 'a beats b' only with n >= 3 pairs and an interval that excludes 0."""
    if interval.n < MIN_VERDICT_N:
        return f"too few seeds (n={interval.n}): no verdict"
    if not interval.excludes_zero():
        return "on par"
    b_higher = interval.low > 0
    return "b beats a" if b_higher == higher_is_better else "a beats b"


# ---------------------------------------------------------------- choosing and pairing runs


@dataclass(frozen=True)
class Unpaired:
    side: str  # "a" or "b"
    run_id: str
    seed: Any
    why: str


@dataclass
class Pairing:
    """Runs paired by seed: `pairs` has seed, run_id_a, run_id_b and `<metric>_a/_b` columns."""

    a: dict[str, Any]
    b: dict[str, Any]
    compared: list[str]
    held: dict[str, Any]
    pairs: pd.DataFrame
    unpaired: list[Unpaired] = field(default_factory=list)


def column_of(key: str) -> str:
    """A filter key as a results column (`optim` -> `optimizer`); unknown keys are refused."""
    column = ALIASES.get(key, key)
    if column not in SETTINGS and column not in SELECTORS:
        known = ", ".join([*SETTINGS, *SELECTORS])
        raise PairingError(f"{key!r} is not a recorded setting; filter on one of: {known}.")
    return column


def _columns(filters: Mapping[str, Any]) -> dict[str, Any]:
    return {column_of(key): value for key, value in filters.items()}


def _cell(column: str, value: Any) -> str:
    """A cell as comparable text: blanks are '', numbers by value (1e-3 == 0.001)."""
    if column in BOOLEANS:
        return str(paper.as_bool(value)).lower()
    if is_blank(value):
        return ""
    if column == "init_from":  # "<source run id>:<weights digest> <path>": the path moves with the project
        return str(value).split(" ")[0]
    if column in NUMERIC:
        try:
            return f"{float(value):.12g}"
        except (TypeError, ValueError):
            return str(value)
    return str(value)


def _matches(frame: pd.DataFrame, filters: Mapping[str, Any]) -> pd.Series:
    keep = pd.Series(True, index=frame.index)
    for column, value in filters.items():
        if isinstance(value, (list, tuple, dict)):
            raise PairingError(f"{column}={value!r}: give one value per key.")
        if column == "tags":  # a run's tags are ';'-joined: a filter names one of them
            keep &= frame["tags"].map(lambda tags, v=str(value): v in str(tags).split(";"))
        else:
            keep &= frame[column].map(lambda cell, c=column: _cell(c, cell)) == _cell(column, value)
    return keep


def _describe(filters: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={plain(v)}" for k, v in filters.items()) or "(every run)"


def _side(frame: pd.DataFrame, name: str, filters: Mapping[str, Any]) -> tuple[pd.DataFrame, list[Unpaired]]:
    """The side's usable runs (ok, with a finite test top-1) and the ones left out, with why."""
    chosen = frame[_matches(frame, filters)]
    if chosen.empty:
        raise PairingError(f"{name} ({_describe(filters)}) matches no run in the results table.")
    values = pd.to_numeric(chosen[PRIMARY], errors="coerce")
    usable = (chosen["status"] == "ok") & values.map(lambda v: math.isfinite(v) if v == v else False)
    left = [
        Unpaired(name, r["run_id"], r["seed"], f"status {r['status']}" if r["status"] != "ok" else "no test top-1")
        for r in chosen[~usable].to_dict("records")
    ]
    return chosen[usable], left


def _group_lines(side: pd.DataFrame) -> list[str]:
    groups = list(side.groupby("repeat_key", sort=False))
    differing = [c for c in SETTINGS if side[c].map(lambda v, c=c: _cell(c, v)).nunique() > 1]
    lines = []
    for key, rows in groups:
        first = rows.iloc[0]
        settings = ", ".join(f"{c}={plain(first[c])}" for c in differing) or "same settings as recorded"
        seeds = ",".join(plain(s) for s in sorted(rows["seed"].dropna().unique()))
        lines.append(f"  repeat group {str(key)[:16]}: {len(rows)} run(s), seeds {seeds or '?'}: {settings}")
    return lines


def _one_group(side: pd.DataFrame, name: str, filters: Mapping[str, Any]) -> None:
    """Runs that are not seed repeats of each other are never pooled into one side."""
    if side["repeat_key"].nunique() > 1:
        raise PairingError(
            f"{name} ({_describe(filters)}) holds runs of {side['repeat_key'].nunique()} different "
            "configurations (not repeats of one another over seeds); narrow it with a filter on the "
            "setting that differs (for both sides: KEY=VALUE; for one side: "
            f"{name}.KEY=VALUE):\n" + "\n".join(_group_lines(side))
        )


def _held(a: pd.DataFrame, b: pd.DataFrame, compared: Iterable[str]) -> dict[str, Any]:
    """The settings both sides share; refuses when one that is not compared differs."""
    first_a, first_b = a.iloc[0], b.iloc[0]
    differ = [c for c in SETTINGS if c not in compared and _cell(c, first_a[c]) != _cell(c, first_b[c])]
    if differ:
        shown = ", ".join(f"{c} (a {plain(first_a[c])}, b {plain(first_b[c])})" for c in differ)
        raise PairingError(
            f"a and b also differ in {shown}, which is not compared, so no run of a pairs with one of b. "
            f"To count it as part of what is compared, add vary=[{','.join(differ)}]; "
            f"to compare at one value, filter both sides (e.g. {differ[0]}={plain(first_a[differ[0]])})."
        )
    return {c: first_a[c] for c in SETTINGS if c not in compared}


def _one_per_seed(side: pd.DataFrame, name: str) -> tuple[pd.DataFrame, list[Unpaired]]:
    """The latest run of each seed; the others measured the same thing again (left out, said)."""
    unseeded = side[side["seed"].isna()]
    left = [Unpaired(name, r["run_id"], r["seed"], "no seed recorded") for r in unseeded.to_dict("records")]
    seeded = side[side["seed"].notna()]
    stamps = pd.to_datetime(seeded["timestamp"], errors="coerce", utc=True, format="mixed")
    order = stamps.sort_values(na_position="first", kind="mergesort").index  # file order breaks ties
    latest = seeded.loc[order].drop_duplicates("seed", keep="last")
    for r in seeded[~seeded.index.isin(latest.index)].to_dict("records"):
        kept = latest.loc[latest["seed"] == r["seed"], "run_id"].iloc[0]
        left.append(Unpaired(name, r["run_id"], r["seed"], f"seed measured again by run {kept} (kept)"))
    return latest, left


def pair_seeds(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, list[Unpaired]]:
    """Rows of a and b with the same seed, one pair per seed (seed, run_id_a, run_id_b and each
    metric's `_a`/`_b` value), and the rows that found no partner."""
    a_runs, left_a = _one_per_seed(a, "a")
    b_runs, left_b = _one_per_seed(b, "b")
    keep = ["seed", "run_id", *(m.column for m in METRICS)]
    pairs = a_runs[keep].merge(b_runs[keep], on="seed", suffixes=("_a", "_b")).sort_values("seed")
    left = left_a + left_b
    for name, runs, other in (("a", a_runs, b_runs), ("b", b_runs, a_runs)):
        partner = "b" if name == "a" else "a"
        for r in runs[~runs["seed"].isin(other["seed"])].to_dict("records"):
            left.append(Unpaired(name, r["run_id"], r["seed"], f"no {partner} run with seed {plain(r['seed'])}"))
    return pairs.reset_index(drop=True), left


def pair_runs(
    table: pd.DataFrame,
    a_filter: Mapping[str, Any],
    b_filter: Mapping[str, Any],
    where: Mapping[str, Any] | None = None,
    vary: Iterable[str] = (),
) -> Pairing:
    """Pair the runs of side a with those of side b by seed (see the module docstring).

    `table` is a results table (`animalcls.results.load`) or one already `prepare`d. `where`
    filters both sides; the settings named in `a_filter`/`b_filter`, plus `vary`, are the ones
    compared, and every other setting must be equal between the sides."""
    frame = table if "repeat_key" in table.columns else prepare(table)
    a_cols, b_cols, shared = _columns(a_filter), _columns(b_filter), _columns(where or {})
    compared = [c for c in dict.fromkeys([*a_cols, *b_cols, *map(column_of, vary)]) if c in SETTINGS]
    frame = frame[_matches(frame, shared)]
    a, left_a = _side(frame, "a", {**shared, **a_cols})
    b, left_b = _side(frame, "b", {**shared, **b_cols})
    for name, side, filters, left in (("a", a, a_cols, left_a), ("b", b, b_cols, left_b)):
        if side.empty:
            whys = "; ".join(sorted({u.why for u in left}))
            raise PairingError(f"{name} ({_describe(filters)}) has no ok run with a test top-1 ({whys}).")
        _one_group(side, name, filters)
    if a["repeat_key"].iloc[0] == b["repeat_key"].iloc[0]:
        raise PairingError("a and b select the same runs; give each side a filter that tells them apart.")
    held = _held(a, b, compared)
    pairs, left = pair_seeds(a, b)
    return Pairing(
        a={**shared, **a_cols},
        b={**shared, **b_cols},
        compared=compared,
        held=held,
        pairs=pairs,
        unpaired=left_a + left_b + left,
    )


# ---------------------------------------------------------------- per metric


@dataclass(frozen=True)
class MetricResult:
    metric: Metric
    n: int
    a_mean: float
    a_std: float
    b_mean: float
    b_std: float
    diff: Interval
    verdict: str


def _mean_std(values: pd.Series) -> tuple[float, float]:
    nan = float("nan")
    return (float(values.mean()) if len(values) else nan, float(values.std(ddof=1)) if len(values) > 1 else nan)


def compare_metric(pairs: pd.DataFrame, metric: Metric, confidence: float = 0.95) -> MetricResult:
    """One metric over the pairs where both runs measured it (a finite value on both sides)."""
    a = pd.to_numeric(pairs[f"{metric.column}_a"], errors="coerce")
    b = pd.to_numeric(pairs[f"{metric.column}_b"], errors="coerce")
    both = a.map(_finite) & b.map(_finite)
    a, b = a[both], b[both]
    interval = paired_interval(list(b - a), confidence)
    judged = verdict(interval, metric.higher_is_better)
    return MetricResult(metric, interval.n, *_mean_std(a), *_mean_std(b), interval, judged)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def compare_metrics(
    pairing: Pairing, confidence: float = 0.95, metrics: Sequence[Metric] = METRICS
) -> list[MetricResult]:
    return [compare_metric(pairing.pairs, m, confidence) for m in metrics]


# ---------------------------------------------------------------- as text and JSON


def _num(value: float, signed: bool = False) -> str:
    if is_blank(value):
        return "—"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _ms(mean: float, std: float) -> str:
    return _num(mean) + ("" if is_blank(std) else f" ± {std:.2f}")


def _ci(interval: Interval) -> str:
    return "—" if interval.n < 2 else f"[{_num(interval.low, True)}, {_num(interval.high, True)}]"


def _held_text(held: Mapping[str, Any]) -> str:
    shown = ("model", "data_name", "data_id", "split", "precision", "epochs", "test_on", "recipe")
    # a data_id is a long hash: its first characters tell data sets apart
    parts = [f"{c}={plain(held[c])[: 8 if c == 'data_id' else None]}" for c in shown if not is_blank(held.get(c))]
    return ", ".join(parts)


def render_text(pairing: Pairing, results: Sequence[MetricResult]) -> str:
    """The comparison as a plain-text table, then which runs paired and which did not."""
    confidence = results[0].diff.confidence if results else 0.95
    header = ["metric", "n", "a: mean ± std", "b: mean ± std", "b - a", f"{confidence:.0%} CI (paired t)", "verdict"]
    rows = [
        [r.metric.label, str(r.n), _ms(r.a_mean, r.a_std), _ms(r.b_mean, r.b_std)]
        + [_num(r.diff.mean, True), _ci(r.diff), r.verdict]
        for r in results
    ]
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    table = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [header, *rows]]
    lines = [
        f"a: {_describe(pairing.a)}",
        f"b: {_describe(pairing.b)}",
        f"compared: {', '.join(pairing.compared) or '(selected by id)'}; held equal: {_held_text(pairing.held)}",
        f"paired on seed: {len(pairing.pairs)} pair(s)",
        "",
        *table,
        "",
        "pairs (seed: run a, run b):",
        *(f"  {plain(p['seed'])}: {p['run_id_a']}, {p['run_id_b']}" for p in pairing.pairs.to_dict("records")),
    ]
    if pairing.unpaired:
        lines += ["unpaired:", *(f"  {u.side} {u.run_id} (seed {plain(u.seed)}): {u.why}" for u in pairing.unpaired)]
    return "\n".join(lines)


def _json_number(value: float) -> float | None:
    return None if is_blank(value) else float(value)


def as_dict(pairing: Pairing, results: Sequence[MetricResult]) -> dict[str, Any]:
    """The comparison as plain JSON-able values (NaN -> null)."""
    return {
        "a": {k: plain(v) for k, v in pairing.a.items()},
        "b": {k: plain(v) for k, v in pairing.b.items()},
        "compared": pairing.compared,
        "held": {k: ("" if is_blank(v) else plain(v)) for k, v in pairing.held.items()},
        "metrics": [
            {
                "metric": r.metric.column,
                "n": r.n,
                **{k: _json_number(getattr(r, k)) for k in ("a_mean", "a_std", "b_mean", "b_std")},
                "diff_mean": _json_number(r.diff.mean),
                "diff_std": _json_number(r.diff.std),
                "ci_low": _json_number(r.diff.low),
                "ci_high": _json_number(r.diff.high),
                "confidence": r.diff.confidence,
                "verdict": r.verdict,
            }
            for r in results
        ],
        "pairs": [
            {"seed": _seed(p["seed"]), "run_id_a": p["run_id_a"], "run_id_b": p["run_id_b"]}
            for p in pairing.pairs.to_dict("records")
        ],
        "unpaired": [
            {"side": u.side, "run_id": u.run_id, "seed": _seed(u.seed), "why": u.why} for u in pairing.unpaired
        ],
    }


def _seed(value: Any) -> int | None:
    return None if is_blank(value) else int(value)


def sentence(pairing: Pairing, result: MetricResult) -> str:
    """One line for a README: what was compared, over how many seeds, the difference and its interval."""
    d = result.diff
    interval = "" if d.n < 2 else f", {d.confidence:.0%} CI {_num(d.low, True)} to {_num(d.high, True)}"
    # each side by what tells it from the other; what both share is in the parentheses
    b_own = {k: v for k, v in pairing.b.items() if pairing.a.get(k) != v}
    a_own = {k: v for k, v in pairing.a.items() if pairing.b.get(k) != v}
    return (
        f"{_describe(b_own)} vs {_describe(a_own)} ({_held_text(pairing.held)}), "
        f"{result.n} paired seed(s): {result.metric.label} {_ms(result.b_mean, result.b_std)} vs "
        f"{_ms(result.a_mean, result.a_std)}, b - a {_num(d.mean, True)}{interval}: {result.verdict}."
    )
