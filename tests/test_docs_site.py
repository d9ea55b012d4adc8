"""The docs site `make docs` builds, opened page by page in headless Chromium: `tools/build_docs.py` (its fallback
renderer, the one these machines have) into a temporary folder, served by http.server on 127.0.0.1. Every page must
have its title and the sidebar, every picture must load, every video must have a source, every link to this site
must answer 200 (and its anchor exist), links to the repository's files must point at git_url, and the build must
leave the repository's tracked files as they were. Screenshots: outputs/screenshots/docs_home.png, docs_lesson.png."""
import configparser, re, subprocess, sys, time, urllib.parse, urllib.request
from pathlib import Path

import pytest

from browser import chrome, need_browser, screenshot, serve, wait_for

ROOT = Path(__file__).resolve().parent.parent
CFG = configparser.ConfigParser()
CFG.read(ROOT / "settings.ini")
GIT_URL = CFG["DEFAULT"]["git_url"].rstrip("/")
BLOB = f"{GIT_URL}/blob/{CFG['DEFAULT']['branch']}/"


def tracked_state():
    "What git sees of the tracked files: a build that rewrote one would change this."
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                          text=True).stdout + subprocess.run(["git", "diff"], cwd=ROOT, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    "The site built into a temporary folder (its own _proc too, so a user's _docs/_proc are left alone), served."
    need_browser()  # nothing to build for when no browser can open it
    tmp = tmp_path_factory.mktemp("docs")
    before = tracked_state()
    t = time.monotonic()
    run = subprocess.run([sys.executable, "tools/build_docs.py", "--fallback", "--output_dir", str(tmp / "_docs"),
                          "--proc_dir", str(tmp / "_proc")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    took = time.monotonic() - t
    assert run.returncode == 0, f"build_docs.py exited {run.returncode}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    last = run.stdout.strip().splitlines()[-1]
    assert re.match(r"docs: \d+ pages in _docs/ \(fallback renderer: Quarto not installed\)", last), last
    assert tracked_state() == before, "the docs build rewrote tracked files (see git status)"
    out = tmp / "_docs"
    with serve(out) as url:
        yield dict(dir=out, url=url, build_s=took, log=run.stdout)


# every <img> loaded, every <video> with a source, the sidebar and its highlighted entry, every link
PAGE_JS = """
const imgs = [...document.images], vids = [...document.querySelectorAll('video')];
return {title: document.title, h1: (document.querySelector('h1') || {}).textContent || '',
        sidebar: [...document.querySelectorAll('nav.sidebar a')].map(a => a.href),
        active: [...document.querySelectorAll('nav.sidebar a.active')].map(a => a.href),
        pending: imgs.filter(i => !i.complete).length,
        broken: imgs.filter(i => i.complete && !(i.naturalWidth > 0)).map(i => i.src.slice(0, 80)),
        n_img: imgs.length, srcs: imgs.map(i => i.src.slice(0, 120)),
        videos: vids.map(v => ({src: (v.currentSrc || v.src || (v.querySelector('source') || {}).src || '').slice(0, 40),
                                error: v.error ? v.error.code : 0})),
        links: [...document.querySelectorAll('a[href]')].map(a => a.href),
        text: document.body.innerText};
"""


def fetch(url: str) -> tuple:
    with urllib.request.urlopen(url, timeout=10) as r: return r.status, r.read().decode("utf-8", "replace")


def test_every_page_in_chromium(site):
    t0 = time.monotonic()
    pages = sorted(str(p.relative_to(site["dir"])) for p in site["dir"].rglob("*.html"))
    assert "index.html" in pages and len(pages) >= 20, pages
    driver = chrome(1400, 1000)
    seen, local, external = {}, set(), set()
    try:
        for page in pages:
            url = urllib.parse.urljoin(site["url"], page)
            driver.get(url)
            info = wait_for(lambda: (lambda i: i if i["pending"] == 0 else None)(driver.execute_script(PAGE_JS)), 20,
                            f"the pictures of {page} to load")
            assert info["title"].strip() and info["h1"].strip(), f"{page}: no title or heading"
            assert sorted(urllib.parse.urlparse(h).path.lstrip("/") for h in info["sidebar"]) == pages, \
                f"{page}: the sidebar does not list every page"
            assert info["active"] == [url], f"{page}: the sidebar highlights {info['active']}"
            assert not info["broken"], f"{page}: pictures that did not load: {info['broken']}"
            for v in info["videos"]:
                assert v["src"] and not v["error"], f"{page}: a video without a playable source: {v}"
            for link in info["links"]:
                (local if link.startswith(site["url"]) else external).add(link)
            seen[page] = info
            if page == "index.html": screenshot(driver, "docs_home")
            if page == "widgets.html":  # the lesson at its picture, a show_doc entry below it
                driver.execute_script("[...document.images].find(i => i.src.endsWith('/images/sampler.png'))"
                                      ".scrollIntoView({block: 'start'}); window.scrollBy(0, -120);")
                screenshot(driver, "docs_lesson")

        # links: every page of this site they name answers 200, and the anchor they name is on it
        bodies = {}
        for link in sorted(local):
            path, _, anchor = link.partition("#")
            if path not in bodies:
                status, bodies[path] = fetch(path)
                assert status == 200, f"{link}: HTTP {status}"
            if anchor:
                assert re.search(rf'id="{re.escape(urllib.parse.unquote(anchor))}"', bodies[path]), f"{link}: no such anchor"
        assert not [l for l in local if ".ipynb" in l], "links to notebooks left as .ipynb"
        # links to the repository's files go to git_url, at files that exist; none to the unpublished doc_host
        blobs = {l.removeprefix(BLOB).partition("#")[0] for l in external if l.startswith(BLOB)}
        assert blobs, "no link to the repository's files (show_doc's [source] links)"
        missing = [b for b in blobs if not (ROOT / urllib.parse.unquote(b)).exists()]
        assert not missing, f"links to files the repository does not have: {missing}"
        doc_host = CFG["DEFAULT"]["doc_host"].rstrip("/") + CFG["DEFAULT"]["doc_baseurl"]
        assert not [l for l in external if l.startswith(doc_host)], "doc links left pointing at the unpublished site"

        # the home page is the README; the lessons carry their API docs (show_doc) and pictures
        home = seen["index.html"]["text"]
        assert "Two commands" in home and "make demo" in home and "make test" in home
        readme_heads = re.findall(r"^## (.+)$", (ROOT / "README.md").read_text(), re.M)
        assert all(h.replace("`", "") in home for h in readme_heads), "the home page lacks README sections"
        lesson = seen["widgets.html"]
        assert "class Sampler" in lesson["text"] or "Sampler(" in lesson["text"], "widgets.html lacks Sampler's show_doc"
        assert any(s.endswith("/images/sampler.png") for s in lesson["srcs"]), "widgets.html lacks its picture"
        assert "def generate(" in seen["sampling.html"]["text"] and "def train(" in seen["train.html"]["text"]
        assert "Videos for `prompt`" not in seen["sampling.html"]["text"]  # markdown of the docstring rendered
        assert not re.search(r'\{target=|^::: ', "\n".join(i["text"] for i in seen.values()), re.M), "Quarto markup shown as text"
    finally:
        driver.quit()
    print(f"docs site: build {site['build_s']:.0f} s, {len(pages)} pages, {len(local)} local links checked, "
          f"browser {time.monotonic() - t0:.0f} s")


def test_links_rewritten(tmp_path):
    "The fallback's link rules on made-up links: notebooks -> pages, repository files -> git_url, doc links -> here."
    import importlib.util
    from nbdev.config import get_config
    spec = importlib.util.spec_from_file_location("build_docs", ROOT / "tools" / "build_docs.py")
    bd = importlib.util.module_from_spec(spec); spec.loader.exec_module(bd)
    cfg = get_config(path=ROOT)
    (tmp_path / "proc" / "images").mkdir(parents=True); (tmp_path / "proc" / "images" / "a.png").write_bytes(b"png")
    links = bd.Links(cfg, ROOT / "nbs", tmp_path / "proc", tmp_path / "out",
                     {"06_sampling.ipynb": "sampling.html", "runs/teacher.ipynb": "runs/teacher.html"})
    links.ids["sampling.html"] = {"generate"}
    doc = CFG["DEFAULT"]["doc_host"].rstrip("/") + CFG["DEFAULT"]["doc_baseurl"] + "/"
    page = ('<a href="../06_sampling.ipynb#generate">a</a> <a href="../../bench/README.md">b</a> <img src="../images/a.png">'
            f'<a href="{doc}sampling.html#generate">c</a> <a href="{doc}sampling.html#undocumented">d</a> <a href="#x">e</a>'
            '<a href="https://example.com/x.ipynb">f</a> <a href="../no_such_file.txt">g</a>')
    out = links.rewrite(page, "runs/teacher.html", "nbs/runs")
    hrefs = re.findall(r'(?:href|src)="([^"]*)"', out)
    assert hrefs == ["../sampling.html#generate", f"{BLOB}bench/README.md", "../images/a.png", "../sampling.html#generate",
                     "../sampling.html", "#x", "https://example.com/x.ipynb", "../no_such_file.txt"], hrefs
    assert (tmp_path / "out" / "images" / "a.png").exists() and links.dropped == 1
    assert links.missing == ["runs/teacher.html: ../no_such_file.txt"]  # reported, and the build then fails
    home = links.rewrite('<a href="setup.py">s</a> <a href="nbs/06_sampling.ipynb">n</a>', "index.html", "")
    assert re.findall(r'href="([^"]*)"', home) == [f"{BLOB}setup.py", "sampling.html"]
    assert bd.quarto_markdown('[source](u){target="_blank" style="float:right"}') == \
        '<a href="u" target="_blank" style="float:right">source</a>'
    assert 'class="callout callout-note"' in bd.quarto_markdown("::: {.callout-note}\nhi\n:::")
