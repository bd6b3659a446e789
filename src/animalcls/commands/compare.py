"""`animalcls compare a.KEY=VALUE ... b.KEY=VALUE ... [KEY=VALUE ...] [results=PATH] [vary=[KEY,...]]
[confidence=0.95] [format=text|json]`

Is configuration b better than a, over the same seeds? Each side is chosen by filters on the
results table's columns, e.g.

    animalcls compare a.optim=sgd b.optim=adamw model=base epochs=10
    animalcls compare a="optim=sgd lr=0.1" b="optim=adamw lr=0.001" results=outputs/results.csv
    animalcls compare a.recipe=paper b.recipe=scratch vary=[optimizer,batch_size,epochs,recipe_settings]
    animalcls compare a.repeat_id=1a2b3c4d5e6f7a8b b.tags=my_sweep vary=[lr]

- `a.KEY=VALUE` / `b.KEY=VALUE` pick one side; `KEY=VALUE` picks both (e.g. model=base). KEY is a
  recorded setting (model, optimizer, lr, batch_size, epochs, loss, aug, data, precision, split,
  test_on, recipe, recipe_settings, ...; config names such as optim= work too) or an id column
  (repeat_id, run_id, paper_config, tags: one of a run's tags).
- Runs pair when their seed is the same and every setting matches except the compared ones: the
  keys named for a side, and those listed in `vary` (settings that may differ as part of what is
  compared). Only `ok` runs with a finite test top-1 count. A side whose runs are not seed repeats
  of one configuration is refused, with its groups listed; so are sides that differ in a setting
  not compared (the message names it).
- Per metric (test top-1/top-5, val top-1, train seconds, images/s): pairs, each side's
  mean ± std, b - a, its paired Student-t interval over seeds, and a verdict: "b beats a" or
  "a beats b" only with 3 or more pairs and an interval that excludes 0, else "on par" or
  "too few seeds". Then the pairs (seed, run a, run b) and the runs left unpaired, with why.
- `format=json` prints the same as one JSON object. Exit status 2 when the sides cannot be paired.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.core.override_parser.types import Override

from animalcls.commands import parse_overrides
from animalcls.errors import AnimalclsError

OPTIONS = ("results", "vary", "confidence", "format")
DEFAULT_RESULTS = "outputs/results.csv"


def main(args: list[str]) -> int:
    request = parse_request(args)
    print(run_compare(**request))
    return 0


def parse_request(args: list[str], sides: bool = True) -> dict[str, Any]:
    """The command line as run_compare's arguments (results, a, b, where, vary, confidence, format);
    `sides=False` for a caller that takes the sides from elsewhere (scripts/claims.py)."""
    request: dict[str, Any] = {"results": [DEFAULT_RESULTS], "a": {}, "b": {}, "where": {}, "vary": []}
    rest = []
    for arg in args:
        side, sep, filters = arg.partition("=")
        if side in ("a", "b") and sep:  # a="optim=sgd lr=0.1": the shell leaves a=optim=sgd lr=0.1
            _side_string(request[side], side, filters)
        else:
            rest.append(arg)
    for override in parse_overrides(rest, "compare"):
        _take(request, override)
    if sides and (not request["a"] or not request["b"]):
        raise AnimalclsError("say what each side is, e.g. `animalcls compare a.optim=sgd b.optim=adamw`.")
    return request


def _side_string(side: dict[str, Any], name: str, filters: str) -> None:
    words = filters.strip().strip("'\"").replace(",", " ").split()
    if not words or any("=" not in w for w in words):
        raise AnimalclsError(f'{name}= takes filters such as {name}="optim=sgd lr=0.1", or write {name}.optim=sgd.')
    for override in parse_overrides(words, "compare"):
        side[override.key_or_group] = _filter_value(override.key_or_group, override.value())


def _take(request: dict[str, Any], override: Override) -> None:
    key, value = override.key_or_group, override.value()
    side, dot, rest = key.partition(".")
    if dot and side in ("a", "b"):
        request[side][rest] = _filter_value(rest, value)
    elif key == "results":
        request["results"] = [str(v) for v in (value if isinstance(value, list) else [value])]
    elif key == "vary":
        request["vary"] = [str(v) for v in (value if isinstance(value, list) else [value])]
    elif key == "confidence":
        request["confidence"] = _confidence(value)
    elif key == "format":
        if value not in ("text", "json"):
            raise AnimalclsError(f"format={value!r}: use format=text or format=json.")
        request["format"] = value
    else:
        request["where"][key] = _filter_value(key, value)


def _filter_value(key: str, value: Any) -> Any:
    from animalcls.report.aggregate import BOOLEANS, NUMERIC
    from animalcls.report.paired import column_of

    column = column_of(key)  # an unknown key fails here, naming the columns
    if isinstance(value, float) and column not in NUMERIC and column not in BOOLEANS:
        raise AnimalclsError(f'{key}={value!r} reads as a number; quote it to match the text, e.g. {key}="1234e5".')
    return value


def _confidence(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise AnimalclsError(f"confidence={value!r}: give a fraction between 0 and 1, e.g. confidence=0.95.")
    return float(value)


def run_compare(
    results: list[str],
    a: dict[str, Any],
    b: dict[str, Any],
    where: dict[str, Any],
    vary: list[str],
    confidence: float = 0.95,
    format: str = "text",
) -> str:
    """The paired comparison of the runs in `results`, as text or JSON."""
    from animalcls import results as table
    from animalcls.report import paired

    missing = [p for p in results if not Path(p).is_file()]
    if missing:
        raise AnimalclsError(f"no results table at {', '.join(missing)}; give results=PATH (or [a.csv,b.csv]).")
    frame = table.load(results)
    pairing = paired.pair_runs(frame, a, b, where, vary)
    metrics = paired.compare_metrics(pairing, confidence)
    if format == "json":
        return json.dumps(paired.as_dict(pairing, metrics), indent=2)
    return paired.render_text(pairing, metrics)
