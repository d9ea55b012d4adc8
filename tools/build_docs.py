"""`make docs`: the documentation site in _docs/.

With Quarto on PATH this is nbdev's own `nbdev_docs` (the site `nbs/_quarto.yml` describes). Quarto cannot be
installed on every machine (its PyPI package fetches the binary while it builds), so without it the same pages are
made here: nbdev's pre-processing as `tools/check_docs.py` runs it (nbdev.yml, the module index, every notebook
through the doc processors, which turn `show_doc` cells into API docs), then each processed notebook rendered by
nbconvert's HTMLExporter (template `tools/docs_site/cells.html.j2`) into a page of the sidebar's order
(`nbs/sidebar.yml`), named as Quarto names it (the notebook's `output-file`), README.md as the home page. Links
between notebooks become links between pages, links to other files of the repository point at them on git_url, and
nbdev's doc links (doc_host + doc_baseurl) stay on this site.

    python tools/build_docs.py [--output_dir _docs] [--proc_dir _proc]
"""
import argparse, html, os, re, shutil, subprocess, sys, time, warnings
from pathlib import Path
from posixpath import normpath, relpath

import yaml

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "tools" / "docs_site" / "cells.html.j2"
SITE_CSS = ROOT / "tools" / "docs_site" / "site.css"


def quarto_docs(output_dir: Path) -> int:
    "nbdev's own build: `nbdev_docs` renders with Quarto into doc_path (_docs)."
    rc = subprocess.call(["nbdev_docs"], cwd=ROOT)
    built = ROOT / "_docs"
    if rc == 0 and output_dir.resolve() != built.resolve():
        shutil.rmtree(output_dir, ignore_errors=True)
        shutil.move(str(built), output_dir)
    if rc == 0: print(f"docs: Quarto site in {output_dir}/")
    return rc


def preprocess(proc_dir: Path):
    """What `nbdev_docs` runs before `quarto render` (tools/check_docs.py's steps), with the processed notebooks
    written to `proc_dir`: nbdev.proc_nbs's own loop, whose folder is fixed to _proc/."""
    from nbdev.config import get_config
    from nbdev.quarto import refresh_quarto_yml, nbdev_sidebar
    from nbdev.doclinks import _build_modidx, nbglob
    from nbdev.serve import _proc_file
    import nbdev.serve_drv
    cfg = get_config()
    refresh_quarto_yml()
    # nbdev deletes _modidx.py before writing it anew: rebuild it only when a module is newer, so that a build while
    # other processes copy or import the package (the test suite runs two at a time) never finds it missing
    idx, lib = Path(cfg.lib_path) / "_modidx.py", Path(cfg.lib_path)
    if not idx.exists() or any(p.stat().st_mtime > idx.stat().st_mtime for p in lib.rglob("*.py") if p != idx):
        _build_modidx()
    nbdev_sidebar.__wrapped__(path=cfg.nbs_path)
    if proc_dir.exists(): shutil.rmtree(proc_dir)
    proc_dir.mkdir(parents=True)
    nbs = Path(cfg.nbs_path)
    files = nbglob(nbs, func=Path, file_glob="", file_re="")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Found cells containing imports and other code": advice, not a fault
        for f in files:
            job = _proc_file(f, proc_dir, nbs)
            if job:
                t = time.monotonic()
                nbdev.serve_drv.main(job)
                print(f"docs: processed {f.relative_to(nbs)} ({time.monotonic() - t:.1f} s)", flush=True)
    return cfg


def sidebar_notebooks(nbs: Path) -> list:
    "The sidebar's entries in order (sections flattened)."
    def walk(items):
        for it in items:
            if isinstance(it, str): yield it
            elif isinstance(it, dict):
                if "contents" in it: yield from walk(it["contents"])
                elif "href" in it: yield it["href"]
    contents = yaml.safe_load((nbs / "sidebar.yml").read_text())["website"]["sidebar"]["contents"]
    return [p for p in walk(contents) if p.endswith(".ipynb")]


def front_matter(nb) -> dict:
    "nbdev's front matter (the raw cell its processors write: title, description, output-file)."
    for cell in nb.cells:
        if cell.cell_type == "raw" and cell.source.lstrip().startswith("---"):
            return yaml.safe_load(cell.source.strip().strip("-")) or {}
    return {}


def page_of(nb_rel: str, fm: dict) -> str:
    "Where Quarto puts a notebook's page: its folder + its `output-file` (nbdev drops the number: sampling.html)."
    folder = os.path.dirname(nb_rel)
    name = fm.get("output-file") or Path(nb_rel).with_suffix(".html").name
    return f"{folder}/{name}" if folder else name


