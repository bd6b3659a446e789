"""Values as text for the report's Markdown, CSV, LaTeX and figure labels.

Tags, paper_config, data names, errors and run dirs come from results tables that anyone may have
written (or merged from someone else), so they are escaped where they are written, by format:

- Markdown (`md_text`): `& < >` become HTML entities (no raw HTML, no autolinks), `\\ | `` ` [ ]`
  are backslash-escaped (no forged table columns, code spans or links), and line breaks become
  spaces (one table row stays one line).
- CSV for people (`csv_text`): a text cell that a spreadsheet would run as a formula (it starts
  with `= + - @`, tab or CR) gets a leading `'`; numbers, and text that is a plain number, keep
  their value.
- LaTeX (`latex_text`): every special character is escaped and line breaks become spaces (a
  blank line would end the paragraph inside a tabular).
- Figures (`mpl_text`): `$` is escaped, so matplotlib never parses a name as math (and fails).
"""

from __future__ import annotations

import math
from typing import Any

# ---------------------------------------------------------------- plain values


def is_blank(value: Any) -> bool:
    """Nothing to show: None, NaN or the empty string."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value) == ""


def plain(value: Any) -> str:
    """A short text of a value: 1.0 -> '1', 0.001 -> '0.001', blank -> '?'."""
    if is_blank(value):
        return "?"
    if isinstance(value, float):
        return f"{value:g}" if not value.is_integer() else str(int(value))
    return str(value)


def fmt(value: Any, digits: int = 2) -> str:
    """A number with fixed decimals; blank stays blank (never 0)."""
    return "" if is_blank(value) else f"{float(value):.{digits}f}"


def one_line(value: Any) -> str:
    # str.splitlines also splits on \r, \v, \f, \x1c-\x1e, \x85, \u2028 and \u2029: a reader that
    # splits lines the same way must still see one row per line
    return " ".join(str(value).splitlines())


# ---------------------------------------------------------------- Markdown

_MARKDOWN = {"\\": "\\\\", "&": "&amp;", "<": "&lt;", ">": "&gt;", "|": "\\|", "`": "\\`", "[": "\\[", "]": "\\]"}


def md_text(value: Any) -> str:
    """Untrusted text as inert Markdown: one line, no HTML, links, code spans or table pipes."""
    if is_blank(value):
        return ""
    return "".join(_MARKDOWN.get(ch, ch) for ch in one_line(value))


def md_code(value: Any) -> str:
    """A code span when the text needs no escaping (ids, ordinary paths), else escaped text:
    inside a code span escapes do not work, so text that needs them is never put in one."""
    text = "" if is_blank(value) else str(value)
    return f"`{text}`" if text and md_text(text) == text else md_text(text)


# ---------------------------------------------------------------- CSV

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def csv_text(value: Any) -> Any:
    """A cell for a CSV that people open in a spreadsheet: formulas in text are neutralised."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _is_number(value):
        return "'" + value
    return value


def csv_frame(frame: Any) -> Any:
    """A copy of a data frame with `csv_text` applied to its text (object) columns only, so a
    genuine negative number in a numeric column keeps its value."""
    from pandas.api.types import is_numeric_dtype

    out = frame.copy()
    for column in out.columns:
        if not is_numeric_dtype(out[column]):
            out[column] = out[column].map(csv_text)
    return out


# ---------------------------------------------------------------- LaTeX and figures

_LATEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    # < > | print as other glyphs in the default font encoding; a cell starting with [
    # after a row's \\ would be read as its optional length
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
    "[": "{[}",
    "]": "{]}",
}


def latex_text(value: Any) -> str:
    """Text for a LaTeX table cell or caption."""
    if is_blank(value):
        return ""
    return "".join(_LATEX.get(ch, ch) for ch in one_line(value)).replace("±", r"$\pm$")


def mpl_text(value: Any) -> str:
    """Text for a matplotlib title or label: '$' would start mathtext (and may raise); one line,
    as a \r or \x1c is a glyph no font has (matplotlib warns and draws a box)."""
    return one_line(value).replace("$", r"\$")
