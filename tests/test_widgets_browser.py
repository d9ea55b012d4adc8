"""The sampler of lesson 10 in a real browser: JupyterLab on 127.0.0.1, driven by Debian's Chromium. The lesson runs
up to the sampler's cell, then the test types a prompt, presses Generate, waits for the video to play, shows bad
input, presses Stop during a 64-step run and saves screenshots under outputs/screenshots/."""
import json, os, shutil, subprocess, sys, time, urllib.request, uuid
from pathlib import Path

import pytest

from browser import SCREENSHOTS, chrome, free_port, screenshot, wait_for

ROOT = Path(__file__).resolve().parent.parent
LESSON = ROOT / "nbs" / "10_widgets.ipynb"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    "A JupyterLab server on a free port serving a copy of the lesson (with a kernel named, so none is asked for)."
    root = tmp_path_factory.mktemp("lab")
    nb = json.loads(LESSON.read_text())
    nb["metadata"]["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    (root / LESSON.name).write_text(json.dumps(nb))
    shutil.copytree(LESSON.parent / "images", root / "images")
    news = root / ".settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false"}))  # no "get Jupyter news?" toast over the screenshots
    port, token = free_port(), uuid.uuid4().hex
    env = os.environ | {"JUPYTERLAB_SETTINGS_DIR": str(root / ".settings"), "JUPYTERLAB_WORKSPACES_DIR": str(root / ".ws"),
                        "JUPYTER_RUNTIME_DIR": str(root / ".runtime"), "OMP_NUM_THREADS": "2"}
    log = open(root / "lab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--expose-app-in-browser",
         "--LabApp.news_url=", "--ServerApp.open_browser=False", "--allow-root"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    def up():
        if server.poll() is not None: raise AssertionError(f"jupyter lab exited {server.returncode}: {(root / 'lab.log').read_text()[-2000:]}")
        try: return urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2).status == 200
        except OSError: return False
    try:
        wait_for(up, 60, "JupyterLab to answer")
        yield dict(url=url, token=token, root=root, notebook=LESSON.name, cells=nb["cells"])
    finally:
        server.terminate()
        try: server.wait(15)
        except subprocess.TimeoutExpired: server.kill()
        log.close()


def cell_index(cells, start: str) -> int:
    return next(i for i, c in enumerate(cells) if c["cell_type"] == "code" and "".join(c["source"]).startswith(start))


