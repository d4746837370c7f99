"""Write README.md from nbs/index.ipynb and its saved outputs, without Quarto.

`nbdev_readme` renders the README with Quarto; this script gives the same content where Quarto
is not installed: markdown cells as they are, code cells without their `#|` directives (or
without their code when marked `#| echo: false`), and their saved outputs, with
images written to readme_files/. Cells marked `#| hide` are left out.
"""
import base64
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _source(cell: dict) -> str:
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def _output_markdown(output: dict, image_name: str) -> str:
    "Render one saved cell output as markdown: images as files, HTML tables as they are, text in a fenced block."
    data = output.get("data", {})
    if "image/png" in data:
        path = ROOT / "readme_files" / image_name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(base64.b64decode("".join(data["image/png"])))
        return f"![]({path.relative_to(ROOT).as_posix()})"
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
        echo = not any(re.match(r"#\|\s*echo:\s*false", d) for d in directives)
        if code and echo:
            parts.append("```python\n" + code + "\n```")
        for output in cell.get("outputs", []):
            rendered = _output_markdown(output, f"figure-{len(parts)}.png")
            if rendered: parts.append(rendered)
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    out = ROOT / "README.md"
    out.write_text(render(ROOT / "nbs" / "index.ipynb"), encoding="utf-8")
    print(f"wrote {out.relative_to(ROOT)}", file=sys.stderr)
