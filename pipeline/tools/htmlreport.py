"""`index.html` beside a report's `index.md`: our own markdown subset as one standalone page.

The subset is what `report` and `eda` write: headings (`#` .. `######`), paragraphs, bullet lists
(`- ` or `* `), pipe tables (a header row, a `|---|` row, body rows), images `![alt](file.png)` (shown
inline, relative paths kept, so the page works where the PNGs lie), inline code and bold. Every piece of
text is escaped with html.escape, so a class named `<b>` shows as written. No dependency beyond the
standard library.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from pipeline.core.io import write_text

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; line-height: 1.45; color: #222;
       max-width: 1200px; margin: 2em auto; padding: 0 1em; }
h1, h2, h3 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 90%; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; }
th { background: #f3f3f3; }
tr:nth-child(even) td { background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { background: #f3f3f3; padding: .1em .3em; border-radius: 3px; font-size: 90%; }
img { max-width: 100%; height: auto; }
figure { margin: 1em 0; }
figcaption { color: #666; font-size: 85%; }
""".strip()

INLINE = re.compile(r"`(?P<code>[^`]+)`"
                    r"|!\[(?P<alt>[^\]]*)\]\((?P<src>[^)\s]+)\)"
                    r"|\*\*(?P<bold>.+?)\*\*")
HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
BULLET = re.compile(r"^\s*[-*]\s+(.*)$")
IMAGE_LINE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<src>[^)\s]+)\)$")
TABLE_RULE = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?$")
NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?%?$")


def inline(text: str) -> str:
    """HTML of one line's inline markdown: `code`, **bold**, ![alt](src); everything else escaped."""
    out, pos = [], 0
    for m in INLINE.finditer(text):
        out.append(html.escape(text[pos:m.start()]))
        if m.group("code") is not None:
            out.append(f"<code>{html.escape(m.group('code'))}</code>")
        elif m.group("src") is not None:
            out.append(f'<img src="{html.escape(m.group("src"))}" alt="{html.escape(m.group("alt"))}">')
        else:
            out.append(f"<strong>{inline(m.group('bold'))}</strong>")
        pos = m.end()
    out.append(html.escape(text[pos:]))
    return "".join(out)


def cells(row: str) -> list[str]:
    """The cells of a pipe-table row (`\\|` is a literal bar inside a cell)."""
    row = row.strip()
    row = row[1:] if row.startswith("|") else row
    row = row[:-1] if row.endswith("|") and not row.endswith("\\|") else row
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row)]


def table(rows: list[str]) -> str:
    head, body = cells(rows[0]), [cells(r) for r in rows[2:]]
    lines = ["<table>", "<thead><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr></thead>", "<tbody>"]
    for r in body:
        tds = "".join(f'<td class="num">{inline(c)}</td>' if NUMBER.match(c) else f"<td>{inline(c)}</td>" for c in r)
        lines.append(f"<tr>{tds}</tr>")
    return "\n".join(lines + ["</tbody>", "</table>"])


def markdown_to_html(text: str, title: str | None = None) -> str:
    """A standalone HTML page of `text` (the subset in the module docstring); the title defaults to the first heading."""
    lines = text.splitlines()
    body: list[str] = []
    para: list[str] = []
    items: list[str] = []

    def flush() -> None:
        if para:
            body.append("<p>" + "<br>\n".join(inline(p) for p in para) + "</p>")
            para.clear()
        if items:
            body.append("<ul>\n" + "\n".join(f"<li>{inline(i)}</li>" for i in items) + "\n</ul>")
            items.clear()

    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        stripped = line.strip()
        if not stripped:
            flush()
        elif m := HEADING.match(stripped):
            flush()
            level = len(m.group(1))
            title = title or m.group(2)
            body.append(f"<h{level}>{inline(m.group(2))}</h{level}>")
        elif stripped.startswith("|") and i + 1 < len(lines) and TABLE_RULE.match(lines[i + 1].strip()):
            flush()
            rows = [stripped, lines[i + 1].strip()]
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(lines[i].strip())
                i += 1
            body.append(table(rows))
            continue
        elif m := IMAGE_LINE.match(stripped):
            flush()
            src, alt = html.escape(m.group("src")), html.escape(m.group("alt"))
            body.append(f'<figure><img src="{src}" alt="{alt}"><figcaption>{alt}</figcaption></figure>')
        elif m := BULLET.match(line):
            if para:
                flush()
            items.append(m.group(1))
        elif items and line.startswith((" ", "\t")):  # a bullet's continuation line
            items[-1] += " " + stripped
        else:
            if items:
                flush()
            para.append(stripped)
        i += 1
    flush()
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title or 'report')}</title>", f"<style>\n{CSS}\n</style>", "</head>", "<body>",
        *body, "</body>", "</html>", ""])


def write_html(md_path: str | Path) -> Path:
    """Write `index.html` (same name, .html) beside the markdown file `md_path`, atomically; return its path."""
    md_path = Path(md_path)
    out = md_path.with_suffix(".html")
    write_text(out, markdown_to_html(md_path.read_text()))
    return out
