"""Every command the README and docs/ show is checked against the code, so they cannot drift.

The fenced blocks of README.md and docs/*.md are read as a user reads them:

- `bash`/`sh`/`shell` blocks: every line is a command (a trailing backslash continues it);
  `console` blocks: the lines that start with `$ `. `text` blocks are output; `python`
  blocks must compile. A fence without a language fails: say what the block holds.
- Each `kubeml ...` command (also inside `$(...)`, after `VAR=value`) must parse against the
  real CLI: `kubeml <its args> --help` exits 0 through typer (an unknown command or option,
  or an option without its value, exits 2), no word is left over, and every required
  option is there. `python -m MODULE` must import, and its `--help` must list the flags
  used; `python FILE` must exist; `bash scripts/X.sh` must exist and be run by CI.
- A block may say how it is checked, in an HTML comment on the line above its fence
  (invisible on GitHub):
  `<!-- docs-test: run -->`: executed for real, top to bottom, with `bash -e` in a fresh
  directory against a server of its own (the README's quickstart);
  `<!-- docs-test: run by PATH -->`: PATH runs the equivalent (e.g. scripts/wheel_check.sh,
  which pip-installs the wheel); it must exist, be run by CI, and run each program shown;
  `<!-- docs-test: parse only: REASON -->`: the kubeml and python commands are parsed,
  the rest is not run, for the reason given (a Ray cluster, a benchmark of hours).
  Any other command in an unmarked block fails the test until its block says which.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from kubeml.cli.app import app
from tests.conftest import ROOT, free_port

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELLS = {"bash", "sh", "shell", "console"}
LANGUAGES = SHELLS | {"text", "python", "json", "yaml", "toml"}
MARK = re.compile(r"^<!-- docs-test: (run|run by (?P<by>\S+)|parse only: (?P<why>.+?)) -->$")
SEPARATORS = {";", "&&", "||", "|", "&", "(", ")", "$(", "`"}
CI_ENTRY = [ROOT / ".ci" / "run", ROOT / "scripts" / "test.sh"]


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    mark: str | None  # "run", "run by PATH", "parse only: why"
    text: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def by(self) -> str | None:
        match = MARK.match(f"<!-- docs-test: {self.mark} -->") if self.mark else None
        return match["by"] if match else None


def read_blocks(path: Path) -> list[Block]:
    blocks, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^(\s*)```(\S*)", lines[i])
        if not fence:
            i += 1
            continue
        above = next((line for line in reversed(lines[:i]) if line.strip()), "")
        mark = MARK.match(above.strip())
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("```"))
        text = "\n".join(line[len(fence[1]) :] for line in lines[i + 1 : end])
        blocks.append(Block(path, i + 1, fence[2], mark[1] if mark else None, text))
        i = end + 1
    return blocks


ALL_BLOCKS = [block for path in DOCS for block in read_blocks(path)]


def command_lines(block: Block) -> list[str]:
    """The command lines of a shell block, continuations joined."""
    lines, pending = [], ""
    for raw in block.text.splitlines():
        if block.lang == "console":
            if not (raw.startswith("$ ") or pending):
                continue
            raw = raw[2:] if raw.startswith("$ ") and not pending else raw
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def simple_commands(line: str) -> list[list[str]]:
    """`A=1 kubeml x | tee f; B=$(kubeml y "$T")` -> [[kubeml, x], [tee, f], [kubeml, y, $T]]."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()`")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in SEPARATORS or set(token) <= set(";&|()`"):
            commands.append([])
        else:
            commands[-1].append(token)
    result = []
    for words in commands:
        while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            words = words[1:]  # VAR=value before the program
        if words:
            result.append(words)
    return result


def program(words: list[str]) -> str:
    return Path(words[0]).name


# -- the kubeml CLI ------------------------------------------------------------------------


@cache
def _root() -> Any:
    return typer.main.get_command(app)