# ---- Quarto's markup, which the fallback turns into HTML -------------------------------------------------------
_ATTR_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)\{([^}]*)\}")
_FENCE = re.compile(r"^:::+\s*\{?([^}\n]*)\}?\s*$", re.M)


def _attrs(spec: str) -> str:
    "Pandoc attributes `{.class #id key=\"v\"}` as HTML attributes."
    classes = re.findall(r"(?:^|\s)\.([\w-]+)", spec)
    ids = re.findall(r"(?:^|\s)#([\w-]+)", spec)
    pairs = re.findall(r'([\w-]+)=("[^"]*"|\S+)', spec)
    out = [f'id="{ids[0]}"'] if ids else []
    if classes: out.append(f'class="{" ".join(classes)}"')
    out += [f'{k}="{html.escape(v.strip(chr(34)))}"' for k, v in pairs]
    return " ".join(out)


def quarto_markdown(md: str) -> str:
    "Quarto-only markdown -> plain markdown + HTML: attributed links (show_doc's [source]) and ::: fenced divs."
    md = _ATTR_LINK.sub(lambda m: f'<a href="{m[2]}" {_attrs(m[3])}>{m[1]}</a>', md)
    def fence(m):
        spec = m[1].strip()
        if not spec: return "\n</div>\n"
        if spec.startswith("."): spec = " " + spec
        kind = re.findall(r"\.callout-(\w+)", spec)
        cls = f' class="callout callout-{kind[0]}"' if kind else f" {_attrs(spec)}"
        return f"\n<div{cls}>\n"
    return _FENCE.sub(fence, md)


def directives(source: str) -> tuple:
    "`#| key: value` lines at the top of a code cell -> (dict, source without them)."
    opts, lines = {}, source.splitlines()
    while lines and lines[0].startswith("#|"):
        k, _, v = lines.pop(0)[2:].partition(":")
        opts[k.strip()] = v.strip() or "true"
    return opts, "\n".join(lines)


def prepare_cells(nb):
    "Apply Quarto's cell options and drop what a static page cannot show (front matter, widget views)."
    cells = []
    for cell in nb.cells:
        if cell.cell_type == "raw": continue  # the front matter: shown as the page's title and description
        if cell.cell_type == "markdown":
            cell.source = quarto_markdown(cell.source)
            if cell.source.strip().startswith("<!-- WARNING") and "-->" in cell.source and len(cell.source) < 120: continue
        elif cell.cell_type == "code":
            opts, cell.source = directives(cell.source)
            if opts.get("include") == "false" or "hide" in opts: continue
            if opts.get("echo") == "false": cell.metadata.setdefault("transient", {})["remove_source"] = True
            if opts.get("output") == "false": cell.outputs = []
            outs = []
            for out in cell.get("outputs", []):
                data = out.get("data", {})
                if "application/vnd.jupyter.widget-view+json" in data: continue  # a live widget: nothing static to show
                if "text/markdown" in data:
                    md = data["text/markdown"]
                    data["text/markdown"] = quarto_markdown("".join(md) if isinstance(md, list) else md)
                outs.append(out)
            cell.outputs = outs
            if not cell.source.strip() and not outs: continue
        cells.append(cell)
    nb.cells = cells
    return nb


# ---- links ----------------------------------------------------------------------------------------------------
def pandoc_id(text: str) -> str:
    "The id pandoc (Quarto) gives a heading, which nbdev's doc links point at: generate, pipeline.from_pretrained."
    text = re.sub(r"<[^>]+>", "", html.unescape(text)).strip().lower()
    text = re.sub(r"[^\w\s.-]", "", text)
    text = re.sub(r"\s+", "-", text)
    return re.sub(r"^[^a-z]+", "", text) or "section"


def fix_heading_ids(body: str) -> str:
    def one(m):
        new = pandoc_id(m[3])
        return f'<h{m[1]} id="{new}">{m[3]}<a class="anchor-link" href="#{new}">&#182;</a></h{m[1]}>'
    return re.sub(r'<h([1-6]) id="([^"]*)">(.*?)<a class="anchor-link" href="#[^"]*">&#182;</a></h\1>', one, body, flags=re.S)


