"""The import layers of animalcls, kept down by a test (issue 23): a module imports only from its
own group or from layers below it, never up and never across to a sibling group of its layer.

Top to bottom:
  entry points      the CLI and its commands
  runs | reports    a training run (with its tracking and collectives) | the report over tables
  factories | loop  build, which makes the parts from a config | engine, which runs them; neither
                    imports the other: what both need about a step lives one layer down
  the step          steps (settings, Recipe, one training step, after_step) and graphs (that step
                    as a CUDA graph; build makes one, engine calls it through steps.GraphedSteps)
  library floor     the checkpoint format, data, record, config, registry, models, ...: nothing of
                    how a run is assembled or looped

Every import counts: at the top, inside a function, under TYPE_CHECKING (all are dependencies; the
import graph is test_run_id's, the one its no-cycle test reads). Within a group, order is left to
that test's "no cycle". EXCEPTIONS would name an allowed upward import with its reason; it is empty.
"""

from __future__ import annotations

import pytest
from test_run_id import import_graph

Group = tuple[str, ...]  # module names; a name covers its submodules (animalcls.commands.*)

LAYERS: tuple[tuple[str, tuple[Group, ...]], ...] = (
    ("entry points", (("animalcls.__main__", "animalcls.cli", "animalcls.commands"),)),
    (
        "runs | reports",
        (
            # tune's objective runs its trials through run: it sits beside it
            ("animalcls.run", "animalcls.tracking", "animalcls.distributed", "animalcls.tuning.objective"),
            ("animalcls.report",),
            ("animalcls.benchmark",),  # bench's measurements: build's parts driven by engine's loop
        ),
    ),
    ("factories | loop", (("animalcls.build",), ("animalcls.engine",))),
    ("the step", (("animalcls.graphs", "animalcls.steps"),)),
    (
        "library floor",
        (
            (
                "animalcls",  # the package's __init__: its version
                "animalcls.atomic",
                "animalcls.augment",
                "animalcls.checkpoint",
                "animalcls.config",
                "animalcls.data",
                "animalcls.demo",
                "animalcls.ema",
                "animalcls.errors",
                "animalcls.finetune",
                "animalcls.machine",
                "animalcls.metrics",
                "animalcls.mix",
                "animalcls.models",
                "animalcls.paper",
                "animalcls.profile",
                "animalcls.record",
                "animalcls.registry",
                "animalcls.results",
                "animalcls.resume",
                "animalcls.schedule",
                "animalcls.sweep",
                "animalcls.tuning",  # the search space, the study, the summary (not its objective)
                "animalcls.warmstart",
            ),
        ),
    ),
)

# (importer, imported) -> why it may reach up or across; keep it empty unless there is no other way
EXCEPTIONS: dict[tuple[str, str], str] = {}


def place(module: str) -> tuple[int, int] | None:
    """(layer, group) of `module`: its most specific listed name wins (`animalcls` is the package's
    __init__ alone, so a new module must be listed); None when it is in no layer."""
    best: tuple[int, int, int] | None = None
    for layer, (_, groups) in enumerate(LAYERS):
        for group, names in enumerate(groups):
            for name in names:
                covers = module == name or (name != "animalcls" and module.startswith(name + "."))
                if covers and (best is None or len(name) > best[2]):
                    best = (layer, group, len(name))
    return None if best is None else best[:2]


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Each import that reaches up a layer or across to a sibling group, as 'a -> b (why)'."""
    found = []
    for importer, targets in sorted(graph.items()):
        here = place(importer)
        for imported in sorted(targets):
            there = place(imported)
            if here is None or there is None or (importer, imported) in EXCEPTIONS:
                continue  # unplaced modules are test_every_module_has_one_layer's failure
            if there[0] < here[0]:
                found.append(f"{importer} -> {imported} (up into {LAYERS[there[0]][0]!r})")
            elif there[0] == here[0] and there[1] != here[1]:
                found.append(f"{importer} -> {imported} (across {LAYERS[here[0]][0]!r})")
    return found


def test_every_module_has_one_layer():
    graph = import_graph()
    assert [m for m in sorted(graph) if place(m) is None] == [], "add new modules to a layer in LAYERS"
    listed = [name for _, groups in LAYERS for names in groups for name in names]
    assert len(listed) == len(set(listed))
    assert [n for n in listed if not any(m == n or m.startswith(n + ".") for m in graph)] == [], "stale names"


def test_no_module_imports_up_or_across_its_layer():
    assert violations(import_graph()) == []


def test_exceptions_are_real_imports_with_a_reason():
    graph = import_graph()
    for (importer, imported), why in EXCEPTIONS.items():
        assert imported in graph.get(importer, set()) and why.strip(), (importer, imported)


@pytest.mark.parametrize(
    "importer,imported,says",
    [
        ("animalcls.checkpoint", "animalcls.build", "up into 'factories | loop'"),  # the format building models
        ("animalcls.build", "animalcls.engine", "across 'factories | loop'"),  # the factories needing the loop
        ("animalcls.engine", "animalcls.build", "across 'factories | loop'"),
        ("animalcls.steps", "animalcls.engine", "up into 'factories | loop'"),
        ("animalcls.data", "animalcls.run", "up into 'runs | reports'"),
        ("animalcls.report.tables", "animalcls.run", "across 'runs | reports'"),
        ("animalcls.run", "animalcls.commands.tune", "up into 'entry points'"),
    ],
)
def test_the_contract_catches_the_imports_issue_23_removed(importer, imported, says):
    graph = import_graph()
    graph[importer] = graph[importer] | {imported}
    assert violations(graph) == [f"{importer} -> {imported} ({says})"]
