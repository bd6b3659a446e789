"""README claims from recorded runs: each claim's paired comparison, and the sentence to quote.

    python scripts/claims.py results=outputs/results.csv a.optim=sgd b.optim=adamw [model=base]
    python scripts/claims.py claims=claims.yaml [results=outputs/results.csv] [format=json]

The first form is `animalcls compare`'s arguments, for one claim. The second reads a list of
claims from YAML (or JSON):

    results: outputs/results.csv        # or a list; results= on the command line wins
    claims:
      - name: AdamW beats SGD on the base CNN
        a: {optim: sgd}
        b: {optim: adamw}
        where: {model: base, epochs: 10}   # both sides
        vary: []                           # settings that may also differ (see compare --help)
        metric: test_top1                  # the sentence's metric (default test_top1)
        results: other/results.csv         # optional: this claim's own table

Every number comes from `animalcls.report.paired`, the code behind `animalcls compare`, so a README
sentence says no more than the paired interval does: "b beats a" only from 3 seeds and an
interval that excludes 0. A claim that cannot be paired prints why and makes the exit status 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import yaml  # noqa: E402

from animalcls import results as table  # noqa: E402
from animalcls.commands.compare import DEFAULT_RESULTS, parse_request  # noqa: E402
from animalcls.errors import AnimalclsError  # noqa: E402
from animalcls.report import paired  # noqa: E402


def claims_from_file(path: Path) -> tuple[list[str] | None, list[dict[str, Any]]]:
    """The file's results table(s) (None if it names none) and its claims."""
    data = yaml.safe_load(path.read_text())  # JSON is YAML too
    if not isinstance(data, dict) or not isinstance(data.get("claims"), list):
        raise AnimalclsError(f"{path}: expected a mapping with a `claims:` list (see scripts/claims.py).")
    found = data.get("results")
    return ([str(r) for r in found] if isinstance(found, list) else [str(found)]) if found else None, data["claims"]


def _metric(name: str) -> paired.Metric:
    for metric in paired.METRICS:
        if metric.column == name:
            return metric
    raise AnimalclsError(f"metric {name!r}: use one of {', '.join(m.column for m in paired.METRICS)}.")


def one_claim(frame: Any, claim: dict[str, Any], fmt: str) -> str:
    """A claim's paired table (or JSON) and the sentence for its metric."""
    pairing = paired.pair_runs(frame, claim["a"], claim["b"], claim.get("where") or {}, claim.get("vary") or [])
    metrics = paired.compare_metrics(pairing)
    chosen = _metric(claim.get("metric", "test_top1"))
    said = paired.sentence(pairing, paired.compare_metric(pairing.pairs, chosen))
    if fmt == "json":
        return json.dumps({"name": claim.get("name", ""), "sentence": said, **paired.as_dict(pairing, metrics)})
    return f"## {claim.get('name', 'claim')}\n\n{said}\n\n{paired.render_text(pairing, metrics)}\n"


def main(argv: list[str]) -> int:
    file = next((a.partition("=")[2] for a in argv if a.startswith("claims=")), None)
    given = [a for a in argv if not a.startswith("claims=")]
    if file:
        results, claims = claims_from_file(Path(file))
        options = parse_request(given, sides=False)  # results= and format=
        tables = options["results"] if any(a.startswith("results=") for a in given) else results or [DEFAULT_RESULTS]
    else:
        options = parse_request(given)
        claims = [{"name": "claim", **{k: options[k] for k in ("a", "b", "where", "vary")}}]
        tables = options["results"]
    status = 0
    for claim in claims:
        try:  # a claim may name its own table (claims over several experiments in one file)
            frame = table.load(claim.get("results") or tables)
            print(one_claim(frame, claim, options.get("format", "text")))
        except AnimalclsError as exc:
            print(f"## {claim.get('name', 'claim')}\n\ncannot be paired: {exc}\n", file=sys.stderr)
            status = 2
    return status


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except AnimalclsError as exc:
        print(f"claims: error: {exc}", file=sys.stderr)
        sys.exit(2)
