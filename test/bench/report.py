"""What the benchmarks share: a markdown table, and a report printed and written to a file."""

from pathlib import Path


def markdown_table(columns, rows, align=None):
    """
    Lines of a markdown table: ``columns`` its header, ``rows`` lists of cells
    (any values, shown with str), ``align`` one of "l"/"r" per column
    (default: the first left, the others right, as figures are).
    """
    align = align or "l" + "r" * (len(columns) - 1)
    rule = "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"
    lines = ["| " + " | ".join(columns) + " |", rule]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def write_report(path, title, *sections):
    """Print ``sections`` (text or lists of lines) under ``title`` and write them to ``path``."""
    parts = ["\n".join(s) if isinstance(s, list) else s for s in sections]
    text = "\n\n".join([f"# {title}", *parts]) + "\n"
    print(f"\n{text}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}")
