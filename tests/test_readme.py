"""Every command in README.md's code blocks runs once: here, in CI, or in the test named beside it.

`README_COMMANDS` says, for each command as the README prints it, how it is run:
- `Here(extra)`: in `test_readme_commands_run_as_printed`, from one project folder whose
  `data/animals` is a tiny generated image set, in the README's order, with the README's
  placeholders (`<date>/<time>`, `.../caltech101-animals`, `a.jpg`) filled in and `extra` appended
  (Hydra's last value wins), which only makes the run small: fewer epochs, trials or images;
- `Elsewhere(test)`: the named test runs the same command shape (it must exist);
- `NotHere(why)`: needs what CI has not (a GPU, several nodes, SLURM); the reason is the record.
A command added to the README without a line here fails `test_every_readme_command_is_listed`.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from conftest import make_image_folder, run_cli

ROOT = Path(__file__).parents[1]
SMALL = ("epochs=1", "aug.resize=48", "aug.crop=48", "batch_size=8", "workers=0")  # what "tiny" appends
SCRATCH = ("model.pretrained=false",)  # no ImageNet weights can be downloaded in a test


@dataclass(frozen=True)
class Here:
    extra: tuple[str, ...] = SMALL


@dataclass(frozen=True)
class Elsewhere:
    test: str  # tests/<file>.py::<function>


@dataclass(frozen=True)
class NotHere:
    why: str


README_COMMANDS: dict[str, Here | Elsewhere | NotHere] = {
    'pip install -e ".[dev]"': NotHere("CI's first step (.ci/run) on a fresh clone"),
    # the main job exactly as printed: 10 epochs on the demo data
    "animalcls train data=demo": Here(()),
    "pytest": NotHere("CI's test step (.ci/run) runs exactly this"),
    "animalcls train": Here(),
    "animalcls train model=mobilenet_v3_large optim=sgd lr=0.1": Here(SMALL + SCRATCH),
    "animalcls train model=base model.batch_norm=true model.dropout=0.5 lr=1e-4": Here(),
    "animalcls train -m lr=1e-3,1e-4 batch_size=16,32": Here(SMALL[:3] + ("workers=0",)),
    "animalcls train --cfg job": Here(()),
    "animalcls train --help": Here(()),
    "animalcls eval ckpt=outputs/runs/<date>/<time>_base/best.pt device=cpu": Here(()),
    "animalcls predict ckpt=.../best.pt images=[a.jpg,photos/]": Here(()),
    "animalcls profile model=resnet50": Here(()),
    "animalcls report": Here(()),
    "animalcls results rebuild": Here(()),
    "animalcls train -m +experiment=paper/table_2_1_2": Here(),
    "animalcls train -m +experiment=paper/table_2_1_2 seed=0,1,2": Here(),
    "bash scripts/reproduce_paper.sh": Here(SMALL + SCRATCH),
    "animalcls report results=[a.csv,b.csv] out=outputs/report2": Here(()),
    "animalcls train recipe=scratch model.batch_norm=true model.dropout=0.5": Here(),
    "animalcls train recipe=finetune model=resnet18": Here(SMALL + SCRATCH + ("finetune.freeze_epochs=0",)),
    "animalcls train optim=adamw sched=cosine sched.warmup_epochs=2 loss.label_smoothing=0.1 ema.decay=0.999": Here(
        (*SMALL[1:], "epochs=3")
    ),
    "animalcls train +paper_config=base-adam-lr1e-4-bs16-e10-ce-bn-drop0p5 epochs=15 seed=0 "
    "data.root=.../caltech101-animals": Here(),
    "animalcls train recipe=scratch model.batch_norm=true model.dropout=0.5 epochs=15 seed=0 "
    "data.root=.../caltech101-animals": Here(),
    "python scripts/compare_timm.py --data .../caltech101-animals --timm-repo path/to/pytorch-image-models "
    "--epochs 5 --size 128 112 --workers 1 --seeds 0 1 2 --out outputs/timm-compare": NotHere(
        "needs timm's repository and ~10 min per seed; its checks: tests/test_compare_timm.py, where timm is installed"
    ),
    "python scripts/compare_timm.py --summary docs/experiments/timm-compare-2026-12-05/compare.json": Here(()),
    "animalcls tune data=demo n_trials=12": Here(("n_trials=2", *SMALL)),
    "animalcls tune data=demo n_trials=12 repeats=3 study=base-demo-x3": Here(("n_trials=1", "repeats=2", *SMALL)),
    "animalcls tune model=resnet18 n_trials=50 storage=sqlite:///shared/study.db": Here(
        ("n_trials=1", *SMALL, *SCRATCH)
    ),
    "python scripts/onnx_classify.py outputs/runs/<date>/<run>/model.onnx cat.jpg": Elsewhere(
        "tests/test_export.py::test_the_readme_example_agrees_with_predict"
    ),
    "animalcls bench model=base data.root=/path/to/caltech101-animals device=cpu bench.rounds=2 "
    "bench.batches=5 bench.warmup=1": Here(SMALL[1:]),
    "animalcls bench model=mobilenet_v3_large data.root=/path/to/caltech101-animals device=cpu "
    "bench.rounds=2 bench.batches=5 bench.warmup=1": Here((*SMALL[1:], *SCRATCH)),
    "bash scripts/gpu_bench.sh": NotHere("needs a CUDA GPU; its record: docs/bench/h200-2026-11-28"),
    "torchrun --standalone --nproc_per_node=4 -m animalcls train model=resnet50 batch_size=64": NotHere(
        "needs 4 GPUs; the same code runs on 2 CPU processes in the next line's test"
    ),
    "torchrun --standalone --nproc_per_node=2 -m animalcls train data=demo device=cpu epochs=1": Elsewhere(
        "tests/test_scale.py::test_ddp_two_processes_one_row_and_test_top1_equals_single_process_eval"
    ),
    "torchrun --nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d --rdzv_endpoint=HEAD_NODE:29500 "
    "--rdzv_id=myrun -m animalcls train model=resnet50 batch_size=64": NotHere("needs two nodes with 4 GPUs each"),
    "sbatch --nodes=2 --gpus-per-node=4 scripts/slurm_ddp.sbatch model=resnet50 batch_size=64": NotHere(
        "needs a SLURM cluster"
    ),
    "animalcls train -m hydra/launcher=local_parallel lr=1e-3,1e-4 batch_size=16,32": Elsewhere(
        "tests/test_scale.py::test_joblib_launcher_runs_two_jobs_in_parallel_into_one_table"
    ),
    "animalcls train -m hydra/launcher=joblib hydra.launcher.n_jobs=4 lr=1e-3,1e-4 batch_size=16,32": Elsewhere(
        "tests/test_scale.py::test_joblib_launcher_runs_two_jobs_in_parallel_into_one_table"
    ),
    "animalcls train -m hydra/launcher=pack +experiment=paper/all": Elsewhere(
        "tests/test_gpu_paths.py::test_packed_sweep_exits_1_for_a_diverged_job_2_for_bad_input_and_0_when_all_are_ok"
    ),
    "animalcls train -m hydra/launcher=slurm hydra.launcher.partition=gpu model=resnet18,resnet50 lr=1e-3,1e-4": (
        NotHere("needs a SLURM cluster; the launcher's config composes in tests/test_every_config.py")
    ),
}


def readme_commands(text: str) -> list[str]:
    """The commands of the README's bash blocks, in order: comments dropped, `\\` continuations
    joined, `a && b` as two commands."""
    commands: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", "", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands += [" ".join(part.split()) for part in line.split(" && ")]
    return commands


def test_every_readme_command_is_listed():
    printed = readme_commands((ROOT / "README.md").read_text())
    assert set(printed) - set(README_COMMANDS) == set(), "README commands with no line in README_COMMANDS"
    assert set(README_COMMANDS) - set(printed) == set(), "README_COMMANDS lines no longer in README"


def test_the_tests_named_for_readme_commands_exist():
    for how in README_COMMANDS.values():
        if isinstance(how, Elsewhere):
            file, function = how.test.split("::")
            assert f"def {function}(" in (ROOT / file).read_text(), how.test


def test_readme_parser_joins_continuations_and_splits_and():
    text = "```bash\nx a=1 && y b  # why\n# only a comment\nz --c \\\n   d=2\n```\n```\nnot bash\n```\n"
    assert readme_commands(text) == ["x a=1", "y b", "z --c d=2"]


# ---------------------------------------------------------------- running them


def _filled(command: str, project: Path) -> str:
    """The README's placeholders, pointed at this project's files and this checkout's scripts."""
    table = pd.read_csv(project / "outputs" / "results.csv", dtype=str) if "best.pt" in command else None
    if table is not None:
        base = table[(table["model"] == "base") & (table["status"] == "ok")].iloc[0]
        best = str(Path(base["run_dir"]) / "best.pt")
        command = command.replace("outputs/runs/<date>/<time>_base/best.pt", best).replace(".../best.pt", best)
    data = str(project / "data" / "animals")
    for folder in ("scripts", "docs"):  # the project folder is not the checkout
        command = command.replace(f" {folder}/", f" {ROOT / folder}/")
    return command.replace(".../caltech101-animals", data).replace("/path/to/caltech101-animals", data)


