"""The harness's stages import one way (bench/__init__.py): every package imports only the packages its
__init__ docstring allows, and no two modules import each other."""
import ast
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
# package -> the bench packages (or modules) it may import besides itself; cli.py may import every stage.
ALLOWED = {
    "models": {"bench.files"},
    "metrics": {"bench.files", "bench.models"},
    "spec": {"bench.models", "bench.metrics"},
    "run": {"bench.files", "bench.models", "bench.metrics", "bench.spec"},
    "analysis": {"bench.spec", "bench.metrics", "bench.run.store"},
    "conformance": {"bench.models"},
    "fit": {"bench.files", "bench.models", "bench.metrics", "bench.spec", "bench.run"},
    "check": {"bench.spec", "bench.run", "bench.analysis"},
}


def _imports(path: Path) -> set[str]:
    """Every bench module a file imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bench"):
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("bench")}
    return found


def _module(path: Path) -> str:
    parts = path.relative_to(BENCH.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_stage_imports_only_what_its_docstring_allows(package):
    own, allowed = f"bench.{package}", ALLOWED[package]
    for path in sorted((BENCH / package).glob("*.py")):
        for name in _imports(path):
            if name == "bench" or name.startswith(own) or any(name == a or name.startswith(a + ".") for a in allowed):
                continue
            if name.rpartition(".")[0] in allowed:  # `from bench.run import store` names bench.run.store
                continue
            raise AssertionError(f"{path.relative_to(BENCH.parent)} imports {name}; {package} may import "
                                 f"{', '.join(sorted(allowed))}")


def test_no_two_modules_import_each_other():
    modules = {_module(p): p for p in BENCH.rglob("*.py")}
    graph = {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}
    circles = sorted((a, b) for a, targets in graph.items() for b in targets if a in graph.get(b, ()) and a < b)
    assert not circles, f"modules that import each other: {circles}"


def test_every_package_says_its_job_and_what_it_may_import():
    for package in ALLOWED:
        doc = ast.get_docstring(ast.parse((BENCH / package / "__init__.py").read_text())) or ""
        assert "Job:" in doc and "May import:" in doc, f"bench/{package}/__init__.py: {doc[:80]!r}"
