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