class Links:
    "Rewrites a page's href/src: notebooks -> pages, repository files -> git_url, nbdev doc links -> this site."

    def __init__(self, cfg, nbs: Path, proc: Path, out: Path, pages: dict):
        self.root, self.nbs, self.proc, self.out, self.pages = ROOT, nbs, proc, out, pages  # pages: nb rel -> page rel
        self.by_page = set(pages.values())
        self.git_blob = f"{cfg.git_url.rstrip('/')}/blob/{cfg.get('branch', 'main')}/"
        self.doc_url = f"{cfg.doc_host.rstrip('/')}{cfg.doc_baseurl.rstrip('/')}/"
        self.copied, self.missing, self.ids, self.dropped = set(), [], {}, 0

    def rewrite(self, body: str, page: str, src_dir: str) -> str:
        """`page`: the page's path in the site; `src_dir`: the folder its links are relative to, relative to the
        repository root ('nbs', 'nbs/runs', '' for README.md)."""
        page_dir = os.path.dirname(page)
        def here(target): return relpath(target, page_dir or ".")
        def one(m):
            attr, url = m[1], html.unescape(m[2])
            if url.startswith(self.doc_url):  # nbdev's doc link: the page of this site it names
                path, _, anchor = url[len(self.doc_url):].partition("#")
                if path not in self.by_page: return m[0]
                if anchor and anchor not in self.ids.get(path, ()):  # a name the page does not document: its top
                    anchor, self.dropped = "", self.dropped + 1
                return f'{attr}="{here(path)}{"#" + anchor if anchor else ""}"'

            if re.match(r"^([a-z][a-z0-9+.-]*:|#|//)", url, re.I) or not url: return m[0]
            path, _, anchor = url.partition("#")
            anchor = "#" + anchor if anchor else ""
            target = normpath(f"{src_dir}/{path}" if src_dir else path)
            nb_rel = relpath(target, "nbs") if target.startswith("nbs/") else None
            if nb_rel in self.pages: return f'{attr}="{here(self.pages[nb_rel])}{anchor}"'
            if nb_rel and (self.proc / nb_rel).is_file():  # an image or data file beside the notebooks: copied
                if nb_rel not in self.copied:
                    (self.out / nb_rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(self.proc / nb_rel, self.out / nb_rel); self.copied.add(nb_rel)
                return f'{attr}="{here(nb_rel)}{anchor}"'
            if not target.startswith("..") and (self.root / target).exists():  # elsewhere in the repository
                return f'{attr}="{self.git_blob}{target}{anchor}"'
            self.missing.append(f"{page}: {url}")
            return m[0]
        return re.sub(r'\b(href|src)="([^"]*)"', one, body)


# ---- the page ---------------------------------------------------------------------------------------------------
def inline(title: str) -> str:
    "A title's `code` as <code>, the rest escaped."
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(title))


MATHJAX = """<script>window.MathJax = {tex: {inlineMath: [['$', '$'], ['\\\\(', '\\\\)']]}};</script>
<script async src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js"></script>"""  # Quarto's choice too


def has_math(markdown: str) -> bool:
    "TeX between $ signs outside code spans: the page loads MathJax (online; offline the TeX stays readable)."
    text = re.sub(r"```.*?```|`[^`]*`", "", markdown, flags=re.S)
    return bool(re.search(r"\$\$.+?\$\$|(?<![\w$\\])\$[^\s$][^$\n]*?\$(?![\w$])", text, re.S))


def shell(title, description, body, page, nav, cfg, prev_next, math=False) -> str:
    depth = page.count("/")
    up = "../" * depth
    items = []
    for p, t in nav:
        cls = ' class="active" aria-current="page"' if p == page else ""
        items.append(f'<li><a href="{relpath(p, os.path.dirname(page) or ".")}"{cls}>{inline(t)}</a></li>')
    prev, nxt = prev_next
    def pn(entry, label, cls):
        if not entry: return "<span></span>"
        p, t = entry
        return (f'<a class="{cls}" href="{relpath(p, os.path.dirname(page) or ".")}"><small>{label}</small>'
                f'<span>{inline(t)}</span></a>')
    desc = f'<div class="description">{description}</div>' if description else ""
    heading = f'<h1 class="title">{inline(title)}</h1>' if title else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape((title or cfg.title).replace("`", ""))} – {html.escape(cfg.title)}</title>