def check_kubeml(args: list[str]) -> list[str]:
    """What is wrong with `kubeml ARGS` for the real CLI (nothing: an empty list)."""
    helped = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
    if helped.exit_code != 0:
        return [f"`kubeml {shlex.join(args)} --help` exits {helped.exit_code}: {helped.output}"]
    command, rest = _root(), list(args)
    while getattr(command, "commands", None):  # a group: its own options, then a command
        if not rest:
            return [] if "--version" in args else [f"`kubeml {shlex.join(args)}`: no command"]
        word, rest = rest[0], rest[1:]
        if word in command.commands:
            command = command.commands[word]
            continue
        param = _find(command, word.split("=", 1)[0])
        if param is None:
            return [f"`kubeml {shlex.join(args)}`: {word!r} is not a command or an option"]
        rest = rest[0 if param.is_flag or "=" in word else 1 :]
    problems: list[str] = []
    seen, i = set(), 0
    options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    while i < len(rest):
        word = rest[i]
        name = word.split("=", 1)[0]
        param = _find(command, name) if name.startswith("-") and name in options else None
        if param is None:
            problems.append(f"`kubeml {shlex.join(args)}`: {word!r} is not an option")
            i += 1
            continue
        seen.add(param.name)
        i += 1 if param.is_flag or param.count or "=" in word else 2
    for param in command.params:
        if param.required and param.name not in seen:
            problems.append(f"`kubeml {shlex.join(args)}`: {param.opts[0]} is required")
    return problems


def _find(command: Any, option: str) -> Any:
    return next((p for p in command.params if option in (*p.opts, *p.secondary_opts)), None)


# -- python and bash ------------------------------------------------------------------------


@cache
def _module_help(module: str) -> str:
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, text=True,
                          capture_output=True, timeout=120, check=False)  # fmt: skip
    return done.stdout if done.returncode == 0 else f"(exit {done.returncode}) {done.stderr}"


def check_python(words: list[str]) -> list[str]:
    args = words[1:]
    if args[:1] == ["-c"]:
        return []
    if args[:1] == ["-m"]:
        module, flags = args[1], [w.split("=")[0] for w in args[2:] if w.startswith("--")]
        if importlib.util.find_spec(module) is None:
            return [f"`python -m {module}`: no such module"]
        if not flags:
            return []
        shown = _module_help(module)
        return [f"`python -m {module}`: no {flag} in its --help" for flag in flags
                if not re.search(rf"(^|[\s\[,]){re.escape(flag)}\b", shown)]  # fmt: skip
    if args and not (ROOT / args[0]).exists():
        return [f"`python {args[0]}`: no such file in the repository"]
    return []


@cache
def _run_by_ci() -> str:
    texts = [p.read_text() for p in CI_ENTRY]
    texts += [p.read_text() for p in (ROOT / "tests").rglob("*.py") if p.name != "test_docs.py"]
    return "\n".join(texts)


def check_script(path: str) -> list[str]:
    if not (ROOT / path).is_file():
        return [f"{path}: no such file"]
    if path not in _run_by_ci() and ROOT / path not in CI_ENTRY:
        return [f"{path}: nothing CI runs runs it"]
    return []


def check_command(words: list[str], block: Block) -> list[str]:
    name = program(words)
    if name == "kubeml":
        return check_kubeml(words[1:])
    if block.by:
        return []  # the script runs it: test_a_block_run_by_a_script_is_what_that_script_runs
    if re.fullmatch(r"python3?(\.\d+)?", name):
        return check_python(words)
    if name in ("bash", "sh") and len(words) >= 2 and words[1].startswith("scripts/"):
        return check_script(words[1])
    if block.mark and block.mark.startswith(("run", "parse only: ")):
        return []  # run for real, run by a named script, or shown only: see the block's mark
    return [f"`{shlex.join(words)}`: mark its block with how it is checked (module docstring)"]


# -- the tests ------------------------------------------------------------------------------


def test_every_fence_says_what_it_holds() -> None:
    unlabeled = [str(b) for b in ALL_BLOCKS if b.lang not in LANGUAGES]
    assert not unlabeled, f"fences with no language, or one this test does not know: {unlabeled}"


def test_every_python_block_compiles() -> None:
    for block in (b for b in ALL_BLOCKS if b.lang == "python"):
        compile(block.text, str(block), "exec")


def test_every_command_shown_parses_against_the_code() -> None:
    problems, checked = [], 0
    for block in (b for b in ALL_BLOCKS if b.lang in SHELLS):
        for line in command_lines(block):
            for words in simple_commands(line):
                problems += [f"{block}: {p}" for p in check_command(words, block)]
                checked += program(words) == "kubeml"
    for path in DOCS:  # benchmark commands in tables and prose: `python -m benchmarks ...`
        for inline in re.findall(r"`(python -m benchmarks[^`]*)`", path.read_text()):
            problems += [f"{path.name}: {p}" for p in check_python(shlex.split(inline))]
    assert not problems, "\n".join(problems)
    assert checked >= 20, f"only {checked} kubeml commands found: is the parser broken?"


