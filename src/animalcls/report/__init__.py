"""`animalcls report`: the paper's tables and figures, side by side with what the runs measured.

One job per module, data flowing one way:

    text.py       values as text: escaping for Markdown, CSV, LaTeX and figure labels
    aggregate.py  results rows -> one row per run -> groups of true repeats (pure, data frames)
    tables.py     paper vs reproduced tables and the list of runs, as Markdown, CSV and LaTeX
    beyond.py     beyond the paper: recipes vs the paper's recipe, test top-1 per epoch budget
    rundirs.py    finding run directories and reading their files
    figures.py    data frames in, PNG paths out (matplotlib imported on first use)
    assemble.py   run_report: the whole report and its index, report.md

The results schema is `animalcls.record`'s; tables are read with `animalcls.results.load`.
"""

from animalcls.report.aggregate import aggregate, prepare
from animalcls.report.assemble import figure_failures, run_report
from animalcls.report.rundirs import choose_runs, predictions_of
from animalcls.report.tables import comparison, latex_table, markdown_table

__all__ = [
    "aggregate",
    "choose_runs",
    "comparison",
    "figure_failures",
    "latex_table",
    "markdown_table",
    "predictions_of",
    "prepare",
    "run_report",
]
