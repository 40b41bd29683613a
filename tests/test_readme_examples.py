"""README's worked examples on ETH/USDT (issue 14, "Must show") run as written on the
shared recordings and print what the README shows.

Each example's bash block is run through bash in an empty folder (so `data_dir` is the
default `data`, as the README's paths read), with `python main.py` this repository's,
`../shared/data/` the shared recordings and `--config eth-*.toml` the README's own TOML
blocks written out; every line of the output block that follows must be in what the
commands printed. The only figures allowed to differ are the wall-clock timing and
whether the backtest cache was built or hit.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
SECTION = README[README.index("### Worked examples on ETH/USDT"):
                 README.index("## Strategy parameters")]
#: The examples that run on the shared recordings, by a run id in their command block
#: (rl-eth needs the RL extra and minutes of training; arb-eth needs your own recordings).
EXAMPLES = ("mm-eth", "ri-eth", "intl-eth", "arb-btc-vip", "cal-eth")
CONFIG = re.compile(r"Save as\s+`([\w.-]+\.toml)`")
RUN_ID = re.compile(r"--run-id ([\w-]+)")


def fenced_blocks(text: str) -> list[tuple[str, str, int]]:
    """(language, body, offset of the opening fence) of each fenced block, in order."""
    pattern = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
    return [(found[1], found[2], found.start()) for found in pattern.finditer(text)]


def config_files(text: str) -> dict[str, str]:
    """The TOML blocks the README says to save, by file name."""
    files = {}
    for language, body, start in fenced_blocks(text):
        named = CONFIG.findall(text[:start])
        if language == "toml" and named:
            files[named[-1]] = body
    return files


def example(run_id: str) -> tuple[str, str]:
    """The bash block whose first run id is `run_id`, and the output block after it."""
    blocks = fenced_blocks(SECTION)
    for index, (language, body, _) in enumerate(blocks):
        if language == "bash" and RUN_ID.findall(body)[:1] == [run_id]:
            language_after, output, _ = blocks[index + 1]
            assert language_after == "", f"no output block after {run_id}'s commands"
            return body, output
    raise AssertionError(f"README has no worked example with --run-id {run_id}")


def normalized(text: str) -> str:
    """Without what may differ between two runs of the same command: the wall time, the
    events per second, and whether the cache was built or already there."""
    text = re.sub(r"in [\d.,]+ s = [\d,]+ events/s", "in T s = R events/s", text)
    return re.sub(r"cache (built|hit)", "cache used", text)


def run_block(commands: str, folder: Path, shared_data: Path) -> str:
    """The block's commands through bash in `folder`; their standard output."""
    for name, body in config_files(SECTION).items():
        (folder / name).write_text(body, encoding="utf-8")
    script = commands.replace("python main.py", f"{sys.executable} {ROOT / 'main.py'}")
    script = script.replace("../shared/data/", f"{shared_data}/")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOPIPE_")}
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=folder,
                          env=environment, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_examples_are_found_with_their_config_files() -> None:
    assert set(config_files(SECTION)) == {"eth-mm.toml", "eth-intl.toml", "eth-rl.toml"}
    for run_id in EXAMPLES:
        commands, output = example(run_id)
        assert "main.py" in commands and output.strip()


@pytest.mark.parametrize("run_id", EXAMPLES)
def test_a_worked_example_prints_what_the_readme_shows(
    run_id: str, tmp_path: Path, shared_data: Path, shared_file: Callable[[str], Path],
) -> None:
    commands, shown = example(run_id)
    for name in re.findall(r"\.\./shared/data/([\w.]+\.gz)", commands):
        shared_file(name)  # skips when the shared recordings are absent
    printed = normalized(run_block(commands, tmp_path, shared_data)).splitlines()
    printed = [line.rstrip() for line in printed]
    missing = [line for line in normalized(shown).splitlines()
               if line.strip() and line.rstrip() not in printed]
    assert not missing, "\n".join(["README lines not printed:", *missing,
                                   "--- printed:", *printed[-40:]])
    # Each run the block reports on has its post-mortem files.
    for reported in re.findall(r"--mode post-mortem --run ([\w-]+)", commands):
        assert (tmp_path / "data" / "reports" / reported / "report.html").is_file(), reported
