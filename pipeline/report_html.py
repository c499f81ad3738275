"""HTML building blocks of the data report: sections, escaping, tables, captioned pictures.

Every string that comes from the data goes through ``esc`` (or ``fmt``); only ``Raw`` values,
built by this package from escaped parts, enter the page as they are."""
from __future__ import annotations

import html
from typing import List, NamedTuple, Optional

PAGE_START = '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'  # how every page begins
GENERATOR = '<meta name="generator" content="segbalance report">'  # right after PAGE_START
DEFAULT_TITLE = "segbalance data report"
# pages from before GENERATOR began with their title, always the default one
_OLDER_PAGE_START = f"{PAGE_START}<title>{DEFAULT_TITLE}</title><style>"


def is_report(head: str) -> bool:
    """Whether a file's first KB are a page ``report.render_report`` wrote: GENERATOR where the page puts it
    (QA 73: anywhere in the head, or a hand-written page starting as ours with "segbalance" in its first 300
    characters, was taken for one and overwritten), or an older page's opening."""
    return head.startswith(PAGE_START + GENERATOR) or head.startswith(_OLDER_PAGE_START)


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;
color:#222;padding:0 16px} h1{font-size:1.6em} h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:2em}
table{border-collapse:collapse;margin:8px 0 16px;font-size:0.9em} th,td{border:1px solid #ccc;padding:3px 8px;
text-align:right} th{background:#f3f3f3} td.l,th.l{text-align:left} .bad{color:#b00020;font-weight:600}
.ok{color:#1b7a1b;font-weight:600} .note{color:#555;font-size:0.9em} img{max-width:100%} nav a{margin-right:1em}
ul.summary li{margin:2px 0} .strip{display:flex;flex-wrap:wrap;gap:6px;margin:4px 0 14px}
figure{margin:0;display:inline-block;vertical-align:top} figcaption{font-size:0.75em;color:#444;max-width:136px;
overflow-wrap:anywhere} img.thumb{image-rendering:pixelated;border:1px solid #ddd;height:112px;width:auto}
.case figure{margin-right:6px}
.legend span{display:inline-block;margin-right:12px;font-size:0.85em} .legend i{display:inline-block;width:12px;
height:12px;margin-right:4px;vertical-align:-1px;border:1px solid #999} .case{border:1px solid #ddd;padding:6px;
margin:0 0 8px;display:inline-block;vertical-align:top} .case figcaption{max-width:none}
.case p{margin:4px 0;font-size:0.85em;max-width:560px;overflow-wrap:anywhere}
"""


class Section(NamedTuple):
    anchor: str
    title: str
    body: str
    summary: Optional[str] = None  # one line (HTML) for the summary list at the top


class Raw(str):
    """HTML that ``fmt`` / ``table`` put in the page as it is (built from escaped parts)."""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def fmt(value, digits: int = 4) -> str:
    if isinstance(value, Raw):
        return str(value)
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return esc(value)


def share(part: int, total: int) -> str:
    """``part`` of ``total`` as a percentage with one decimal that never rounds a part to nothing or to the
    whole (QA 68: 10 pixels of 45,901 showed as 0.0 %, the rest as 100.0 %): ``<0.1%``, ``>99.9%``."""
    fraction = part / max(1, total)
    if 0 < fraction < 0.0005:
        return "<0.1%"
    if 0.9995 <= fraction < 1:
        return ">99.9%"
    return f"{fraction:.1%}"


def table(header: List[str], rows: List[list], left: int = 1) -> str:
    cell = lambda tag, i, v: f'<{tag} class="l">{v}</{tag}>' if i < left else f"<{tag}>{v}</{tag}>"  # noqa: E731
    head = "".join(cell("th", i, esc(h)) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, fmt(c)) for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def figure(img_tag: str, caption: str) -> str:
    """A picture with a caption (the caption is escaped here)."""
    return f"<figure>{img_tag}<figcaption>{esc(caption)}</figcaption></figure>"
