"""tools/structure.py over alignbench/: no import cycle (lazy imports count), no import against the
layer order docs/ARCHITECTURE.md declares, no file over 400 lines, no function over 80 lines — the
layout docs/ARCHITECTURE.md describes stays true."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_package_has_no_cycle_no_long_file_no_long_function():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "structure.py"), str(ROOT / "alignbench")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("cycles=0 "), out.stdout
    assert " upward_imports=0 " in out.stdout, out.stdout  # the doc's layers: line was found and holds


def test_an_import_against_the_declared_layers_fails_the_check(tmp_path):
    """A miniature project: docs/ARCHITECTURE.md declares `low | high`; low importing high is upward."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "ARCHITECTURE.md").write_text("# x\n\n    layers: low | high\n")
    pkg = tmp_path / "pkg"
    for sub, body in (("low", "from pkg.high import mod\n"), ("high", "from pkg.low import mod\n")):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text('"""doc"""\n')
        (pkg / sub / "mod.py").write_text(body if sub == "low" else "x = 1\n")
    (pkg / "__init__.py").write_text('"""doc"""\n')
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "structure.py"), str(pkg)],
                         capture_output=True, text=True)
    assert out.returncode == 1, out.stdout
    assert "upward_imports=1 [('pkg.low.mod', 'high', 'layer 1 >= 0')]" in out.stdout, out.stdout


def test_package_inits_hold_only_a_docstring():
    """Re-exports in a package __init__ would make the package and its submodules import each other."""
    import ast

    for init in (ROOT / "alignbench").rglob("__init__.py"):
        body = ast.parse(init.read_text()).body
        code = [n for n in body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
                and not (isinstance(n, ast.Assign) and init.parent.name == "alignbench")]  # __version__
        assert code == [], f"{init} holds code besides its docstring"


def _config_tree_readers(paths) -> list[str]:
    """Where `paths` read the composed config: an omegaconf import, a parameter named cfg or *_cfg."""
    import ast

    offenders = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                offenders += [f"{path.name}: imports {n}" for n in names if n.split(".")[0] == "omegaconf"]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                offenders += [f"{path.name}:{getattr(node, 'name', 'lambda')}({a.arg})" for a in args
                              if a.arg == "cfg" or a.arg.endswith("_cfg")]
    return offenders


def test_no_stage_below_training_reads_the_config_tree():
    """data/, models/, losses/ and evaluation/ take typed settings (built once in training/settings.py),
    never the composed config: no omegaconf import, no parameter named cfg or *_cfg."""
    stages = [path for stage in ("data", "models", "losses", "evaluation")
              for path in sorted((ROOT / "alignbench" / stage).rglob("*.py"))]
    assert _config_tree_readers(stages) == []
    assert len(list((ROOT / "alignbench" / "models").rglob("*.py"))) > 5  # the walk saw the stages' files


def test_the_training_loops_take_settings_not_the_config_tree():
    """Under training/ only settings.py (config -> typed settings, once per run) and run.py (which
    builds them and hands them down) read the composed config; the loops, the set-up, checkpoints
    and the rest take the settings."""
    training = sorted((ROOT / "alignbench" / "training").glob("*.py"))
    readers = [p for p in training if p.name not in ("settings.py", "run.py")]
    assert len(readers) >= 8  # loop, offline, online, setup, checkpoint, distributed, reference, builtin_pairs
    assert _config_tree_readers(readers) == []
    assert _config_tree_readers([p for p in training if p.name == "settings.py"]) != []  # the check sees a reader


