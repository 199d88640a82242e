"""Every runnable example of README.md, run against a real service, and what it prints compared with the README.

The convention (README, "Development"):

- A runnable example is a fenced block whose info string is ``bash example`` or ``python example`` (GitHub
  highlights by the first word). ``python example NAME`` is a file the reader saves as NAME (in the working
  directory) for a later block to run; it is written there, not run.
- What an example prints, where the README shows it, is the fenced block right after it (only prose between)
  whose info string is ``text output``. An example without one must print nothing.
- In a ``text output``, ``<id>`` stands for 32 hex digits, ``<time>`` for an ISO 8601 time, ``<n>`` for a number,
  ``...`` inside a line for any text on that line, and a line that is only ``...`` for any run of lines (none
  included), as doctest's ELLIPSIS. Trailing blanks and blank lines at the end do not count.
- A ``bash example`` must not fail: every command that returns non-zero outside a condition (``until``, ``if``,
  ``&&``, ``|| true``) fails the test.

The service is started as a user's ``TINY_IF=1 make run`` with the webhook settings of the README's "Webhooks":
a redis-server, the API and one worker with the shipped MNIST checkpoints, the tiny random-weight DeepFloyd IF
pipelines, the default ``PREVIEW_EVERY``, ``WEBHOOK_SECRET`` (also in the examples' environment, as the README's
``export`` puts it there) and ``WEBHOOK_ALLOW=public,127.0.0.1``. The ``bash example`` blocks run in README order
in one bash session, so that variables (``$BASE``, ``$JOB``) carry from block to block; ``python example`` blocks
run with this virtualenv's python (first on PATH, so ``python3`` is it too) from the same session. The session runs
in a temporary folder that stands for the checkout: it holds only a link to ``postman/`` (the sample images the
examples upload), and anything else an example writes there would land in a user's checkout, so it fails the test
(downloads go where the README says, e.g. /tmp). The README's addresses are replaced by the test's free ports (the
API's ``http://127.0.0.1:8000``, the webhook receiver's port 8080), and back in what the examples print.

It takes about 20 s on two cores (the examples themselves about 10 s):
``.venv/bin/python -m pytest tests/integration/test_readme.py -q``.
"""

from __future__ import annotations

import base64
import difflib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import ROOT, Stack, free_port

README = ROOT / "README.md"
SECRET = "whsec_" + base64.b64encode(b"readme-example-secret-0123456789").decode()
SESSION_TIMEOUT_S = 240

FENCE = re.compile(r"^```(.*)$")
PLACEHOLDERS = {
    "<id>": r"[0-9a-f]{32}",
    "<time>": r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)",
    "<n>": r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?",
    "...": r".*?",
}
TOKEN = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS))


@dataclass
class Example:
    language: str  # "bash" or "python"
    code: str
    line: int  # of its first line of code in README.md
    save_as: str | None = None  # `python example NAME`: written to NAME, not run
    output: str | None = None  # its `text output` block, if any
    output_line: int | None = None

    @property
    def name(self) -> str:
        first = next((s for s in self.code.splitlines() if s.strip()), "")
        return f"README.md:{self.line} `{first.strip()}`"


def parse(text: str) -> list[Example]:
    """The runnable examples of a README, in order, each with the `text output` block that follows it."""
    examples: list[Example] = []
    lines = text.splitlines()
    i = 0
    last: Example | None = None  # the example a `text output` right after it would belong to
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        info = fence.group(1).split()
        start = i + 1
        end = next((j for j in range(start, len(lines)) if lines[j].startswith("```")), None)
        if end is None:
            raise ValueError(f"README.md:{i + 1}: a fenced block that is never closed")
        body = "\n".join(lines[start:end]) + "\n"
        if info[:2] == ["text", "output"]:
            if last is None:
                raise ValueError(f"README.md:{i + 1}: a `text output` block that follows no runnable example")
            if last.save_as is not None:
                raise ValueError(f"README.md:{i + 1}: `{last.save_as}` is saved, not run: it prints nothing")
            last.output, last.output_line = body, start + 1
            last = None
        elif len(info) >= 2 and info[0] in ("bash", "python") and info[1] == "example":
            if len(info) > 3 or (len(info) == 3 and info[0] != "python"):
                raise ValueError(f"README.md:{i + 1}: unknown info string {' '.join(info)!r}")
            last = Example(info[0], body, start + 1, save_as=info[2] if len(info) == 3 else None)
            examples.append(last)
        else:
            last = None
        i = end + 1
    return examples


def pattern(expected: str) -> re.Pattern[str]:
    """The regular expression of a `text output` block (see the module docstring for its placeholders)."""
    parts = []
    for line in normalized(expected).splitlines():
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
            continue
        pieces, at = [], 0
        for m in TOKEN.finditer(line):
            pieces += [re.escape(line[at : m.start()]), PLACEHOLDERS[m.group()]]
            at = m.end()
        pieces.append(re.escape(line[at:]))
        parts.append("".join(pieces) + r"\n")
    return re.compile("".join(parts))


