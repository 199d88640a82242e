"""The layer rules that import-linter (``make lint``) does not state: PIL only in the command lines of
``models`` and the codec they share with the worker, and an API process without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CODECS = {"models.imageio", "models.flow.pngio"}  # PIL image codecs: the worker's and the CLIs' I/O


def _modules(package: str) -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of the file (function-level imports too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def _is_cli(path: Path) -> bool:
    return 'if __name__ == "__main__":' in path.read_text()


def test_only_command_lines_and_the_codec_reach_pil() -> None:
    modules = _modules("models")
    graph = {name: {m for m in _imports(name, path) if m in modules} for name, path in modules.items()}
    direct = {name for name, path in modules.items() if any(m.split(".")[0] == "PIL" for m in _imports(name, path))}
    assert direct <= CODECS | {n for n, p in modules.items() if _is_cli(p)}, "PIL outside the codecs and CLIs"
    reaches = set(direct)
    changed = True
    while changed:  # every module that imports PIL through others
        changed = False
        for name, deps in graph.items():
            if name not in reaches and deps & reaches:
                reaches.add(name)
                changed = True
    allowed = CODECS | {n for n, p in modules.items() if _is_cli(p)}
    assert reaches <= allowed, f"math modules that reach PIL: {sorted(reaches - allowed)}"


def test_the_rule_sees_a_violation(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from .. import imageio\n    from PIL import Image\n")
    assert {"PIL", "PIL.Image", "models.imageio", "models"} <= _imports("models.diffusion.m", module)


def test_importing_the_api_does_not_import_torch() -> None:
    code = (
        "import sys, app.main; bad = [m for m in ('torch', 'diffusers', 'transformers', 'workers', 'models') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_rq_is_used_through_its_public_api_only() -> None:
    """The service's own code imports nothing private from RQ and calls no private member of its objects (issue
    19: the worker owns its loop instead of reaching into RQ's internals)."""
    offenders = []
    for package in ("core", "app", "workers"):
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            rq_names = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "rq":
                    offenders += [
                        f"{path}: from {node.module} import {a.name}" for a in node.names if a.name.startswith("_")
                    ]
                    offenders += [f"{path}: {node.module}" for part in node.module.split(".") if part.startswith("_")]
                    rq_names |= {a.asname or a.name for a in node.names}
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                    base = node.value
                    if isinstance(base, ast.Name) and base.id in rq_names:
                        offenders.append(f"{path}:{node.lineno}: {base.id}.{node.attr}")
    assert offenders == []
