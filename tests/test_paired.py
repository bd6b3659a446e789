"""Paired comparisons (`animalcls.report.paired`, `animalcls compare`) on rows written here: no training."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from animalcls import record
from animalcls.report import paired
from animalcls.results import append_row

SETTINGS = dict(
    model="base",
    pretrained=False,
    optimizer="sgd",
    lr=0.01,
    batch_size=16,
    epochs=10,
    loss="ce",
    aug="default_112",
    batch_norm=False,
    dropout=0.0,
    data="animals",
    data_id="d1",
    split="0.85/0.05/0.1",
    precision="fp32",
    test_on="test",
    pipeline="pil",
    record_version=2,
    recipe="paper",
)


def run(run_id: str, seed: int, top1: float | None, status: str = "ok", **changes) -> dict:
    values = {
        **SETTINGS,
        "run_id": run_id,
        "repeat_id": "r-" + changes.get("optimizer", "sgd") + str(changes.get("epochs", 10)),
        "seed": seed,
        "status": status,
        "timestamp": f"2024-01-01T00:00:{seed:02d}",
        **changes,
    }
    if top1 is not None:
        values.update(test_top1=top1, test_top5=top1 + 20, val_top1=top1 - 1, train_seconds=100.0, images_per_s=50.0)
    return values


def table(*rows: dict) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


SGD = [run(f"s{k}", k, v) for k, v in enumerate([30.0, 34.0, 38.0, 31.0])]
ADAMW = [run(f"w{k}", k, v, optimizer="adamw") for k, v in enumerate([32.0, 37.0, 42.0, 34.0])]


# ---------------------------------------------------------------- the arithmetic


def test_interval_matches_the_hand_computed_t_interval():
    # diffs 2,3,4,3: mean 3, s = sqrt(2/3), t(0.975, 3) = 3.1824 -> half width 3.1824*0.8165/2
    interval = paired.paired_interval([2.0, 3.0, 4.0, 3.0])
    half = 3.1824 * math.sqrt(2 / 3) / 2
    assert (interval.n, interval.mean, interval.std) == (4, 3.0, pytest.approx(math.sqrt(2 / 3)))
    assert (interval.low, interval.high) == (pytest.approx(3 - half, abs=1e-4), pytest.approx(3 + half, abs=1e-4))
    assert interval.excludes_zero() and paired.verdict(interval) == "b beats a"
    assert paired.verdict(interval, higher_is_better=False) == "a beats b"  # e.g. train seconds


def test_an_interval_including_zero_is_on_par():
    # diffs 1,2,3: mean 2, s = 1, t(0.975, 2) = 4.3027 -> 2 ± 2.484 includes 0
    interval = paired.paired_interval([1.0, 2.0, 3.0])
    assert interval.low == pytest.approx(2 - 4.3027 / math.sqrt(3), abs=1e-4) and interval.low < 0 < interval.high
    assert paired.verdict(interval) == "on par"
    assert paired.verdict(paired.paired_interval([-3.0, -4.0, -5.0])) == "a beats b"


def test_fewer_than_three_pairs_give_no_verdict_however_large_the_difference():
    two = paired.paired_interval([10.0, 10.5])
    assert two.n == 2 and two.excludes_zero()  # t with 1 df = 12.706: still [9.6, 11.1]
    assert paired.verdict(two) == "too few seeds (n=2): no verdict"
    one = paired.paired_interval([10.0])
    assert math.isnan(one.low) and not one.excludes_zero() and paired.verdict(one).startswith("too few seeds (n=1)")
    assert paired.paired_interval([]).n == 0


def test_without_scipy_the_t_table_gives_the_same_interval(monkeypatch):
    with_scipy = paired.paired_interval([2.0, 3.0, 4.0, 3.0])
    monkeypatch.setitem(sys.modules, "scipy", None)  # `from scipy import stats` raises ImportError
    table_ = paired.paired_interval([2.0, 3.0, 4.0, 3.0])
    assert table_.low == pytest.approx(with_scipy.low, abs=1e-4)
    assert paired.t_quantile(0.95, 40) == pytest.approx(2.0211, abs=2e-4)  # beyond the table
    with pytest.raises(paired.AnimalclsError, match="needs scipy"):
        paired.t_quantile(0.9, 3)


# ---------------------------------------------------------------- pairing


def test_runs_pair_by_seed_and_unpaired_runs_say_why():
    rows = [*SGD, *ADAMW[:3], run("w9", 9, 50.0, optimizer="adamw"), run("wf", 3, None, "failed", optimizer="adamw")]
    pairing = paired.pair_runs(table(*rows), {"optim": "sgd"}, {"optimizer": "adamw"})
    assert pairing.compared == ["optimizer"] and pairing.held["epochs"] == 10
    pairs = pairing.pairs[["seed", "run_id_a", "run_id_b"]].values.tolist()
    assert pairs == [[0, "s0", "w0"], [1, "s1", "w1"], [2, "s2", "w2"]]
    whys = {(u.side, u.run_id): u.why for u in pairing.unpaired}
    assert whys == {
        ("b", "wf"): "status failed",
        ("a", "s3"): "no b run with seed 3",
        ("b", "w9"): "no a run with seed 9",
    }
    top1 = paired.compare_metrics(pairing)[0]
    assert (top1.n, top1.a_mean, top1.b_mean, top1.diff.mean) == (3, 34.0, 37.0, pytest.approx(3.0))


def test_a_side_with_two_repeat_groups_is_refused_and_its_groups_listed():
    rows = [*SGD, *ADAMW, run("e0", 0, 40.0, optimizer="adamw", epochs=20)]
    with pytest.raises(paired.PairingError) as refused:
        paired.pair_runs(table(*rows), {"optimizer": "sgd"}, {"optimizer": "adamw"}, vary=["epochs"])
    message = str(refused.value)
    assert "b (optimizer=adamw) holds runs of 2 different configurations" in message
    assert "repeat group r-adamw10: 4 run(s), seeds 0,1,2,3: epochs=10" in message
    assert "repeat group r-adamw20: 1 run(s), seeds 0: epochs=20" in message
    # a shared filter picks one group; then the sides pair
    pairing = paired.pair_runs(table(*rows), {"optimizer": "sgd"}, {"optimizer": "adamw"}, where={"epochs": 10})
    assert len(pairing.pairs) == 4


def test_sides_that_differ_in_a_setting_not_compared_never_pair():
    rows = [*SGD, *(run(f"w{k}", k, 40.0, optimizer="adamw", precision="bf16") for k in range(3))]
    with pytest.raises(paired.PairingError, match=r"also differ in precision \(a fp32, b bf16\).*vary=\[precision\]"):
        paired.pair_runs(table(*rows), {"optimizer": "sgd"}, {"optimizer": "adamw"})
    allowed = paired.pair_runs(table(*rows), {"optimizer": "sgd"}, {"optimizer": "adamw"}, vary=["precision"])
    assert allowed.compared == ["optimizer", "precision"] and len(allowed.pairs) == 3


def test_one_seed_measured_twice_counts_once_and_the_latest_is_kept():
    again = run("s0b", 0, 35.0, timestamp="2024-02-01T00:00:00")
    pairing = paired.pair_runs(table(*SGD, again, *ADAMW), {"optimizer": "sgd"}, {"optimizer": "adamw"})
    assert pairing.pairs.set_index("seed").loc[0, "run_id_a"] == "s0b"
    assert [u.why for u in pairing.unpaired] == ["seed measured again by run s0b (kept)"]


def test_bad_filters_are_refused_with_what_to_do():
    with pytest.raises(paired.PairingError, match="not a recorded setting"):
        paired.pair_runs(table(*SGD), {"colour": "red"}, {"optimizer": "adamw"})
    with pytest.raises(paired.PairingError, match="matches no run"):
        paired.pair_runs(table(*SGD), {"optimizer": "sgd"}, {"optimizer": "adamw"})
    with pytest.raises(paired.PairingError, match="select the same runs"):
        paired.pair_runs(table(*SGD), {"optimizer": "sgd"}, {"epochs": 10})


# ---------------------------------------------------------------- the command


@pytest.fixture
def results_csv(tmp_path: Path) -> Path:
    path = tmp_path / "results.csv"
    for values in [*SGD, *ADAMW, run("wf", 7, None, "failed", optimizer="adamw")]:
        append_row(path, {k: v for k, v in values.items() if k in record.COLUMNS})
    return path


def test_compare_prints_the_paired_table_pairs_and_unpaired_runs(results_csv, cli, capsys, tmp_path):
    assert cli(["compare", f"results={results_csv}", "a.optim=sgd", "b.optim=adamw", "model=base"], tmp_path) == 0
    out = capsys.readouterr().out
    # diffs 2,3,4,3 (see the interval test): +3.00 [+1.70, +4.30]
    top1 = [line for line in out.splitlines() if line.startswith("test top-1 %")][0].split()
    assert top1[3:10] == ["4", "33.25", "±", "3.59", "36.25", "±", "4.35"]
    assert top1[10:] == ["+3.00", "[+1.70,", "+4.30]", "b", "beats", "a"]
    assert "train seconds  4" in out and "on par" in out
    assert "  0: s0, w0" in out and "  b wf (seed 7): status failed" in out
    assert "compared: optimizer; held equal: model=base, data_name=animals" in out


def test_compare_json_and_the_quoted_side_form(results_csv, cli, capsys, tmp_path):
    args = ["compare", f"results={results_csv}", "a=optim=sgd epochs=10", "b=optim=adamw", "format=json"]
    assert cli(args, tmp_path) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["a"] == {"optimizer": "sgd", "epochs": "10"} and data["compared"] == ["optimizer", "epochs"]
    top1 = data["metrics"][0]
    assert (top1["metric"], top1["n"], top1["verdict"]) == ("test_top1", 4, "b beats a")
    assert top1["ci_low"] == pytest.approx(1.7008, abs=1e-3) and len(data["pairs"]) == 4


def test_compare_refusals_are_one_line_and_exit_2(results_csv, cli, capsys, tmp_path):
    assert cli(["compare", f"results={results_csv}", "a.optim=sgd", "b.optim=adamw", "b.epochs=20"], tmp_path) == 2
    assert "matches no run" in capsys.readouterr().err
    assert cli(["compare", f"results={results_csv}", "a.optim=sgd"], tmp_path) == 2
    assert "say what each side is" in capsys.readouterr().err
    assert cli(["compare", f"results={tmp_path / 'none.csv'}", "a.optim=sgd", "b.optim=adamw"], tmp_path) == 2
    assert "no results table" in capsys.readouterr().err


def test_compare_starts_without_torch():
    code = (
        "import sys; from animalcls.commands import compare; "
        "compare.parse_request(['a.optim=sgd', 'b.optim=adamw']); "
        "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_claims_script_prints_each_claims_sentence_and_table(results_csv, tmp_path):
    claims = tmp_path / "claims.yaml"
    claims.write_text(
        f"results: {results_csv}\n"
        "claims:\n"
        "  - {name: AdamW beats SGD, a: {optim: sgd}, b: {optim: adamw}, where: {model: base}}\n"
        "  - {name: no such runs, a: {optim: sgd}, b: {optim: nadam}}\n"
    )
    script = Path(__file__).resolve().parents[1] / "scripts" / "claims.py"
    done = subprocess.run([sys.executable, str(script), f"claims={claims}"], capture_output=True, text=True)
    assert done.returncode == 2 and "## AdamW beats SGD" in done.stdout
    assert "optimizer=adamw vs optimizer=sgd (model=base" in done.stdout
    assert "4 paired seed(s): test top-1 % 36.25 ± 4.35 vs 33.25 ± 3.59, b - a +3.00" in done.stdout
    assert "95% CI +1.70 to +4.30: b beats a." in done.stdout and "test top-5 %" in done.stdout
    assert "## no such runs" in done.stderr and "matches no run" in done.stderr


def test_a_warm_started_run_pairs_only_with_runs_from_the_same_source_wherever_it_lives():
    warm = [run(f"w{k}", k, 40.0, optimizer="adamw", init_from=f"src:abc /old/place/{k}/best.pt") for k in range(3)]
    with pytest.raises(paired.PairingError, match="also differ in init_from"):
        paired.pair_runs(table(*SGD, *warm), {"optimizer": "sgd"}, {"optimizer": "adamw"})
    moved = [
        dict(r, run_id=f"s{k}", optimizer="sgd", repeat_id="r-sgd-warm", init_from=f"src:abc /new/place/{k}/best.pt")
        for k, r in enumerate(warm)
    ]
    pairing = paired.pair_runs(table(*moved, *warm), {"optimizer": "sgd"}, {"optimizer": "adamw"})
    assert len(pairing.pairs) == 3  # the source's identity pairs them, not its path


def test_compare_timm_summary_pairs_by_seed_from_a_recorded_comparison(tmp_path):
    """scripts/compare_timm.py --summary: timm - animalcls per seed, its t interval and the verdict."""
    sides = {"animalcls": ([40, 41, 42], [100, 100, 100]), "timm": ([42, 44, 46], [120, 130, 140])}
    rows = [
        {"seed": k, **{side: {"test_top1": top1[k], "val_top1": 50.0 + k, "wall_s": wall[k]}}}
        for k in range(3)
        for side, (top1, wall) in sides.items()
    ]
    merged = [{**rows[2 * k], **rows[2 * k + 1]} for k in range(3)] + [{"seed": 9, "animalcls": rows[0]["animalcls"]}]
    recorded = tmp_path / "compare.json"
    recorded.write_text(json.dumps({"epochs": 5, "size": [128, 112], "rows": merged}))
    script = Path(__file__).resolve().parents[1] / "scripts" / "compare_timm.py"
    spec = importlib.util.spec_from_file_location("compare_timm_summary", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    totals = module.with_totals({"timm": {"commit": "abc"}, "rows": merged[:3]})
    assert totals["timm"] == {"commit": "abc"}  # the provenance is kept (it was once overwritten)
    assert totals["paired"]["test_top1"]["ci95"] == pytest.approx([0.5159, 5.4841], abs=1e-3)
    done = subprocess.run([sys.executable, str(script), "--summary", str(recorded)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "seeds [0, 1, 2]" in done.stdout  # seed 9 has no timm side: not paired
    # diffs 2, 3, 4: mean 3, s = 1, t(2) = 4.303 -> 3 -+ 2.48
    assert "per seed +2.00 +3.00 +4.00; mean +3.00, CI +0.52 to +5.48: timm beats animalcls" in done.stdout
    assert "per seed +20.00 +30.00 +40.00; mean +30.00, CI +5.16 to +54.84: animalcls beats timm" in done.stdout
    assert "per seed +0.00 +0.00 +0.00; mean +0.00, CI +0.00 to +0.00: on par" in done.stdout  # val top-1 equal
