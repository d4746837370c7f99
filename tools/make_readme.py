"""Write README.md from nbs/index.ipynb and its saved outputs, without Quarto.

`nbdev_readme` renders the README with Quarto; this script gives the same content where Quarto
is not installed: markdown cells as they are, code cells without their `#|` directives, and
their saved outputs. Cells marked `#| hide` are left out.
"""
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _source(cell: dict) -> str:
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def _output_markdown(output: dict) -> str:
    "Render one saved cell output as markdown: HTML tables as they are, text in a fenced block."
    data = output.get("data", {})
    if output.get("output_type") == "stream":
        return "```\n" + "".join(output["text"]).rstrip() + "\n```"
    if "text/markdown" in data:
        return "".join(data["text/markdown"])
    if "text/html" in data:
        html = "".join(data["text/html"])
        return re.sub(r"<style[^>]*>.*?</style>", "", html, flags=re.S).strip()
    if "text/plain" in data:
        return "```\n" + "".join(data["text/plain"]).rstrip() + "\n```"
    return ""


def render(nb_path: Path) -> str:
    "Return the README text for the notebook at `nb_path`."
    parts = []
    for cell in json.loads(nb_path.read_text(encoding="utf-8"))["cells"]:
        text = _source(cell)
        directives = [l for l in text.splitlines() if l.startswith("#|")]
        if any(re.match(r"#\|\s*hide\b", d) for d in directives):
            continue
        if cell["cell_type"] == "markdown":
            parts.append(text.strip())
            continue
        if cell["cell_type"] != "code":
            continue
        code = "\n".join(l for l in text.splitlines() if not l.startswith("#|")).strip()
        if code:
            parts.append("```python\n" + code + "\n```")
        parts += [o for o in map(_output_markdown, cell.get("outputs", [])) if o]
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    out = ROOT / "README.md"
    out.write_text(render(ROOT / "nbs" / "index.ipynb"), encoding="utf-8")
    print(f"wrote {out.relative_to(ROOT)}", file=sys.stderr)
