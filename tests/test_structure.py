"""tools/structure.py over alignbench/: no import cycle (lazy imports count), no file over 400 lines,
no function over 80 lines — the layout docs/ARCHITECTURE.md describes stays true."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_package_has_no_cycle_no_long_file_no_long_function():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "structure.py"), str(ROOT / "alignbench")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("cycles=0 "), out.stdout


def test_package_inits_hold_only_a_docstring():
    """Re-exports in a package __init__ would make the package and its submodules import each other."""
    import ast

    for init in (ROOT / "alignbench").rglob("__init__.py"):
        body = ast.parse(init.read_text()).body
        code = [n for n in body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
                and not (isinstance(n, ast.Assign) and init.parent.name == "alignbench")]  # __version__
        assert code == [], f"{init} holds code besides its docstring"