<link rel="stylesheet" href="{up}site.css"><link rel="stylesheet" href="{up}styles.css">{MATHJAX if math else ""}
</head><body>
<header class="navbar"><a class="brand" href="{up}index.html">{html.escape(cfg.title)}</a>
<a class="repo" href="{cfg.git_url}">source on GitHub</a></header>
<nav class="sidebar" id="sidebar"><ul>{''.join(items)}</ul></nav>
<main class="content">{heading}{desc}
{body}
<nav class="page-nav">{pn(prev, "Previous", "prev")}{pn(nxt, "Next", "next")}</nav>
</main></body></html>
"""


def fallback_docs(output_dir: Path, proc_dir: Path) -> int:
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.filters.markdown_mistune import markdown2html_mistune
    from pygments.formatters import HtmlFormatter
    t0 = time.monotonic()
    cfg = preprocess(proc_dir)
    t_proc = time.monotonic() - t0
    nbs = Path(cfg.nbs_path)
    order = sidebar_notebooks(nbs)
    missing = [p for p in order if not (proc_dir / p).exists()]
    if missing: sys.exit(f"docs: the sidebar names notebooks the doc processors did not write: {missing}")
    notebooks, pages, nav = {}, {}, []
    for rel in order:
        nb = nbformat.read(proc_dir / rel, as_version=4)
        fm = front_matter(nb)
        page = "index.html" if rel == cfg.readme_nb else page_of(rel, fm)
        notebooks[rel], pages[rel] = (nb, fm), page
        nav.append((page, fm.get("title") or Path(rel).stem))
    if len(set(pages.values())) != len(pages): sys.exit(f"docs: two notebooks share a page name: {pages}")
    if output_dir.exists(): shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True)
    links = Links(cfg, nbs, proc_dir, output_dir, pages)
    from traitlets.config import Config
    c = Config()  # the filter that picks an output's richest type reads this (gif and mp4 added: lessons show clips)
    c.NbConvertBase.display_data_priority = ["image/gif", "video/mp4", "text/html", "image/svg+xml", "image/png",
                                             "image/jpeg", "text/markdown", "text/plain"]
    exporter = HTMLExporter(config=c, template_file=str(TEMPLATE), exclude_input_prompt=True, exclude_output_prompt=True)
    exporter.extra_template_basedirs = [str(TEMPLATE.parent)]
    bodies = {}  # first every page's body, so links can be checked against the anchors of the page they name
    for rel in order:
        nb, fm = notebooks[rel]
        src_dir = normpath(f"nbs/{os.path.dirname(rel)}") if os.path.dirname(rel) else "nbs"
        if rel == cfg.readme_nb:  # the home page: README.md, as on GitHub
            body = markdown2html_mistune(quarto_markdown((ROOT / "README.md").read_text()))
            title, desc, src_dir = "", "", ""
        else:
            body, _ = exporter.from_notebook_node(prepare_cells(nb), resources={"metadata": {"path": str(proc_dir / os.path.dirname(rel))}})
            title = fm.get("title") or Path(rel).stem
            desc = markdown2html_mistune(fm["description"]).strip().removeprefix("<p>").removesuffix("</p>") if fm.get("description") else ""
        math = has_math("\n".join(c.source for c in nb.cells if c.cell_type == "markdown"))
        bodies[rel] = (title, desc, fix_heading_ids(body), src_dir, math)
        links.ids[pages[rel]] = set(re.findall(r'\bid="([^"]+)"', bodies[rel][2]))
    for i, rel in enumerate(order):
        title, desc, body, src_dir, math = bodies[rel]
        page = pages[rel]
        body, desc = links.rewrite(body, page, src_dir), links.rewrite(desc, page, src_dir)
        prev_next = (nav[i - 1] if i else None, nav[i + 1] if i + 1 < len(nav) else None)
        (output_dir / page).parent.mkdir(parents=True, exist_ok=True)
        (output_dir / page).write_text(shell(title, desc, body, page, nav, cfg, prev_next, math))
        print(f"docs: {rel} -> {output_dir.name}/{page}", flush=True)
    images = proc_dir / "images"
    if images.is_dir(): shutil.copytree(images, output_dir / "images", dirs_exist_ok=True)
    shutil.copy2(proc_dir / "styles.css", output_dir / "styles.css")
    (output_dir / "site.css").write_text(SITE_CSS.read_text() + "\n/* code: pygments */\n"
                                         + HtmlFormatter(style="default").get_style_defs(".highlight"))
    for m in links.missing: print(f"docs: WARNING a link to nothing: {m}")
    if links.dropped: print(f"docs: {links.dropped} doc links name a symbol no show_doc documents: they open its page")
    print(f"docs: nbdev's processing {t_proc:.0f} s, rendering {time.monotonic() - t0 - t_proc:.0f} s")
    print(f"docs: {len(order)} pages in {output_dir.name}/ (fallback renderer: Quarto not installed)")
    return 1 if links.missing else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output_dir", default="_docs", help="where the site goes (default _docs)")
    ap.add_argument("--proc_dir", default="_proc", help="where nbdev's processed notebooks go (fallback only)")
    ap.add_argument("--fallback", action="store_true", help="use the fallback renderer even if Quarto is installed")
    a = ap.parse_args(argv)
    out, proc = (Path(p) if Path(p).is_absolute() else ROOT / p for p in (a.output_dir, a.proc_dir))
    os.chdir(ROOT)  # nbdev finds settings.ini from the working directory
    if shutil.which("quarto") and not a.fallback: return quarto_docs(out)
    return fallback_docs(out, proc)


if __name__ == "__main__":
    rc = main()
    sys.stdout.flush(); sys.stderr.flush()
    # Everything is written. The doc processors left one IPython shell per notebook, and each one's exit hook runs a
    # full garbage collection over torch and diffusers: 20 s of nothing at interpreter exit.
    os._exit(rc)