def test_the_docs_newcomers_read_first_stay_short_and_name_only_what_exists():
    """README.md is first contact (<= 200 lines) and docs/ARCHITECTURE.md one page (<= 100 lines); every
    module or package ARCHITECTURE.md names in backticks exists, and the README's method table has one
    row per method of METHODS, no more, no fewer."""
    import re

    from alignbench.methods import METHODS

    readme, arch = (ROOT / "README.md").read_text(), (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    assert len(readme.splitlines()) <= 200 and len(arch.splitlines()) <= 100
    named = set(re.findall(r"`([a-z_]+(?:/[a-z_]+)*(?:\.py|/))", arch))
    assert len(named) > 15  # the page names the modules it describes
    files = {str(p.relative_to(ROOT / "alignbench")) for p in (ROOT / "alignbench").rglob("*.py")}
    dirs = {str(p.relative_to(ROOT / "alignbench")) + "/" for p in (ROOT / "alignbench").rglob("*") if p.is_dir()}
    missing = [n for n in named if not ((ROOT / n).exists() or any(f == n or f.endswith("/" + n) for f in files | dirs))]
    assert missing == []
    section = readme.split("\n## Methods\n")[1].split("\n## ")[0]
    table = [m for m in re.findall(r"^\| ([A-Za-z]+) \|", section, flags=re.M) if m != "method"]
    assert sorted(m.lower() for m in table) == sorted(METHODS)


def private_imports(package: Path) -> list[str]:
    """Where a module of `package` reaches into another module's private names: `from pkg.x import _y`
    (relative imports included), or `x._y` on a name bound by importing a module of the package."""
    import ast

    offenders = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text())
        own_modules = set()  # local names bound to a module (or anything) imported from the package
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == package.name):
                offenders += [f"{path.name}:{node.lineno} imports {a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
                own_modules |= {a.asname or a.name for a in node.names}
            elif isinstance(node, ast.Import):
                own_modules |= {a.asname or a.name.split(".")[0] for a in node.names
                                if a.name.split(".")[0] == package.name}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                base = node.value
                while isinstance(base, ast.Attribute):
                    base = base.value
                if isinstance(base, ast.Name) and base.id in own_modules:
                    offenders.append(f"{path.name}:{node.lineno} reads {ast.unparse(node)}")
    return offenders


def test_no_module_imports_another_modules_private_names(tmp_path):
    """A leading underscore says "only this module uses it"; a name another module needs is public."""
    assert private_imports(ROOT / "alignbench") == []
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text("def _hidden():\n    return 1\n")
    (pkg / "b.py").write_text("from pkg.a import _hidden\nfrom . import a as mod\nimport pkg.a\n"
                              "x = mod._hidden() + pkg.a._hidden() + _hidden()\n")
    assert sorted(private_imports(pkg)) == ["b.py:1 imports _hidden", "b.py:4 reads mod._hidden",
                                            "b.py:4 reads pkg.a._hidden"]


def test_the_sweep_talks_to_mlflow_only_through_its_recorder():
    """sweep/recorder.py is the sweep's one door to MLflow: no other sweep module imports mlflow, the
    run functions (`tracking.mlflow_runs`) or the artifact readers (`tracking.artifacts`)."""
    import ast

    mlflow_modules = ("mlflow", "alignbench.tracking.mlflow_runs", "alignbench.tracking.artifacts")
    importers = set()
    for path in sorted((ROOT / "alignbench" / "sweep").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            if any(n == m or n.startswith(m + ".") for n in names for m in mlflow_modules):
                importers.add(path.name)
    assert importers == {"recorder.py"}


def imported_test_modules(tests_dir: Path) -> dict[str, list[str]]:
    """{test module: the test modules it imports}: shared helpers belong in tests/helpers.py or fixtures."""
    import ast

    found = {}
    for path in sorted(tests_dir.glob("test_*.py")):
        names = []
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.append(node.module)
        found[path.name] = sorted({n for n in names if n.split(".")[-1].startswith("test_")})
    return {k: v for k, v in found.items() if v}


def test_no_test_module_imports_another(tmp_path):
    assert imported_test_modules(ROOT / "tests") == {}
    (tmp_path / "test_a.py").write_text("X = 1\n")
    (tmp_path / "test_b.py").write_text("from test_a import X\nimport helpers\n")
    (tmp_path / "test_c.py").write_text("def f():\n    import tests.test_a\n")
    assert imported_test_modules(tmp_path) == {"test_b.py": ["test_a"], "test_c.py": ["tests.test_a"]}
