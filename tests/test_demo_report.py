"""The demo's report.html in Chromium, served over http as a person would open it: every video plays, every picture
loads, the score table has the shipped teacher's and student's rows; a screenshot is kept (outputs/screenshots)."""
from browser import chrome, need_browser, screenshot, serve, wait_for

SMALL = {"n_videos": 4, "n_images": 2, "train_steps": 2, "lora_steps": 2, "distill_steps": 2, "train_batch_size": 2,
         "teacher_steps": 16, "student_steps": 8}


def test_report_html_in_chromium(tmp_path):
    need_browser()  # before the demo: a missing browser skips at once
    from fastvideo.cli import demo
    out = tmp_path / "demo"
    report = demo(out, **SMALL, progress=False)
    with serve(out) as url:
        check_report(url, report)


def check_report(url, report):
    driver = chrome(1500, 1100)
    try:
        driver.get(f"{url}report.html")
        videos = wait_for(lambda: driver.execute_script(
            "const v = [...document.querySelectorAll('video')];"
            "return v.length && v.every(e => e.readyState >= 2 && e.duration > 0) ? v.map(e => [e.currentSrc, e.duration]) : null"),
            60, "every video of report.html to load (readyState >= 2, a duration)")
        assert len(videos) == 5 * 6, videos  # five models, six captions
        assert {src.rsplit("/", 3)[-2] for src, _ in videos} == {"toy_16", "toy_fast_8", "fine_tuned_16", "toy_lora_16", "distilled_8"}
        images = driver.execute_script("return [...document.images].map(i => [i.getAttribute('src'), i.complete && i.naturalWidth])")
        assert sorted(src for src, _ in images) == ["contact_sheet.png", "loss_curves.png"], images
        assert all(width > 0 for _, width in images), images
        rows = driver.execute_script("return [...document.querySelectorAll('table.scores tr')].slice(1).map(r => [...r.cells].map(c => c.innerText))")
        by_name = {r[0]: r for r in rows}
        assert {"toy@16", "toy-fast@8"} <= set(by_name), rows
        for name in ("toy@16", "toy-fast@8"):  # the page shows report.json's numbers
            assert by_name[name][7] == f"{report['samples'][name]['scores']['mean']:.0%}", (by_name[name], report["samples"][name])
        screenshot(driver, "demo_report")
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        driver.quit()
