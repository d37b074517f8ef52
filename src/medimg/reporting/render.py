"""The report document and its two forms: Markdown (tables) and self-contained HTML.

The HTML embeds its figures as data: URIs and its style sheet inline, and loads
nothing (no scripts, fonts or images from elsewhere): it opens offline. Its only
outward links are the MLflow UI addresses of the runs. The Markdown holds the same
text and tables; figures are in the HTML only (Markdown viewers drop data: images).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import jinja2

from medimg.reporting.tables import Cell, Row, Table

TEMPLATE_FILE = "report.html.j2"
# In HTML, a number and its unit or spread stay on one line ("92.00 ± 2.00 %"): no-break
# spaces, and a word joiner after the en dash, which browsers may otherwise break after.
UNBREAKABLE = {
    " ± ": "\u00a0±\u00a0",
    " – ": "\u00a0–\u2060\u00a0",
    " %": "\u00a0%",
    " pp": "\u00a0pp",
}


@dataclass(frozen=True)
class FigureImage:
    title: str
    caption: str
    png: bytes

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass(frozen=True)
class Section:
    title: str
    tables: tuple[Table, ...]
    figures: tuple[FigureImage, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Report:
    title: str
    generated: str
    tracking_uri: str
    banners: tuple[str, ...]
    notes: tuple[str, ...]
    sections: tuple[Section, ...]
    runs: Table


def _md_text(text: str) -> str:
    return text.replace("|", "\\|")


def _md_cell(cell: Cell, bold: bool) -> str:
    text = _md_text(cell.text)
    if cell.link:
        text = f"[{text}]({cell.link})"
    return f"**{text}**" if bold and text else text


def _md_row(row: Row, width: int) -> str:
    cells = list(row.cells) + [Cell("")] * (width - len(row.cells))
    bold = row.kind in ("thesis", "heading")
    return "| " + " | ".join(_md_cell(cell, bold) for cell in cells) + " |"


def _md_table(table: Table) -> list[str]:
    lines = [f"### {table.caption}", ""]
    lines.append("| " + " | ".join(_md_text(c) for c in table.columns) + " |")
    lines.append("|" + " --- |" * len(table.columns))
    lines += [_md_row(row, len(table.columns)) for row in table.rows]
    lines.append("")
    lines += [f"*{note}*" for note in table.notes]
    return [*lines, ""]


def to_markdown(report: Report) -> str:
    """The report as GitHub-flavoured Markdown."""
    lines = [f"# {report.title}", "", f"Generated {report.generated} from `{report.tracking_uri}`."]
    lines.append("")
    lines += [f"> **{banner}**\n" for banner in report.banners]
    lines += [f"- {note}" for note in report.notes]
    lines.append("")
    for section in report.sections:
        lines += [f"## {section.title}", ""]
        lines += [f"{note}\n" for note in section.notes]
        for table in section.tables:
            lines += _md_table(table)
        if section.figures:
            titles = "; ".join(figure.title for figure in section.figures)
            lines += [f"Figures ({titles}): in report.html.", ""]
    lines += ["## Runs", ""]
    lines += _md_table(report.runs)
    return "\n".join(lines).rstrip() + "\n"


def unbreakable(text: str) -> str:
    """`text` with no line break inside a number with its unit or spread."""
    for plain, joined in UNBREAKABLE.items():
        text = text.replace(plain, joined)
    return text


def to_html(report: Report) -> str:
    """The report as one HTML page with its style and figures inline."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["unbreakable"] = unbreakable
    return environment.get_template(TEMPLATE_FILE).render(report=report)
