"""The dependency rule of DESIGN.md, checked by walking every import statement."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ticket", "edge_daemon", "server", "deploy")

# package -> top-level modules it must never import
FORBIDDEN = {
    "ticket": {
        "flwr",
        "psutil",
        "yaml",
        "socket",
        "socketserver",
        "http",
        "urllib",
        "requests",
        "edge_daemon",
        "server",
        "deploy",
        "pickle",
    },
    "edge_daemon": {"server", "deploy", "pickle"},
    "server": {"edge_daemon", "deploy", "pickle"},
    "deploy": {"edge_daemon", "pickle"},
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def _reads_environment(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in {"environ", "getenv", "putenv"}
    ]


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_respect_the_dependency_rule(package: str) -> None:
    violations = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in _sources(package)
        for line, module in _imports(path)
        if module in FORBIDDEN[package]
    ]
    assert violations == []


def test_core_never_reads_the_environment() -> None:
    violations = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in _sources("ticket")
        for line in _reads_environment(path)
    ]
    assert violations == []


def test_the_walker_sees_real_imports(tmp_path: Path) -> None:
    # Guard against a walker that silently finds nothing.
    probe = tmp_path / "probe.py"
    probe.write_text("import flwr.app\nfrom server.cli import main\nimport os\nos.environ['X']\n")
    assert {module for _, module in _imports(probe)} == {"flwr", "server", "os"}
    assert _reads_environment(probe) == [4]
    assert len(_sources("ticket")) > 5
