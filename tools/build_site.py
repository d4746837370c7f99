"""Build the documentation as a static HTML site from the notebooks and their saved outputs, without Quarto.

nbdev's own docs build (`nbdev_docs`) needs Quarto. This script gives a browsable site where Quarto is not
installed. It applies nbdev 2's documentation processors to each notebook: the H1 title becomes the front
matter, `#| hide` and export cells are removed, API documentation follows exported cells, and documented
symbols become links. It converts the result with nbconvert's HTMLExporter and adds a sidebar that links all
chapters, index first. It executes no notebook cell: the API documentation is rendered from the installed
package, and every other output is the one saved in the notebook.

    python tools/build_site.py                 # writes _site/
    python tools/build_site.py --out /tmp/site
    python tools/build_site.py --quarto        # runs nbdev_docs instead; stops with a message without Quarto
"""
from __future__ import annotations

import argparse
import ast
import html
import importlib
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import yaml
from execnb.nbio import read_nb
from nbconvert import HTMLExporter
from nbconvert.preprocessors import ExtractOutputPreprocessor, TagRemovePreprocessor
from nbformat.v4.rwbase import rejoin_lines
from nbdev.config import get_config
from nbdev.doclinks import _nbpath2html
from nbdev.frontmatter import FrontmatterProc
from nbdev.process import NBProcessor, Processor
from nbdev.processors import (_default_exp, add_links, add_show_docs, clean_magics, clean_show_doc, filter_stream_, hide_,
                              hide_line, mv_exports, populate_language, rm_export, rm_header_dash, strip_ansi,
                              strip_hidden_metadata)
from nbdev.showdoc import show_doc
from pygments.formatters import HtmlFormatter

log = logging.getLogger("build_site")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp")  # files under nbs/ copied into the site as they are


class SiteError(Exception):
    "The site cannot be built; the message names the notebook or file and what to do."


def page_name(notebook: Path) -> str:
    "Return the HTML file name that nbdev and Quarto give a notebook: 03_trainer.ipynb -> trainer.html."
    return _nbpath2html(Path(notebook.name)).name


def chapter_order(nbs: Path) -> list[Path]:
    "List the notebooks in sidebar.yml order, index first, then any notebook the sidebar lacks, by name."
    listed = []
    sidebar = nbs / "sidebar.yml"
    if sidebar.is_file():
        def walk(entries):
            for e in entries or []:
                if isinstance(e, str): listed.append(e)
                elif isinstance(e, dict): walk(e.get("contents"))
        walk(yaml.safe_load(sidebar.read_text(encoding="utf-8"))["website"]["sidebar"]["contents"])
    notebooks = sorted(p for p in nbs.glob("*.ipynb") if not p.name.startswith(("_", ".")))
    by_name = {p.name: p for p in notebooks}
    ordered = [by_name[n] for n in listed if n in by_name and n != "index.ipynb"]
    missing = [p for p in notebooks if p not in ordered and p.stem != "index"]
    if missing:
        log.warning("sidebar.yml does not list %s; they are placed by file name (nbdev_sidebar updates the file)",
                    ", ".join(p.name for p in missing))
    for p in missing:  # before the first listed chapter whose file name sorts after it
        ordered.insert(next((i for i, q in enumerate(ordered) if q.name > p.name), len(ordered)), p)
    return [p for p in notebooks if p.stem == "index"] + ordered


class RenderShowDocs(Processor):
    """Fill each `show_doc(name)` cell with the API documentation of `name`, looked up in the installed package.

    It takes the place of nbdev's `exec_show_docs`, which executes every cell that imports something: that would
    run notebook code during the docs build. Only the name inside `show_doc(...)` is resolved, by attribute lookup."""
    def begin(self):
        self.namespaces = []
        lib = get_config().lib_name
        module = _default_exp(self.nb)
        if module: self.namespaces.append(importlib.import_module(f"{lib}.{module}"))
        self.namespaces.append(importlib.import_module(lib))

    def _resolve(self, expr: ast.expr):
        if isinstance(expr, ast.Name):
            for ns in self.namespaces:
                if hasattr(ns, expr.id): return getattr(ns, expr.id)
            raise SiteError(f"{self.nb.path_}: show_doc({expr.id}) names nothing in "
                            f"{', '.join(m.__name__ for m in self.namespaces)}; run nbdev_export so the package matches the notebook.")
        if isinstance(expr, ast.Attribute): return getattr(self._resolve(expr.value), expr.attr)
        raise SiteError(f"{self.nb.path_}: show_doc takes a name here, got {ast.unparse(expr)!r}.")

    def cell(self, cell):
        if cell.cell_type != "code": return
        code = "\n".join(l for l in cell.source.splitlines() if not l.lstrip().startswith("#|"))
        try:
            body = ast.parse(code).body
        except SyntaxError:
            return
        if len(body) != 1 or not isinstance(body[0], ast.Expr) or not isinstance(body[0].value, ast.Call): return
        call = body[0].value
        if not (isinstance(call.func, ast.Name) and call.func.id == "show_doc" and call.args): return
        markdown = show_doc(self._resolve(call.args[0]))._repr_markdown_()
        markdown = re.sub(r"\)\{[^}\n]*\}", ")", markdown).replace("#LNone)", ")")  # Quarto link attributes, unknown lines
        cell.outputs = [{"output_type": "display_data", "metadata": {}, "data": {"text/markdown": markdown}}]


