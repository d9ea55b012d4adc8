"""Shared fixtures. `cli` runs `fastvideo ARGS` in this process, as the console script does (its `main`), so tests of
refusals and small runs do not pay a fresh interpreter (about 6 s: torch, diffusers) per call; the console script
itself and torchrun are exercised by the tests that need a real process (Ctrl-C, SIGKILL, several ranks)."""
import pytest

# the longest files, longest first (measured on 2 cores): under pytest-xdist's --dist loadfile each file goes whole to
# one worker in this order, so the long ones start first and the short ones fill in around them
LONGEST_FIRST = ("test_train.py", "test_demo.py", "test_teacher.py", "test_lora.py", "test_distill.py", "test_sampling.py",
                 "test_data.py", "test_demo_report.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept


@pytest.fixture
def cli(capsys):
    "`cli(*args)` -> (exit code, stderr) of `fastvideo *args` run in this process."
    from fastvideo.cli import main

    def run(*args):
        capsys.readouterr()  # what earlier calls printed is not this call's
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            return (e.code if isinstance(e.code, int) else 1), capsys.readouterr().err
        return 0, capsys.readouterr().err
    return run
