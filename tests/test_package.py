"""The package layout: the command line is ``occfeat.cli`` (never a top-level ``cli``), ``python -m
occfeat`` runs it, a wheel carries it and the recipes (installed into a fresh venv, it runs from any
directory), no module imports itself back through another, and the dependencies are ranges whose lower
end CI can install."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = {"occfeat": REPO / "occfeat", "occfeat.cli": REPO / "cli"}  # import prefix → folder


def _modules() -> dict[str, Path]:
    mods = {}
    for prefix, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            mods[".".join([prefix, *parts])] = path
    return mods


def _imports(path: Path) -> set[str]:
    """Every module name an import statement in the file may load, function-local imports included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return names


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
                on_stack.discard(comp[-1])
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_sees_a_lazy_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_between_modules():
    """Lazy (function-local) imports count: a circle hidden in a function is still two modules that cannot
    be read, tested or moved apart. A submodule reaching its own package (``occfeat.x.y`` → ``occfeat.x``)
    is not counted: the package is always loaded before its submodules."""
    mods = _modules()
    graph = {
        name: {d for d in _imports(path) if d in mods and d != name and not name.startswith(d + ".")}
        for name, path in mods.items()
    }
    assert _cycles(graph) == [], "import circles (break them: move what both need into a module both import)"


def test_nothing_imports_a_top_level_cli_package():
    offenders = []
    for folder in ("occfeat", "cli", "tests", "benchmarks", "tools"):
        for path in (REPO / folder).rglob("*.py"):
            if path == Path(__file__).resolve():
                continue  # this file names them to look for them
            if any(n == "cli" or n.startswith("cli.") for n in _imports(path)):
                offenders.append(str(path.relative_to(REPO)))
            text = path.read_text(encoding="utf-8")
            if '"-m", "cli"' in text or "-m cli " in text:
                offenders.append(f"{path.relative_to(REPO)} (-m cli)")
    assert offenders == []


def test_every_command_is_registered():
    from occfeat.cli.main import app

    names = {c.name for c in app.registered_commands}
    assert names == {"version", "synth", "voxelize", "extract", "pretrain", "finetune", "evaluate", "report", "export", "inspect", "demo", "study"}