DOC_PROCESSORS = [FrontmatterProc, populate_language, add_show_docs, strip_ansi, hide_line, filter_stream_, rm_header_dash,
                  clean_show_doc, RenderShowDocs, rm_export, clean_magics, hide_, add_links, mv_exports, strip_hidden_metadata]
# nbdev 2.4's FilterDefaults.base_procs in order, with RenderShowDocs for exec_show_docs, and without insert_warning,
# ai_magics and add_fold, whose output only Quarto uses.


def _quarto_options(source: str) -> tuple[dict[str, str], str]:
    "Split the Quarto cell options (`#| echo: false`) that nbdev leaves in a cell from its code."
    options, code = {}, []
    for line in source.splitlines():
        m = re.match(r"\s*#\|\s*([\w-]+)\s*:\s*(.*?)\s*$", line)
        if m and not code: options[m.group(1)] = m.group(2).strip("'\"")
        else: code.append(line)
    return options, "\n".join(code).strip("\n")


def to_nbformat(nb) -> nbformat.NotebookNode:
    "Convert a processed notebook to a plain nbformat notebook, applying Quarto's echo, output and include options."
    cells = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cells.append(nbformat.v4.new_markdown_cell(cell.source))
        elif cell.cell_type == "code":
            options, code = _quarto_options(cell.source)
            if options.get("include") == "false": continue
            outputs = [] if options.get("output") == "false" else [nbformat.from_dict(dict(o)) for o in cell.get("outputs", [])]
            first_line = next((l.strip() for l in code.splitlines() if l.strip()), "")
            for o in outputs:
                for kind in (k for k in o.get("data", {}) if k.startswith("image/")):
                    o.setdefault("metadata", {}).setdefault(kind, {}).setdefault("alt", f"Figure made by: {first_line}"[:200])
            hide_input = options.get("echo") == "false" or not code
            if hide_input and not outputs: continue
            cells.append(nbformat.v4.new_code_cell(code, outputs=outputs, metadata={"tags": ["remove_input"] if hide_input else []}))
    out = nbformat.v4.new_notebook(cells=cells)
    out.metadata["language_info"] = {"name": "python"}
    return rejoin_lines(out)  # saved outputs hold lists of lines; nbconvert expects strings


def _quarto_ids(body: str) -> str:
    "Give headings the ids Quarto gives them (lower case), since nbdev's symbol links use those; fix same-page links to match."
    body = re.sub(r'(<h[1-6][^>]* id=")([^"]*)(")', lambda m: m.group(1) + m.group(2).lower() + m.group(3), body)
    return re.sub(r'href="#([^"]*)"', lambda m: f'href="#{m.group(1).lower()}"', body)


