"""The `fastvideo` command as a person meets it: the README's stated defaults, Ctrl-C, one closing line."""
import os, re, shlex, shutil, signal, subprocess, sys, time
from pathlib import Path

import pytest

from fastvideo import cli

ROOT = Path(__file__).resolve().parents[1]
EXE = str(Path(sys.executable).parent / "fastvideo")


def readme_commands():
    "The `fastvideo ...` lines of the README's command-line block."
    text = (ROOT / "README.md").read_text()
    block = text[text.index("## The command line"):]
    block = block[block.index("```bash"):]
    block = block[:block.index("```", 7)]
    return [line.split("#")[0].strip() for line in block.splitlines() if line.startswith("fastvideo ")]


def subparser(name):
    actions = cli.parser()._subparsers._group_actions[0].choices
    return actions[name]


def test_readme_states_the_real_defaults():
    "Every `--flag value` inside [...] of a README command line is that flag's default."
    checked = 0
    for line in readme_commands():
        command = line.split()[1]
        defaults = {a.dest: a.default for a in subparser(command)._actions}
        for optional in re.findall(r"\[([^\]]*)\]", line):
            words = shlex.split(optional)
            for flag, value in zip(words, words[1:] + [None]):
                if not flag.startswith("--") or value is None or value.startswith("-") or value.isupper(): continue
                if re.fullmatch(r"[A-Z][A-Z_.]*", value.split(".")[0]): continue  # a placeholder like F or OUT.ipynb
                default = defaults[flag[2:]]
                assert default is not None and str(default) == value or (
                    isinstance(default, float) and float(value) == default), \
                    f"README: `{command} {flag} {value}` is shown as a default, but the default is {default!r}"
                checked += 1
    assert checked >= 15, f"only {checked} defaults found: did the README's command block move?"


def readme_all_commands():
    "Every `fastvideo X ...` and `torchrun ... -m fastvideo.cli X ...` command in the README's bash blocks (continued lines joined)."
    text, commands = (ROOT / "README.md").read_text(), []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("fastvideo "): commands.append(line.split()[1:])
            elif "-m fastvideo.cli " in line: commands.append(line.split("-m fastvideo.cli ")[1].split())
    return commands


def test_every_readme_command_names_real_flags():
    "The tour's commands (N GPUs, a real Mochi folder) and the reference block use only flags the commands have."
    commands = readme_all_commands()
    assert len(commands) >= 20 and any(c[0] == "distill" for c in commands), len(commands)
    for words in commands:
        options = {s for a in subparser(words[0])._actions for s in a.option_strings}
        for w in words[1:]:
            w = w.strip("[]")
            if w.startswith("--"):
                assert w in options, f"README: `fastvideo {words[0]}` has no flag {w}"


def test_ctrl_c_ends_with_one_line_and_a_resumable_folder(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"a red circle moving left {i}" for i in range(400)) + "\n")
    args = [EXE, "sample", "--prompt_path", str(prompts), "--num_frames", "7", "--height", "32", "--width", "48",
            "--num_inference_steps", "2", "--output_path", str(tmp_path / "out")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal would
    deadline = time.time() + 120
    while time.time() < deadline and len(list((tmp_path / "out").glob("*.mp4"))) < 2: time.sleep(0.2)
    if len(list((tmp_path / "out").glob("*.mp4"))) < 2:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"fastvideo sample wrote fewer than 2 videos in 120 s (machine too loaded?): {proc.communicate()[1][-2000:]}")
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    lines = [l for l in err.replace("\r", "\n").splitlines() if l.strip() and not l.startswith(("sample:", "Loading"))]
    assert lines == ["fastvideo sample: interrupted; finished items are kept: rerun the same command to resume"], lines
    done = sorted((tmp_path / "out").glob("*.mp4"))
    assert 2 <= len(done) < 400 and not list((tmp_path / "out").glob(".*")), "no half-written file is left"
    assert all(p.with_suffix(".json").is_file() for p in done)


def test_packaging_builds_without_warnings(tmp_path):
    "setup.py itself warns of nothing (license classifiers, data folders as packages): `make` stays readable."
    src = tmp_path / "src"  # a copy: building in the checkout would leave build/ and *.egg-info behind
    shutil.copytree(ROOT / "fastvideo", src / "fastvideo", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "settings.ini", "README.md"): shutil.copy(ROOT / name, src / name)
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(src)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ours = [l for l in res.stderr.splitlines() if l.strip() and "Location 'file:" not in l]  # this machine's pip config
    assert not ours, "\n".join(ours[:40])
    assert len(list(tmp_path.glob("fastvideo-*.whl"))) == 1
