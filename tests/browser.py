"""A headless Chromium for the browser tests: Debian's `chromium` driven by its `chromium-driver` through selenium.

`make test` installs both when it runs as root (`.ci/run` does); elsewhere a missing browser skips the browser tests,
except under CI (`CI` set), where it fails them: a green CI run must have opened the pages."""
import contextlib, functools, http.server, os, shutil, socket, threading, time
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("FASTVIDEO_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = os.environ.get("FASTVIDEO_CHROMEDRIVER") or shutil.which("chromedriver")


def need_browser():
    "Skip (locally) or fail (under CI) when Chromium, its driver or selenium is missing."
    missing = [n for n, p in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if not p]
    try: import selenium  # noqa: F401
    except ImportError: missing.append("selenium (pip)")
    if missing:
        why = (f"browser test needs {', '.join(missing)}: `apt-get install chromium chromium-driver` as root "
               "(make test does it when run as root)")
        if os.environ.get("CI"): pytest.fail(why)
        pytest.skip(why)


def chrome(width: int = 1400, height: int = 1000):
    "A headless Chromium that plays media without a user gesture."
    need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--autoplay-policy=no-user-gesture-required", f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



@contextlib.contextmanager
def serve(folder):
    "`folder` over http on 127.0.0.1 at a free port, without request logs; yields the base url (ending in /)."
    quiet = type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), functools.partial(quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try: yield f"http://127.0.0.1:{server.server_port}/"
    finally: server.shutdown(); server.server_close()


def wait_for(condition, timeout: float, what: str, every: float = 0.25):
    "Poll `condition()` until it returns something truthy; fail naming `what` after `timeout` seconds."
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value: return value
        if time.monotonic() > end: raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


SCREENSHOTS = Path(__file__).resolve().parent.parent / "outputs" / "screenshots"  # git-ignored; look at them


def screenshot(driver, name: str, folder: Path = SCREENSHOTS) -> Path:
    "Save what the browser shows as `folder/name.png` (outputs/screenshots/ by default)."
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    return path