def _local_href(href: str, doc_url: str, pages: dict[str, str]) -> str:
    "Point links to the published docs and to notebooks at the pages of this site."
    if doc_url and href.startswith(doc_url): href = href[len(doc_url):].lstrip("/") or "index.html"
    path, sep, fragment = href.partition("#")
    if path.endswith(".ipynb") and Path(path).name in pages: path = pages[Path(path).name]
    return path + sep + fragment


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} – {site_title}</title>
<link rel="stylesheet" href="site.css">
<link rel="icon" href="data:,">
</head>
<body>
<nav class="sidebar" aria-label="chapters">
<a class="site-title" href="index.html">{site_title}</a>
<ul>
{nav}
</ul>
<p class="repo"><a href="{git_url}">Repository</a></p>
</nav>
<main>
<header><h1 class="title">{title}</h1>{description}</header>
{body}
</main>
</body>
</html>
"""

CSS = """
body { margin: 0; font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; line-height: 1.5; color: #212529; }
.sidebar { position: fixed; top: 0; bottom: 0; left: 0; width: 15rem; overflow-y: auto; padding: 1.5rem 1rem;
           background: #f5f6f8; border-right: 1px solid #dee2e6; box-sizing: border-box; }
.sidebar .site-title { display: block; font-weight: 600; font-size: 1.2rem; margin-bottom: 1rem; color: #212529; text-decoration: none; }
.sidebar ul { list-style: none; padding: 0; margin: 0; }
.sidebar li a { display: block; padding: 0.3rem 0.5rem; border-radius: 4px; color: #2c3e50; text-decoration: none; }
.sidebar li a:hover { background: #e9ecef; }
.sidebar li a[aria-current="page"] { background: #2780e3; color: white; }
.sidebar .repo { margin-top: 1.5rem; font-size: 0.9rem; }
main { margin-left: 15rem; padding: 1.5rem 2.5rem 4rem; max-width: 62rem; }
header .description { font-style: italic; font-size: 1.15rem; opacity: 0.75; }
a { color: #2780e3; }
pre { background: #f8f9fa; padding: 0.6rem 0.8rem; border-radius: 4px; overflow-x: auto; font-size: 0.85rem; }
code { font-size: 0.9em; }
.input_area pre, .input pre { border-left: 3px solid #2780e3; }
.output_stderr pre { background: #fff4f4; }
.output_subarea img { max-width: 100%; height: auto; }
.cell { margin-bottom: 1rem; }
table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.85rem; display: block; overflow-x: auto; }
th, td { border: 1px solid #dee2e6; padding: 0.25rem 0.5rem; text-align: left; }
th { background: #f1f3f5; }
.anchor-link { visibility: hidden; margin-left: 0.3rem; text-decoration: none; }
h1:hover .anchor-link, h2:hover .anchor-link, h3:hover .anchor-link { visibility: visible; }
hr { border: 0; border-top: 1px solid #dee2e6; margin: 2rem 0 1rem; }
"""


def build_page(path: Path, out: Path, exporter: HTMLExporter) -> tuple[str, str, str, str]:
    "Process one notebook and return its page name, title, description and body HTML; its images are written into `out`."
    nb = read_nb(path)
    nb.path_ = str(path)
    NBProcessor(nb=nb, procs=DOC_PROCESSORS).process()
    front = getattr(nb, "frontmatter_", {}) or {}
    name = page_name(path)
    body, resources = exporter.from_notebook_node(
        to_nbformat(nb), resources={"output_files_dir": f"{Path(name).stem}_files", "unique_key": Path(name).stem})
    for file, data in resources.get("outputs", {}).items():
        (out / file).parent.mkdir(parents=True, exist_ok=True)
        (out / file).write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return name, front.get("title", path.stem), front.get("description", ""), body


def build_site(nbs: Path, out: Path) -> list[Path]:
    "Build the site of all notebooks in `nbs` into `out`, replacing what is there; return the written pages."
    cfg = get_config()
    notebooks = chapter_order(nbs)
    if not notebooks: raise SiteError(f"{nbs} contains no notebooks.")
    if out.exists(): shutil.rmtree(out)
    out.mkdir(parents=True)
    exporter = HTMLExporter(template_name="basic", exclude_input_prompt=True, exclude_output_prompt=True)
    exporter.register_preprocessor(TagRemovePreprocessor(remove_input_tags={"remove_input"}), enabled=True)
    exporter.register_preprocessor(ExtractOutputPreprocessor(), enabled=True)
    pages = [build_page(p, out, exporter) for p in notebooks]
    names = {p.name: page_name(p) for p in notebooks}
    doc_url = f"{cfg.doc_host}{cfg.doc_baseurl}".rstrip("/") + "/"
    written = []
    for name, title, description, body in pages:
        current = ' aria-current="page"'
        nav = "\n".join(f'<li><a href="{n}"{current if n == name else ""}>{html.escape(t)}</a></li>' for n, t, _, _ in pages)
        body = re.sub(r'href="([^"]*)"', lambda m: f'href="{_local_href(html.unescape(m.group(1)), doc_url, names)}"', _quarto_ids(body))
        text = PAGE.format(title=html.escape(title), site_title=html.escape(cfg.title), nav=nav, git_url=html.escape(cfg.git_url),
                           description=f'<p class="description">{html.escape(description)}</p>' if description else "",
                           body=body)
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)
    for image in (p for p in nbs.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not any(s.startswith(("_", ".")) for s in p.relative_to(nbs).parts)):
        (out / image.relative_to(nbs)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(image, out / image.relative_to(nbs))
    (out / "site.css").write_text(CSS + HtmlFormatter(style="default").get_style_defs(".highlight"), encoding="utf-8")
    log.info("wrote %d pages to %s", len(written), out)
    return written


def run_quarto_docs() -> int:
    "Run nbdev_docs when Quarto is installed; otherwise say so and how to build without it."
    if shutil.which("quarto") is None:
        print("Quarto is not installed, and nbdev_docs would try to download it and install it with sudo. Install Quarto "
              "from https://quarto.org/docs/get-started/ to build the published docs, or run `python tools/build_site.py` "
              "for the HTML site without Quarto.", file=sys.stderr)
        return 1
    return subprocess.run(["nbdev_docs"]).returncode


def main(argv: list[str] | None = None) -> int:
    root = get_config().config_path
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nbs", type=Path, default=root / "nbs", help="folder of the notebooks (default: nbs)")
    ap.add_argument("--out", type=Path, default=root / "_site", help="folder to write the site into; replaced (default: _site)")
    ap.add_argument("--quarto", action="store_true", help="run nbdev_docs (needs Quarto) instead of building without Quarto")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.quarto: return run_quarto_docs()
    try:
        pages = build_site(args.nbs, args.out)
    except SiteError as e:
        print(f"build_site: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(pages)} pages to {args.out}; open {args.out / 'index.html'} or serve the folder")
    return 0


if __name__ == "__main__":
    sys.exit(main())