def _run(command: str, extra: tuple[str, ...], project: Path) -> int:
    words = [*shlex.split(command), *extra]
    if words[0] == "animalcls":
        return run_cli(words[1:], project)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(words, cwd=project, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.returncode


def _prepare_inputs(command: str, project: Path) -> None:
    """Files a command names that an earlier one does not make: predict's images, report's tables."""
    if "images=[a.jpg,photos/]" in command:
        images = sorted((project / "data" / "animals").rglob("*.jpg"))
        shutil.copy(images[0], project / "a.jpg")
        (project / "photos" / "inner").mkdir(parents=True, exist_ok=True)
        for image in images[1:4]:
            shutil.copy(image, project / "photos" / "inner" / image.name)
    if "results=[a.csv,b.csv]" in command:
        table = pd.read_csv(project / "outputs" / "results.csv", dtype=str)
        table.iloc[::2].to_csv(project / "a.csv", index=False)
        table.iloc[1::2].to_csv(project / "b.csv", index=False)
    if "sqlite:///shared/" in command:
        (project / "shared").mkdir(exist_ok=True)


@pytest.mark.e2e
def test_readme_commands_run_as_printed(tmp_path, capsys):
    project = tmp_path / "project"
    make_image_folder(project / "data" / "animals", classes=3, per_class=16, size=48)
    printed = dict.fromkeys(readme_commands((ROOT / "README.md").read_text()))  # a repeated one runs once
    ran = 0
    for command in printed:
        how = README_COMMANDS[command]
        if not isinstance(how, Here):
            continue
        _prepare_inputs(command, project)
        code = _run(_filled(command, project), how.extra, project)
        said = capsys.readouterr()
        assert code == 0, f"`{command}` exited {code}:\n{(said.out + said.err)[-3000:]}"
        ran += 1
        if command == "animalcls train data=demo":
            # README: "far above chance (1/6)" for the main job
            row = pd.read_csv(project / "outputs" / "results.csv").iloc[-1]
            assert row["data"] == "demo" and row["epochs_done"] == 10 and row["test_top1"] > 2 * 100 / 6
    table = pd.read_csv(project / "outputs" / "results.csv", dtype=str)
    assert (table["status"] == "ok").all(), table[table["status"] != "ok"][["model", "status", "error"]]
    assert (project / "outputs" / "report" / "report.html").exists()
    assert (project / "outputs" / "report2" / "report.html").exists()
    assert ran == sum(isinstance(h, Here) for h in README_COMMANDS.values())
