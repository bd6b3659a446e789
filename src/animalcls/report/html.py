"""report.md as one self-contained report.html: figures inlined as base64 PNG, tables sortable by
a click on a column header (a few lines of inline JavaScript), no network, any browser.

Converts the Markdown this package writes (headings, paragraphs, `-` lists, pipe tables, code
spans, **bold**, links and images), not Markdown in general. The report's text is already inert
Markdown (`text.md_text`: `& < >` as entities, `\\ | `` ` [ ]` backslash-escaped), and every other
character is escaped here: no HTML from a results table ever reaches the page.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

_ENTITY = re.compile(r"&(?:amp|lt|gt|quot|#\d+|#x[0-9a-fA-F]+);")
_IMAGE = re.compile(r"!\[((?:\\.|[^\]\\])*)\]\(([^)\s]+)\)")
_LINK = re.compile(r"\[((?:\\.|[^\]\\])*)\]\(([^)\s]+)\)")

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 75em; margin: 2em auto; padding: 0 1em; line-height: 1.4; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; cursor: pointer; user-select: none; }
th[data-order="asc"]::after { content: " \\25B2"; }
th[data-order="desc"]::after { content: " \\25BC"; }
code { background: #f5f5f5; padding: 0 0.2em; }
img { max-width: 100%; }
"""

# a click on a header sorts its table's body by that column: numbers as numbers, blanks last
SCRIPT = """
document.querySelectorAll("table").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var asc = th.dataset.order !== "asc";
      table.querySelectorAll("th").forEach(function (h) { delete h.dataset.order; });
      th.dataset.order = asc ? "asc" : "desc";
      var body = table.tBodies[0], rows = Array.from(body.rows);
      function key(row) { var t = row.cells[col] ? row.cells[col].textContent.trim() : "";
        var n = parseFloat(t.replace(/[±%].*$/, "")); return t === "" ? null : (isNaN(n) ? t : n); }
      rows.sort(function (a, b) { var x = key(a), y = key(b);
        if (x === null || y === null) return (x === null) - (y === null);
        if (typeof x !== typeof y) return typeof x === "number" ? -1 : 1;
        return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1); });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def _escape(text: str) -> str:
    """Plain Markdown text as HTML: backslash escapes resolved, the report's entities kept."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            out.append(html.escape(text[i + 1]))
            i += 2
            continue
        entity = _ENTITY.match(text, i) if text[i] == "&" else None
        if entity:
            out.append(entity.group(0))
            i = entity.end()
            continue
        out.append(html.escape(text[i]))
        i += 1
    return "".join(out)


def _bold(text: str) -> str:
    parts = _escape(text).split("**")
    if len(parts) % 2 == 0:  # an unmatched ** stays as it is
        return "**".join(parts)
    return "".join(f"<strong>{p}</strong>" if k % 2 else p for k, p in enumerate(parts))


def _image(alt: str, src: str, base: Path) -> str:
    path = (base / src).resolve()
    if path.suffix.lower() != ".png" or not path.is_file() or base.resolve() not in path.parents:
        return f"<em>(figure {_escape(src)} not found)</em>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{_escape(alt)}" src="data:image/png;base64,{data}">'


def inline(text: str, base: Path) -> str:
    """One line of Markdown: code spans, images (inlined), links, bold, escaped text."""
    pieces: list[tuple[bool, str]] = []  # (is HTML made here, text); plain runs are escaped together
    i = 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            pieces.append((False, text[i : i + 2]))
            i += 2
            continue
        if text[i] == "`":
            end = text.find("`", i + 1)
            if end > i:
                pieces.append((True, f"<code>{html.escape(text[i + 1 : end])}</code>"))
                i = end + 1
                continue
        image = _IMAGE.match(text, i) if text.startswith("![", i) else None
        if image:
            pieces.append((True, _image(image.group(1), image.group(2), base)))
            i = image.end()
            continue
        link = _LINK.match(text, i) if text[i] == "[" else None
        if link:
            href = html.escape(link.group(2))
            pieces.append((True, f'<a href="{href}">{inline(link.group(1), base)}</a>'))
            i = link.end()
            continue
        end = i + 1
        while end < len(text) and text[end] not in "\\`![":
            end += 1
        pieces.append((False, text[i:end]))
        i = end
    result: list[str] = []
    plain: list[str] = []
    for is_html, piece in pieces:
        if is_html:
            result += [_bold("".join(plain)), piece]
            plain = []
        else:
            plain.append(piece)
    return "".join([*result, _bold("".join(plain))])


def _cells(line: str) -> list[str]:
    """A pipe-table row's cells, splitting on unescaped pipes only."""
    cells, current, i = [], [], 0
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            current.append(body[i : i + 2])
            i += 2
            continue
        if body[i] == "|":
            cells.append("".join(current).strip())
            current = []
        else:
            current.append(body[i])
        i += 1
    if "".join(current).strip():
        cells.append("".join(current).strip())
    return cells


def _table(lines: list[str], base: Path) -> str:
    header, rows = _cells(lines[0]), [_cells(line) for line in lines[2:]]
    head = "".join(f"<th>{inline(c, base)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{inline(c, base)}</td>" for c in row) + "</tr>\n" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


def _is_rule(line: str) -> bool:
    return bool(re.fullmatch(r"\|?(\s*:?-{3,}:?\s*\|)+\s*:?-*:?\s*", line.strip()))


def to_html(markdown: str, base: Path) -> str:
    """The page's body: `markdown` as HTML, images read from under `base`."""
    lines, blocks, i = markdown.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif heading := re.match(r"(#{1,6})\s+(.*)", line):
            level = len(heading.group(1))
            blocks.append(f"<h{level}>{inline(heading.group(2), base)}</h{level}>")
            i += 1
        elif line.lstrip().startswith("|") and i + 1 < len(lines) and _is_rule(lines[i + 1]):
            end = i + 2
            while end < len(lines) and lines[end].lstrip().startswith("|"):
                end += 1
            blocks.append(_table(lines[i:end], base))
            i = end
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{inline(lines[i][2:], base)}</li>")
                i += 1
            blocks.append("<ul>\n" + "\n".join(items) + "\n</ul>")
        else:
            paragraph = []
            while i < len(lines) and lines[i].strip() and not re.match(r"#{1,6}\s|- |\s*\|", lines[i]):
                paragraph.append(inline(lines[i], base))
                i += 1
            blocks.append("<p>" + "\n".join(paragraph) + "</p>")
    return "\n".join(blocks)


def write_html(index: Path) -> Path:
    """report.html beside `index` (report.md), from it and the figures it shows."""
    markdown = index.read_text(encoding="utf-8")
    title = markdown.splitlines()[0].lstrip("# ") if markdown else "report"
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"{to_html(markdown, index.parent)}\n<script>{SCRIPT}</script>\n</body>\n</html>\n"
    )
    path = index.with_name("report.html")
    path.write_text(page, encoding="utf-8")
    return path
