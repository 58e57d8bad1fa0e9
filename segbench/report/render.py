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


MAX_MARKDOWN_COLUMNS = 10  # a Markdown table wider than this does not fit a screen: it is split into blocks


def _units(columns: list[Column]) -> list[list[Column]]:
    """Columns that belong together (one group, e.g. a metric's paper / ours / Δ) stay in one block."""
    units: list[list[Column]] = []
    for column in columns:
        if units and column.group and units[-1][-1].group == column.group:
            units[-1].append(column)
        else:
            units.append([column])
    return units


def _partitions(count: int, parts: int):
    """Every way to cut ``count`` items (in order) into ``parts`` non-empty runs, as run lengths."""
    if parts == 1:
        yield [count]
        return
    for first in range(1, count - parts + 2):
        for rest in _partitions(count - first, parts - 1):
            yield [first] + rest


def markdown_blocks(keys: list[Column], values: list[Column], limit: int = MAX_MARKDOWN_COLUMNS) -> list[list[Column]]:
    """Value columns cut into as few blocks as fit ``limit`` beside the key columns, as even as possible.

    Among equally even cuts the one with the smallest first block wins (mIoU and DSC, then Acc, Spe, Sen).
    A group wider than the limit on its own gets a block of its own: a metric stays beside its paper value.
    """
    units = _units(values)
    room = max(1, limit - len(keys))

    def runs(cut: list[int]) -> list[list[Column]]:
        starts = [sum(cut[:index]) for index in range(len(cut))]
        return [[column for unit in units[start:start + length] for column in unit]
                for start, length in zip(starts, cut)]

    for parts in range(1, len(units) + 1):
        fitting = [runs(cut) for cut in _partitions(len(units), parts)]
        fitting = [blocks for blocks in fitting if max(map(len, blocks)) <= room]
        if fitting:
            return min(fitting, key=lambda blocks: (max(map(len, blocks)), [len(block) for block in blocks]))
    return [list(unit) for unit in units]


def _key_columns(section: Section) -> tuple[Column | None, list[Column], list[Column]]:
    """(group column shown as header rows, other key columns repeated in every block, value columns)."""
    leading = 0
    while leading < len(section.columns) and section.columns[leading].align == "l":
        leading += 1
    keys, values = section.columns[:leading], section.columns[leading:]
    group = next((c for c in keys if c.key == section.group_by), None)
    return group, [c for c in keys if c is not group], values


def _header(column: Column) -> str:
    return _md_escape(f"{column.group} {column.label}".strip())


def section_markdown(section: Section) -> str:
    """Markdown blocks of at most MAX_MARKDOWN_COLUMNS columns; the row-group column becomes header rows."""
    bold = best_rows(section)
    group, keys, values = _key_columns(section)
    blocks = markdown_blocks(keys, values) if values else [[]]
    lines = [f"### {section.title}", ""]
    for number, block in enumerate(blocks, start=1):
        columns = keys + block
        if len(blocks) > 1:
            lines += [f"Part {number} of {len(blocks)}: " + ", ".join(dict.fromkeys(
                c.group or c.label for c in block)) + ".", ""]
        lines += ["| " + " | ".join(map(_header, columns)) + " |",
                  "|" + "|".join("---:" if c.align == "r" else "---" for c in columns) + "|"]
        for index, row in enumerate(section.rows):
            heading = row.get(group.key, Cell()).text if group else ""
            if heading:
                lines.append("| " + " | ".join([f"**{_md_escape(heading)}**"] + [""] * (len(columns) - 1)) + " |")
            cells = []
            for column in columns:
                text = _md_escape(row.get(column.key, Cell()).text)
                cells.append(f"**{text}**" if text and (index, column.key) in bold else text)
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if section.notes:
        lines += [f"- {note}" for note in section.notes]
        lines.append("")
    return "\n".join(lines)


_TEX = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "Δ": r"$\Delta$",
    "×": r"$\times$", "≥": r"$\geq$", "—": "---", "–": "--", "−": "$-$", "α": r"$\alpha$", "φ": r"$\varphi$",
    "“": "``", "”": "''",
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