def test_sampler_in_jupyterlab(lab):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    driver = chrome()
    try:
        driver.get(f"{lab['url']}/lab/tree/{lab['notebook']}?token={lab['token']}")
        js = lambda script, *a: driver.execute_script(script, *a)
        ready = ("const a = window.jupyterapp, w = a && a.shell.currentWidget;"
                 "return !!(w && w.content && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel"
                 " && w.sessionContext.session.kernel.status === 'idle' && w.content.widgets.length > 30);")
        wait_for(lambda: js(ready), 90, "the lesson to open with an idle kernel")
        # the lesson runs from its first cell through the one that shows the sampler
        k = cell_index(lab["cells"], "sampler = Sampler(")
        js("const a = window.jupyterapp, nb = a.shell.currentWidget.content; nb.activeCellIndex = arguments[0];"
           "a.commands.execute('notebook:run-all-above').then(() => a.commands.execute('notebook:run-cell'));", k)
        sampler = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, ".fv-sampler"), 180,
                           "the sampler widget to render (the lesson's cells to run)")[0]
        errors = js("return [...document.querySelectorAll('.jp-OutputArea-output[data-mime-type=\"application/vnd.jupyter.stderr\"]')]"
                    ".map(e => e.innerText).filter(t => /Error|Traceback/.test(t))")
        assert not errors, f"the lesson's cells raised: {errors[:2]}"
        driver.execute_script("arguments[0].scrollIntoView()", sampler)
        wide = js("const box = arguments[0].getBoundingClientRect();"
                  "return [...arguments[0].querySelectorAll('*')].filter(e => e.getBoundingClientRect().right > box.right + 1)"
                  ".map(e => e.className + ' ' + Math.round(e.getBoundingClientRect().right - box.right)).slice(0, 5)", sampler)
        assert not wide, f"the sampler is wider than its output area: {wide}"

        def control(label):
            "The input of the control described `label` (ipywidgets puts the description in a label beside it)."
            return sampler.find_element(By.XPATH, f".//label[normalize-space()='{label}']/following-sibling::input")
        def press(name):
            sampler.find_element(By.XPATH, f".//button[normalize-space()='{name}']").click()
        def status(): return sampler.find_element(By.CSS_SELECTOR, ".fv-status").text
        def video_state():
            return js("const v = arguments[0].querySelector('.fv-video video') || arguments[0].querySelector('video');"
                      "return v && {duration: v.duration, time: v.currentTime, ready: v.readyState, paused: v.paused,"
                      " loop: v.loop, error: v.error && v.error.code};", sampler)
        def type_into(label, text):
            box = control(label)
            box.send_keys(Keys.CONTROL, "a"); box.send_keys(Keys.DELETE); box.send_keys(text, Keys.ENTER)

        type_into("prompt", "a blue square moving right")
        press("Generate")
        wait_for(lambda: "done in" in status(), 120, "Generate to finish (status line)")
        state = wait_for(lambda: (s := video_state()) and s["ready"] >= 2 and s["duration"] > 0 and s, 30,
                         "the video to load")
        assert state["error"] is None and state["loop"], state
        wait_for(lambda: video_state()["time"] > 0, 15, "the video to play (currentTime > 0)")
        assert not video_state()["paused"]
        verdict = sampler.find_element(By.CSS_SELECTOR, ".fv-verdict").text
        assert "scorer" in verdict and "it sees" in verdict, verdict
        assert len(sampler.find_elements(By.CSS_SELECTOR, ".fv-history-item")) == 1
        time.sleep(0.5)  # a frame of the video on screen
        screenshot(driver, "widget_generated")
        sampler.screenshot(str(SCREENSHOTS / "sampler.png"))  # the lesson's picture (nbs/images/sampler.png)

        # bad input: one line in the widget, the video and the history stay
        type_into("prompt", " ")
        press("Generate")
        wait_for(lambda: "prompt is empty" in status(), 10, "the empty-prompt message")
        assert video_state()["duration"] > 0 and len(sampler.find_elements(By.CSS_SELECTOR, ".fv-history-item")) == 1
        assert "Traceback" not in js("return arguments[0].innerText", sampler)
        screenshot(driver, "widget_bad_input")
        type_into("prompt", "a blue square moving right")
        for label, value, message, restore in (
                ("steps", "0", "steps must be at least 1, got 0", "8"),
                ("LoRA", "/no/such/adapter.safetensors", "LoRA file /no/such/adapter.safetensors: no such file", ""),
                ("model", "/no/such/model", "--model_path /no/such/model: no such folder", "toy-fast")):
            type_into(label, value)
            press("Generate")
            wait_for(lambda: message in status(), 30, f"the message for {label} {value!r}")
            assert len(status().splitlines()) == 1, status()
            assert video_state()["duration"] > 0 and len(sampler.find_elements(By.CSS_SELECTOR, ".fv-history-item")) == 1
            if restore: type_into(label, restore)
            else: control(label).send_keys(Keys.CONTROL, "a", Keys.DELETE, Keys.ENTER)
        assert "Traceback" not in js("return arguments[0].innerText", sampler)

        # Stop during a long run: the teacher at 64 Euler steps (choosing it sets its steps)
        type_into("prompt", "a green circle moving up")
        type_into("model", "toy")
        wait_for(lambda: control("steps").get_attribute("value") == "64", 10, "the teacher's 64 steps to be set")
        press("Generate")
        progress = lambda: sampler.find_element(By.CSS_SELECTOR, ".fv-progress-text").text
        wait_for(lambda: progress().endswith("/64"), 60, "the first steps of the 64-step run")
        press("Stop")
        wait_for(lambda: "stopped after step" in status(), 60, "Stop to end the run")
        step = int(status().split("stopped after step ")[1].split()[0])
        assert 1 <= step < 64, status()
        assert len(sampler.find_elements(By.CSS_SELECTOR, ".fv-history-item")) == 1 and video_state()["duration"] > 0
        screenshot(driver, "widget_stopped")
    finally:
        driver.quit()
