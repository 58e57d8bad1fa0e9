"""Tables as data, rendered to Markdown and LaTeX (booktabs), plus fixed number formats.

Every number is formatted here, with a fixed number of decimals, so the same results always give
the same bytes.
"""
from __future__ import annotations

import dataclasses
import math

NOT_COMPARABLE = "synthetic data, smoke settings: not comparable to the paper"
NOT_COMPARABLE_BANNER = "Synthetic data, smoke settings: not comparable to the paper."


@dataclasses.dataclass(frozen=True)
class Cell:
    text: str = ""
    # the value compared when marking the best of a column (already rounded as displayed); nan = not ranked
    rank: float = math.nan


@dataclasses.dataclass(frozen=True)
class Column:
    key: str
    label: str
    group: str = ""
    best: str | None = None  # "max" or "min": mark the best value of each row group in bold
    align: str = "r"


@dataclasses.dataclass
class Section:
    title: str
    label: str  # LaTeX label suffix
    columns: list[Column]
    rows: list[dict[str, Cell]]
    group_by: str  # rows with the same text in this column form a group (bold best within it)
    notes: list[str] = dataclasses.field(default_factory=list)


def fmt(value: float, decimals: int = 2) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.{decimals}f}"


def fmt_signed(value: float, decimals: int = 2) -> str:
    return "" if value is None or math.isnan(value) else f"{value:+.{decimals}f}"


def fmt_mean_sd(mean: float, sd: float, decimals: int = 2) -> str:
    if mean is None or math.isnan(mean):
        return ""
    return fmt(mean, decimals) if math.isnan(sd) else f"{mean:.{decimals}f} ± {sd:.{decimals}f}"


def fmt_interval(low: float, high: float, decimals: int = 2) -> str:
    return "" if math.isnan(low) or math.isnan(high) else f"[{low:.{decimals}f}, {high:.{decimals}f}]"


def fmt_p(value: float) -> str:
    if value is None or math.isnan(value):
        return ""
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"


def ranked(text: str, value: float, decimals: int = 2) -> Cell:
    return Cell(text, math.nan if value is None or math.isnan(value) else round(value, decimals))


def best_rows(section: Section) -> set[tuple[int, str]]:
    """(row index, column key) of every best cell: ties are all marked."""
    marked, groups, current = set(), [], None
    for index, row in enumerate(section.rows):
        group = row.get(section.group_by, Cell()).text
        if group or current is None:
            current = []
            groups.append(current)
        current.append(index)
    for column in section.columns:
        if column.best is None:
            continue
        for indices in groups:
            values = [(section.rows[i].get(column.key, Cell()).rank, i) for i in indices]
            values = [(value, i) for value, i in values if not math.isnan(value)]
            if not values:
                continue
            target = max(v for v, _ in values) if column.best == "max" else min(v for v, _ in values)
            marked.update((i, column.key) for value, i in values if value == target)
    return marked


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def section_markdown(section: Section) -> str:
    bold = best_rows(section)
    headers = [f"{c.group} {c.label}".strip() for c in section.columns]
    lines = [f"### {section.title}", "", "| " + " | ".join(map(_md_escape, headers)) + " |",
             "|" + "|".join("---:" if c.align == "r" else "---" for c in section.columns) + "|"]
    for index, row in enumerate(section.rows):
        cells = []
        for column in section.columns:
            text = _md_escape(row.get(column.key, Cell()).text)
            cells.append(f"**{text}**" if text and (index, column.key) in bold else text)
        lines.append("| " + " | ".join(cells) + " |")
    if section.notes:
        lines.append("")
        lines += [f"- {note}" for note in section.notes]
    return "\n".join(lines) + "\n"


_TEX = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "Δ": r"$\Delta$",
    "×": r"$\times$", "≥": r"$\geq$", "—": "---", "–": "--",
}


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(character, character) for character in text)


def section_latex(section: Section, caption: str, label: str) -> str:
    bold = best_rows(section)
    spec = "".join(c.align for c in section.columns)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{caption}}}", rf"\label{{{label}}}",
             r"\resizebox{\textwidth}{!}{%", rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
    groups = []  # (group, first column index, span)
    for index, column in enumerate(section.columns):
        if groups and groups[-1][0] == column.group and column.group:
            groups[-1][2] += 1
        else:
            groups.append([column.group, index, 1])
    if any(group for group, _, _ in groups):
        lines.append(" & ".join(rf"\multicolumn{{{span}}}{{c}}{{{tex_escape(group)}}}" if group and span > 1
                                else tex_escape(group) for group, _, span in groups) + r" \\")
        lines.append(" ".join(rf"\cmidrule(lr){{{first + 1}-{first + span}}}" for group, first, span in groups
                              if group))
    lines.append(" & ".join(tex_escape(column.label) for column in section.columns) + r" \\")
    lines.append(r"\midrule")
    for index, row in enumerate(section.rows):
        if index and row.get(section.group_by, Cell()).text:
            lines.append(r"\midrule")
        cells = []
        for column in section.columns:
            text = tex_escape(row.get(column.key, Cell()).text)
            cells.append(rf"\textbf{{{text}}}" if text and (index, column.key) in bold else text)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}", r"\end{table}"]
    return "\n".join(lines) + "\n"
