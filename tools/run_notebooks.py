"""Execute notebooks in place and save their outputs, skipping the cells that `nbdev_test` skips.

Cells flagged with a `tst_flags` name from settings.ini (for example `#| slow`) keep the outputs
they have, so the saved result of a long run stays in the docs. Pass `--flags` to run them too.

    python tools/run_notebooks.py nbs/00_data.ipynb [--flags "slow"]
"""
import argparse
import os
import re
import sys
from pathlib import Path

from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell
from nbdev.config import get_config


def _directives(source: str) -> set[str]:
    names = set()
    for line in source.splitlines():
        m = re.match(r"#\|\s*(.+)", line)
        if m: names.update(m.group(1).split())
    return names


def run(path: Path, flags: set[str]) -> None:
    "Execute the notebook at `path` and write it back with the new outputs."
    skip = set(get_config().tst_flags.split()) - flags
    nb = read_nb(path)

    def no_eval(cell) -> bool:
        if cell.cell_type != "code" or "nbdev_export(" in cell.source: return True
        if _directives(cell.source) & skip: return True
        cell.outputs = []  # CaptureShell keeps the old outputs of a cell that now prints nothing
        return False

    shell = CaptureShell(path)
    shell.run_all(nb, exc_stop=True, preproc=no_eval)
    write_nb(nb, path)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="+", type=Path)
    ap.add_argument("--flags", default="", help="space-separated test flags whose cells run too")
    args = ap.parse_args()
    start = os.getcwd()
    for p in args.notebooks:
        print(f"running {p}", file=sys.stderr)
        os.chdir(p.parent)  # notebooks run from their own folder, as under nbdev_test
        try:
            run(Path(p.name), set(args.flags.split()))
        finally:
            os.chdir(start)
