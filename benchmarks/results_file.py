"""The markdown results file the benchmark scripts write: title, command, machine line, table."""
from __future__ import annotations

import datetime
import platform
from pathlib import Path
from typing import Sequence


def results_text(title: str, argv: Sequence[str], details: str, text: str) -> str:
    """``# title``, the command that made it, ``date, machine, details`` and the table.

    >>> print(results_text("T", ["benchmarks/x.py", "--a", "1"], "2 threads.", "| t |")
    ...       .replace(str(datetime.date.today()), "DATE").replace(platform.node(), "HOST"))
    # T
    <BLANKLINE>
    `python benchmarks/x.py --a 1`
    <BLANKLINE>
    DATE, HOST, 2 threads.
    <BLANKLINE>
    | t |
    <BLANKLINE>
    """
    header = [f"# {title}", "",
              f"`python benchmarks/{Path(argv[0]).name} {' '.join(argv[1:])}`", "",
              f"{datetime.date.today()}, {platform.node()}, {details}", "", ""]
    return "\n".join(header) + text + "\n"


def write_results(path: Path | None, title: str, argv: Sequence[str], details: str,
                  text: str) -> None:
    """Print the table ``text``; write :func:`results_text` to ``path`` when one is given."""
    print(text)
    if path:
        Path(path).write_text(results_text(title, argv, details, text))