def test_python_m_occfeat_runs_this_checkouts_cli():
    """From the repository root, ``python -m occfeat`` and ``occfeat.cli`` are this tree's code, whatever
    else is installed (the installed editable copy may be another checkout)."""
    res = subprocess.run([sys.executable, "-m", "occfeat", "version"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    from occfeat import __version__

    assert res.stdout.strip() == __version__
    code = "import occfeat.cli.main, occfeat.cli.voxelize as v; print(occfeat.cli.main.__file__); print(v.__file__)"
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert [Path(p).resolve() for p in res.stdout.split()] == [REPO / "cli" / "main.py", REPO / "cli" / "voxelize.py"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the tree (the build writes build/ and *.egg-info next to its sources)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("occfeat", "cli", "recipes"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    code = f"from setuptools import build_meta; print(build_meta.build_wheel({str(tmp / 'dist')!r}))"
    res = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp / "dist" / res.stdout.split()[-1]


def test_wheel_holds_cli_as_occfeat_cli_and_every_module(wheel):
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        entry_points = next(whl.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    expected = {f"occfeat/{p.relative_to(REPO / 'occfeat').as_posix()}" for p in (REPO / "occfeat").rglob("*.py")}
    expected |= {f"occfeat/cli/{p.relative_to(REPO / 'cli').as_posix()}" for p in (REPO / "cli").rglob("*.py")}
    assert expected - names == set()
    assert "occfeat/__main__.py" in names and "occfeat/cli/main.py" in names
    assert not any(n.startswith("cli/") for n in names)
    assert "occfeat = occfeat.cli.main:app" in entry_points


def test_wheel_ships_every_recipe_and_the_typing_marker(wheel):
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
    recipes = {f"occfeat/recipes/{p.relative_to(REPO / 'recipes').as_posix()}" for p in (REPO / "recipes").rglob("*.yaml")}
    assert len(recipes) > 30 and recipes - names == set()
    assert "occfeat/py.typed" in names
    assert not any(n.startswith("recipes/") for n in names)


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed and nothing else: torch & co. come from this interpreter's
    site-packages (--system-site-packages), where the editable install of this checkout also is."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True, timeout=120)
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps", "--no-index", str(wheel)]
    res = subprocess.run(pip, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return venv


def _in_venv(venv: Path, args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


CHECK_INSTALLED = """
import occfeat, occfeat.cli.main as cli
from occfeat.config import find_recipe, recipes_root
print(occfeat.__file__, cli.__file__, recipes_root(), find_recipe("studies/ci.yaml"), flush=True)
for args in (["pretrain", "--recipe", "synthetic-tiny", "--print-config"],
             ["finetune", "--recipe", "synthetic-tinny", "--task", "vehicle", "--fraction", "0.1"]):
    try:
        cli.app(args, prog_name="occfeat")
    except SystemExit as e:
        print("exit", e.code, flush=True)
"""


def test_the_installed_wheel_runs_its_own_copy_and_finds_recipes_by_name(venv, tmp_path):
    """From an empty directory: code, command line and recipes all come from the venv, not from this
    checkout (whose editable install is on the same sys.path); ``--recipe NAME`` finds the shipped recipe.
    One process (importing torch takes most of its time); the console script runs in the slow test below."""
    res = _in_venv(venv, ["python", "-c", CHECK_INSTALLED], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    first, *rest = res.stdout.splitlines()
    paths = [Path(p).resolve() for p in first.split()]
    site = (venv / "lib").resolve()
    assert len(paths) == 4 and all(site in p.parents for p in paths), paths
    assert paths[2].name == "recipes" and paths[3].is_file()
    printed = "\n".join(rest)
    assert "shape:\n  - 50\n  - 50\n  - 8" in printed  # the tiny recipe's grid, not the default 200x200x8
    assert [ln for ln in rest if ln.startswith("exit")] == ["exit 0", "exit 2"]
    error = res.stderr.strip().splitlines()[-1]
    assert error.startswith("error: recipe 'synthetic-tinny' not found") and "close names: synthetic-tiny" in error


@pytest.mark.slow
def test_the_installed_wheel_runs_the_ci_demo_from_another_directory(venv, tmp_path):
    """The whole pipeline from the wheel alone (6 min on the shared 2-core machine; the same demo runs from the
    checkout in tests/test_demo.py, and the wheel's code, CLI and recipes in the fast test above)."""
    res = _in_venv(venv, ["occfeat", "demo", "--out", "d", "--preset", "ci"], tmp_path, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "d" / "report" / "table.md").is_file() and (tmp_path / "d" / "pipeline.json").is_file()


def _dependencies() -> list:
    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return [Requirement(r) for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]]


def _lower_pins() -> dict:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lines = (REPO / ".ci" / "lower-bounds.txt").read_text().splitlines()
    reqs = [Requirement(ln) for ln in lines if ln.strip() and not ln.startswith("#")]
    return {canonicalize_name(r.name): r for r in reqs}


def test_dependencies_are_ranges_and_ci_pins_their_lower_ends():
    """No exact pins (they make occfeat uninstallable beside other tools); every dependency has a lower bound,
    and .ci/lower-bounds.txt pins a release of that bound (``numba>=0.59`` → ``numba==0.59.x``)."""
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    pins = _lower_pins()
    for req in _dependencies():
        ops = {s.operator: s.version for s in req.specifier}
        assert not {"==", "===", "~="} & set(ops), f"{req}: a range, please (an upper bound only where a break is known)"
        assert ">=" in ops, f"{req} has no lower bound"
        pin = pins.get(canonicalize_name(req.name))
        assert pin is not None, f"{req.name} missing from .ci/lower-bounds.txt"
        (spec,) = pin.specifier
        bound, pinned = Version(ops[">="]).release, Version(spec.version).release
        assert spec.operator == "==" and pinned[: len(bound)] == bound, f"{pin} is not the lower end of {req}"
        assert req.specifier.contains(spec.version), f"{pin} is outside {req}"


def _dry_run(wheel: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", str(wheel), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [["torch==2.5.1"], ["-c", str(REPO / ".ci" / "lower-bounds.txt")]],
    ids=["beside-torch-2.5.1", "at-the-lower-bounds"],
)
def test_the_wheel_resolves_beside_older_tools(wheel, args):
    """Needs the package index (~1 min each): pip finds a set with the wheel and these pins."""
    res = _dry_run(wheel, *args)
    assert res.returncode == 0, res.stderr[-3000:]