def normalized(text: str) -> str:
    """Line ends as \\n, no trailing blanks, no blank lines at the end; ends with one \\n unless empty."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n" if lines else ""


def matches(expected: str, actual: str) -> bool:
    return pattern(expected).fullmatch(normalized(actual)) is not None


def diff(expected: str, actual: str, where: str) -> str:
    """A unified diff in which an actual line that one of the expected lines matches reads as that line, so that
    only the lines that differ show (the placeholders would make every line with an id differ)."""
    wanted = normalized(expected).splitlines()
    lines = {line: pattern(line) for line in wanted if line.strip() != "..."}
    shown = [next((w for w, p in lines.items() if p.fullmatch(a + "\n")), a) for a in normalized(actual).splitlines()]
    return "\n".join(
        difflib.unified_diff(wanted, shown, f"{where}, what the README shows", "what the example printed", lineterm="")
    )


# ---- the parser and the matcher on known answers (no service) ---------------------------------------------------


def test_parse_pairs_each_example_with_the_output_after_it() -> None:
    text = "\n".join(
        [
            "# title",
            "```bash example",
            "echo hi",
            "```",
            "It prints:",
            "```text output",
            "hi",
            "```",
            "```bash",
            "make run",
            "```",
            "```text output",  # after a plain block: an error
            "x",
            "```",
        ]
    )
    with pytest.raises(ValueError, match=re.escape("README.md:12: a `text output` block that follows no runnable")):
        parse(text)
    (example,) = parse("\n".join(text.splitlines()[:11]))
    assert (example.language, example.code, example.line, example.output, example.output_line) == (
        "bash",
        "echo hi\n",
        3,
        "hi\n",
        7,
    )
    assert example.name == "README.md:3 `echo hi`"
    (saved, run) = parse("```python example receiver.py\nprint(1)\n```\n```python example\nprint(2)\n```\n")
    assert (saved.save_as, saved.output, run.save_as, run.line) == ("receiver.py", None, None, 5)


def test_placeholders_and_ellipses() -> None:
    assert matches(
        '{"id":"<id>","at":"<time>","n":<n>}', '{"id":"' + "a1" * 16 + '","at":"2026-12-04T10:00:00.123Z","n":-3.5}'
    )
    assert not matches("<id>", "A1" * 16) and not matches("<n>", "x")
    assert matches('{"status":"succeeded",...}', '{"status":"succeeded","results":{}}')
    assert not matches('{"status":"succeeded",...}', '{"status":"failed","results":{}}')
    assert matches("a\n...\nb", "a\nb") and matches("a\n...\nb", "a\nx\ny\nb") and not matches("a\n...\nb", "a\nx")
    assert matches("a ... b", "a x b") and not matches("a ... b", "a x\ny b")  # an inline ... stays on its line
    assert matches("ok\n", "ok  \r\n\n\n") and matches("", "\n") and not matches("", "x")
    assert matches("(a+b) [c] *?", "(a+b) [c] *?")  # everything else is literal


def test_the_readme_has_its_examples() -> None:
    examples = parse(README.read_text())
    assert {e.language for e in examples} == {"bash", "python"}
    assert len([e for e in examples if e.output is not None]) >= 20


# ---- the README against a real service ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(redis_server, tiny_if, tmp_path_factory) -> Iterator[Stack]:
    """`TINY_IF=1 make run` with the README's webhook settings: the shipped MNIST checkpoints (the settings'
    defaults, not the random ones of `mnist_checkpoints`), the tiny IF pipelines, the default PREVIEW_EVERY."""
    env = {**tiny_if, "WEBHOOK_SECRET": SECRET, "WEBHOOK_ALLOW": "public,127.0.0.1"}
    stack = Stack(redis_server.url, env, tmp_path_factory.mktemp("readme-service"))
    try:
        stack.start_api()
        stack.start_worker()
        yield stack
    finally:
        stack.stop()


@dataclass
class Ran:
    output: str
    errors: list[str]  # "<status>: <command>" for each command that failed, from the ERR trap


def substitutions(service: Stack, receiver_port: int) -> list[tuple[str, str]]:
    """(README text, what the test runs): the API's address and the webhook receiver's port."""
    base = str(service.client.base_url).rstrip("/")
    return [
        ("http://127.0.0.1:8000", base),
        ("127.0.0.1:8080", f"127.0.0.1:{receiver_port}"),
        ('("127.0.0.1", 8080)', f'("127.0.0.1", {receiver_port})'),
    ]


def block_file(blocks: Path, i: int, example: Example) -> Path:
    return blocks / f"{i:02d}.{'sh' if example.language == 'bash' else 'py'}"


#: The session's start: its marker, and an ERR trap that reports every command that fails outside a condition
#: (the `source` of a bash block included: the block ended with a non-zero status).
SESSION_START = r"""__mark=%s
trap 'printf "\n%%s error %%s: %%s\n" "$__mark" "$?" "$BASH_COMMAND"' ERR
"""
#: Each block: a bash block is sourced (it runs in the session's shell), a python block runs with $PYTHON.
SESSION_BLOCK = r"""printf '%%s %(i)d begin\n' "$__mark"
%(run)s
printf '\n%%s %(i)d end\n' "$__mark"
"""
#: The end: stop what an example left running in the background.
SESSION_END = "kill $(jobs -p) 2>/dev/null || true\nwait\n"


def session_script(examples: list[Example], blocks: Path, mark: str) -> str:
    """One bash script that runs the examples in order, each between two marker lines."""
    script = SESSION_START % mark
    for i, example in enumerate(examples):
        if example.save_as is None:
            path = block_file(blocks, i, example)
            run = f"source {path}" if example.language == "bash" else f'"$PYTHON" {path}'
            script += SESSION_BLOCK % {"i": i, "run": run}
    return script + SESSION_END


def run_session(examples: list[Example], subs: list[tuple[str, str]], workdir: Path, blocks: Path) -> dict[int, Ran]:
    """Run every example in one bash session in `workdir`; what each printed (addresses as in the README) and which
    of its commands failed, by its index in `examples`."""
    mark = f"@@readme-{uuid.uuid4().hex[:12]}"
    for i, example in enumerate(examples):
        code = example.code
        for readme, ours in subs:
            code = code.replace(readme, ours)
        path = workdir / example.save_as if example.save_as is not None else block_file(blocks, i, example)
        path.write_text(code)
    script = blocks / "session.sh"
    script.write_text(session_script(examples, blocks, mark))
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("BASE", "JOB", "LONG", "PYTHONPATH")},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHON": sys.executable,
        "WEBHOOK_SECRET": SECRET,  # the README's `export WEBHOOK_SECRET=...` before `make run`
    }
    proc = subprocess.Popen(
        ["bash", str(script)],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=SESSION_TIMEOUT_S)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        timed_out = True
    text = out.decode(errors="replace")
    for readme, ours in subs:
        text = text.replace(ours, readme)
    if timed_out:
        begun = re.findall(rf"^{re.escape(mark)} (\d+) begin$", text, re.M)
        stuck = examples[int(begun[-1])].name if begun else "the session"
        pytest.fail(f"{stuck} did not end: the examples ran for {SESSION_TIMEOUT_S} s and printed:\n{text}")
    block = re.compile(rf"^{re.escape(mark)} (\d+) begin\n(.*?)\n{re.escape(mark)} \1 end$", re.S | re.M)
    error = re.compile(rf"^{re.escape(mark)} error (.*)\n?", re.M)
    ran = {}
    for m in block.finditer(text):
        i, body = int(m.group(1)), m.group(2)
        sourced = f"source {block_file(blocks, i, examples[i])}"
        errors = [e.replace(sourced, "(the block's own status)") for e in error.findall(body)]
        ran[i] = Ran(error.sub("", body), errors)
    return ran


def test_every_readme_example_prints_what_the_readme_shows(service: Stack, tmp_path: Path) -> None:
    examples = parse(README.read_text())
    receiver_port = free_port()
    subs = substitutions(service, receiver_port)
    every_code = "".join(e.code for e in examples)
    unused = [readme for readme, _ in subs if readme not in every_code]
    assert not unused, f"the README's examples no longer use {unused}: update `substitutions`"
    workdir, blocks = tmp_path / "checkout", tmp_path / "blocks"
    workdir.mkdir()
    blocks.mkdir()
    (workdir / "postman").symlink_to(ROOT / "postman")

    began = time.monotonic()
    ran = run_session(examples, subs, workdir, blocks)
    took = time.monotonic() - began

    problems = []
    for i, example in enumerate(examples):
        if example.save_as is not None:
            continue
        if i not in ran:
            problems.append(f"{example.name} did not run to its end (an earlier block stopped the session?)")
            continue
        got = ran[i]
        if got.errors:
            failed = "\n".join(f"  status {e}" for e in got.errors)
            problems.append(f"{example.name} failed:\n{failed}\n  it printed:\n{got.output.strip() or '(nothing)'}")
        expected = example.output or ""
        if not matches(expected, got.output):
            where = f"README.md:{example.output_line}" if example.output_line else "(no `text output` block)"
            problems.append(f"{example.name} prints something else:\n{diff(expected, got.output, where)}")
    saved = {e.save_as for e in examples if e.save_as is not None}
    left = sorted(p.name for p in workdir.iterdir() if p.name != "postman" and p.name not in saved)
    if left:
        problems.append(f"the examples wrote into the working directory (a user's checkout): {left}")
    if problems:
        pytest.fail(f"{len(problems)} README example(s) out of date:\n\n" + "\n\n".join(problems), pytrace=False)
    print(f"{len(examples)} README examples ran in {took:.1f} s")