def test_a_block_run_by_a_script_is_what_that_script_runs() -> None:
    for block in (b for b in ALL_BLOCKS if b.by):
        assert block.by is not None
        assert not check_script(block.by), f"{block}: {check_script(block.by)}"
        script = re.sub(r"[\"']", "", (ROOT / block.by).read_text())
        for line in command_lines(block):
            for words in simple_commands(line):
                name = program(words)
                python_m = name.startswith("python") and words[1:2] == ["-m"]
                step = words[1:3] if python_m else words[1:2]
                needle = " ".join([name if not name.startswith("python") else "", *step]).strip()
                assert needle in script, f"{block}: {block.by} does not run `{needle}`"


def test_the_checks_catch_what_they_should() -> None:
    """The parser and the checks, on commands that must fail."""
    assert simple_commands('T=$(kubeml train -f a -d b) && kubeml logs --id "$T" | tail') == [
        ["kubeml", "train", "-f", "a", "-d", "b"], ["kubeml", "logs", "--id", "$T"], ["tail"]
    ]  # fmt: skip
    assert check_kubeml(["train", "-f", "a", "-d", "b", "--K", "-1", "--watch"]) == []
    assert check_kubeml(["--url", "http://x", "history", "get", "--id", "ID"]) == []
    assert check_kubeml(["train", "-f", "a", "-d", "b", "--no-such-flag"])
    assert check_kubeml(["train", "-f", "a"])  # --dataset is required
    assert check_kubeml(["history", "get", "--id", "<task", "id>"])  # a word left over
    assert check_kubeml(["historyy", "get"])
    assert check_kubeml(["history"])
    assert check_python(["python", "-m", "benchmarks.micro_serve", "--calls", "3"]) == []
    assert check_python(["python", "-m", "benchmarks.micro_serve", "--no-such-flag"])
    assert check_python(["python", "-m", "benchmarks.no_such_module"])
    assert check_script("scripts/test.sh") == [] and check_script("scripts/nope.sh")
    unmarked = Block(ROOT / "README.md", 1, "bash", None, "")
    assert check_command(["ray", "start", "--head"], unmarked)


def test_the_commands_reference_lists_every_option() -> None:
    reference = (ROOT / "docs" / "commands.md").read_text()

    def walk(command: Any, path: str) -> list[str]:
        missing = [f"{path} {o}" for p in command.params for o in p.opts
                   if o.startswith("--") and not getattr(p, "hidden", False)
                   and f"`{o}" not in reference and f" {o}" not in reference]  # fmt: skip
        for name, sub in getattr(command, "commands", {}).items():
            missing += walk(sub, f"{path} {name}")
        return missing

    assert not walk(_root(), "kubeml"), walk(_root(), "kubeml")


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.mark == "run"], ids=str)
def test_a_run_block_runs_as_written(block: Block, tmp_path: Path) -> None:
    """The block, top to bottom, in a fresh directory holding the examples and a `.venv`
    (this interpreter's), against a server of its own on 127.0.0.1."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBEML_")}
    env |= {"KUBEML_HOME": str(tmp_path / "home"), "KUBEML_PORT": str(free_port()),
            "KUBEML_HOST": "127.0.0.1", "KUBEML_CAPACITY": "2"}  # fmt: skip
    try:
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", block.text], cwd=tmp_path, env=env,
            capture_output=True, text=True, timeout=840, check=False,
        )  # fmt: skip
    finally:
        kubeml = Path(sys.prefix) / "bin" / "kubeml"
        subprocess.run([kubeml, "server", "stop"], env=env, capture_output=True, timeout=60,
                       check=False)  # fmt: skip
    assert done.returncode == 0, f"{block}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    # Outputs the block promises in a comment (`kubeml infer ...  # the ...: [4, 2, 0, 9, 6]`).
    for shown in re.findall(r"#[^\n:]*: (\[[^\]]*\])\s*$", block.text, flags=re.M):
        assert json.loads(shown) == json.loads(_line_with(done.stdout, shown[:1])), shown


def _line_with(out: str, start: str) -> str:
    return next(line for line in reversed(out.splitlines()) if line.startswith(start))
