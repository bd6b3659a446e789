"""`animalcls plan`: a sweep's jobs, their run ids and what train would do with each, without training.

Run through the real CLI, in-process, after a real tiny run of one of the sweep's jobs.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pandas as pd

from animalcls import resume

from conftest import tiny_train_args


def _files(where: Path) -> list[Path]:
    return sorted(where.rglob("*"))


def _jobs(out: str) -> list[list[str]]:
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["run", "id", "status"]
    return [line.split(None, 2) for line in lines[1:-1]]


def test_plan_lists_done_and_to_train_jobs_and_writes_nothing(tmp_path, cli, capsys, image_folder):
    sweep = tiny_train_args(image_folder)[1:]  # train's overrides
    assert cli(["train", *sweep, "seed=0"], tmp_path) == 0
    table = pd.read_csv(tmp_path / "outputs" / "results.csv")
    (trained,) = table["run_id"]
    capsys.readouterr()
    before = _files(tmp_path)

    assert cli(["plan", "-m", *sweep, "seed=0,1"], tmp_path) == 0
    out = capsys.readouterr().out
    jobs = _jobs(out)
    assert [(job[1], "seed=0" in job[2].split()) for job in jobs] == [("done", True), ("train", False)]
    assert jobs[0][0] == trained and jobs[1][0] != trained and len(jobs[1][0]) == 16
    assert "2 job(s): 1 would train, 1 done (skipped), 0 running elsewhere" in out
    assert _files(tmp_path) == before  # no run dir, no lock, no table written

    # the run id the plan named for the job to train is the one its run records
    assert cli(["train", *sweep, "seed=1"], tmp_path) == 0
    table = pd.read_csv(tmp_path / "outputs" / "results.csv")
    assert table["run_id"].iloc[-1] == jobs[1][0]


def test_plan_names_a_job_running_elsewhere(tmp_path, cli, capsys, image_folder):
    sweep = tiny_train_args(image_folder)[1:]
    assert cli(["plan", *sweep, "seed=3,4", "force=true"], tmp_path) == 0
    jobs = _jobs(capsys.readouterr().out)
    assert [job[1] for job in jobs] == ["train", "train"]
    claim = resume.Claim(str(tmp_path / "outputs" / "results.csv"), jobs[0][0], tmp_path / "elsewhere")
    assert claim.take_run_id()  # this process runs it, as a sweep elsewhere would
    try:
        assert cli(["plan", *sweep, "seed=3,4"], tmp_path) == 0
        out = capsys.readouterr().out
    finally:
        claim.release()
    jobs = _jobs(out)
    assert [job[1] for job in jobs] == ["running", "train"]
    assert f"pid {os.getpid()} on {socket.gethostname()}" in jobs[0][2]
    assert "1 would train, 0 done (skipped), 1 running elsewhere" in out


def test_plan_expands_an_experiment_as_hydra_does(tmp_path, cli, capsys, image_folder):
    args = [*tiny_train_args(image_folder)[1:], "+experiment=paper/table_2_1_1", "seed=0,1"]
    assert cli(["plan", *args], tmp_path) == 0
    jobs = _jobs(capsys.readouterr().out)
    configs = {part for job in jobs for part in job[2].split() if part.startswith("+paper_config=")}
    assert len(jobs) == 2 * len(configs) and len(configs) > 1
    assert len({job[0] for job in jobs}) == len(jobs)  # each job its own run id


def test_plan_reports_an_invalid_job(tmp_path, cli, capsys, image_folder):
    assert cli(["plan", *tiny_train_args(image_folder)[1:], "lr=0.1,-1"], tmp_path) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
