"""Issue 19, bad values: each is one line on stderr naming the key, the value and what is allowed,
exit status 2, and nothing written (no run dir, no results row) -- through the real CLI."""

from __future__ import annotations

import math
import subprocess
import sys
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest

from animalcls.config import RANGES, Config, Range, check_overrides, check_ranges, compose

from conftest import tiny_train_args


def _numeric_leaves(schema: type = Config, prefix: str = "") -> list[str]:
    """Every int, float or list-of-numbers leaf of the schema, walked here independently of
    animalcls.config so that a new number without a range fails the test below."""
    keys: list[str] = []
    hints = typing.get_type_hints(schema)
    for f in fields(schema):
        tp, key = hints[f.name], f"{prefix}{f.name}"
        element = typing.get_args(tp)[0] if typing.get_origin(tp) is list else tp
        if is_dataclass(tp):
            keys += _numeric_leaves(tp, f"{key}.")  # type: ignore[arg-type]
        elif element in (int, float):
            keys.append(key)
    return keys


def test_every_number_of_the_schema_has_a_finite_range():
    numeric = _numeric_leaves()
    assert "bench.batches" in numeric and "data.split" in numeric and "aug.cache_size" in numeric
    assert sorted(set(numeric) - set(RANGES)) == [], "numbers without a range in config.RANGES"
    assert sorted(set(RANGES) - set(numeric)) == [], "ranges for keys that are not numbers of the schema"
    for key, rng in RANGES.items():
        assert math.isfinite(rng.lo) and math.isfinite(rng.hi) and rng.lo < rng.hi, key


def test_every_example_is_allowed_and_the_defaults_pass():
    check_overrides([f"{key}={rng.example}" for key, rng in RANGES.items()])
    check_ranges(compose([]))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_range_refuses_nan_and_inf(value):
    assert not Range(-1e9, 1e9).contains(value)
    assert Range(0, 1, lo_open=True).contains(1) and not Range(0, 1, lo_open=True).contains(0)


BAD = [
    # NaN and inf, which passed before (ok rows, a diverged row, a failed row after the start)
    ("mix.cutmix_alpha=nan", "mix.cutmix_alpha=nan is out of range: mix.cutmix_alpha takes a finite float in [0, 100]"),
    ("early_stop.min_delta=nan", "early_stop.min_delta=nan is out of range"),
    ("lr=inf", "lr=inf is out of range: lr takes a finite float in (0, 10]; e.g. lr=0.001"),
    ("lr=nan", "lr=nan is out of range"),
    ("data.split=[nan,0.5,0.5]", "data.split=[nan,0.5,0.5] is out of range"),
    (
        "aug.cache_size=100000",
        "aug.cache_size=100000 is out of range: aug.cache_size takes a whole number in [0, 4096]",
    ),
    ("epochs=1e11", "epochs=1e11: epochs takes a whole number in [1, 100000]"),
    ("epochs=100000000000", "epochs=100000000000 is out of range"),
    ("bench.batches=0", "bench.batches=0 is out of range"),
    ("seed=-1", "seed=-1 is out of range: seed takes a whole number in [0, 4294967295]"),
    # between keys
    ("aug.crop=64", "aug.crop=64 is larger than aug.resize=48"),
    ("aug.cache_size=16", "aug.cache_size=16 is smaller than aug.crop=48"),
    ("data.split=[0.5,0.2,0.2]", "data.split=[0.5,0.2,0.2]: data.split takes three fractions"),
    # types and keys, which were Hydra's multi-line errors (exit 1) or a traceback
    ("lr=abc", "lr=abc: lr takes a finite float in (0, 10] (e.g. lr=0.001)"),
    ("epochs=ten", "epochs=ten: epochs takes a whole number"),
    ("tags=[a,[b]]", "tags=[a,[b]]: tags takes a list of strings"),
    ("optim.lrr=0.1", "optim.lrr=0.1: optim has no key lrr; did you mean lr?"),
    ("epoch=3", "epoch=3: there is no key epoch; did you mean epochs?"),
    ("compile=maybe", "compile=maybe: compile takes true or false"),
]


def _assert_refused(code: int, err: str, phrase: str, cwd: Path) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and phrase in lines[0] and "Traceback" not in err, err
    assert not (cwd / "outputs").exists(), "no run dir and no results table for a bad value"


@pytest.mark.parametrize("override, phrase", BAD)
def test_a_bad_value_is_one_line_exit_2_and_nothing_written(tmp_path, image_folder, cli, capsys, override, phrase):
    code = cli(tiny_train_args(image_folder, override), tmp_path)
    _assert_refused(code, capsys.readouterr().err, phrase, tmp_path)


@pytest.mark.parametrize(
    "sweep, phrase",
    [("lr=0.001,inf", "lr=inf is out of range"), ("epochs=choice(1,ten)", "epochs=ten: epochs takes a whole number")],
)
def test_each_value_of_a_sweep_is_checked_before_any_job(tmp_path, image_folder, cli, capsys, sweep, phrase):
    code = cli(["train", "-m", *tiny_train_args(image_folder)[1:], sweep], tmp_path)
    _assert_refused(code, capsys.readouterr().err, phrase, tmp_path)


def test_hydra_keys_and_add_prefixes_still_work(tmp_path, image_folder, cli):
    args = tiny_train_args(image_folder, "hydra.run.dir=runs/mine", "++lr=0.002", "+extra_note=x")
    assert cli(args, tmp_path) == 0
    assert (tmp_path / "runs" / "mine" / "record.json").exists()


def test_a_run_that_stops_on_bad_input_inside_hydra_leaves_no_run_dir(tmp_path, image_folder, cli, capsys):
    table = tmp_path / "outputs" / "results.csv"
    table.parent.mkdir()
    table.write_text("\n")  # not a table: refused inside the run, after Hydra made its dir
    assert cli(tiny_train_args(image_folder), tmp_path) == 2
    assert "no header" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["results.csv"]


def test_refusing_a_value_imports_no_torch():
    """The check before Hydra stays light: a typo costs a fraction of a second, not torch's import."""
    code = (
        "import sys\nfrom animalcls.cli import main\n"
        "try:\n    main(['train', 'lr=inf'])\nexcept SystemExit as e:\n"
        "    print(e.code, 'torch' in sys.modules, 'torchvision' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["2", "False", "False"]


def test_a_sweep_job_refused_in_its_run_leaves_no_job_dir(tmp_path, image_folder, cli, capsys):
    # each crop is in range, so only the job's own validate sees crop 64 > resize 48
    assert cli(["train", "-m", *tiny_train_args(image_folder)[1:], "aug.crop=48,64"], tmp_path) == 2
    assert "aug.crop=64 is larger than aug.resize=48" in capsys.readouterr().err
    jobs = [p.name for p in tmp_path.glob("outputs/multirun/*/*/*") if p.is_dir() and p.name != ".job_exit"]
    assert jobs == ["0_base"], jobs
