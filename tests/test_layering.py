"""The dependency rule of DESIGN.md, checked by walking every import statement."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ticket", "edge_daemon", "server", "ticket_cli", "loopback", "flower_wire", "hub")
APPS = {"edge_daemon", "server", "ticket_cli", "loopback", "flower_wire", "hub"}

# package -> top-level modules it must never import. Every package imports the core; the
# device and the server never import each other; the ML engineer's command and the dev harness
# drive the device through its `edge-daemon` command only.
FORBIDDEN = {
    "ticket": APPS
    | {
        "flwr",
        "psutil",
        "yaml",
        "socket",
        "socketserver",
        "http",
        "urllib",
        "requests",
        "pickle",
    },
    "edge_daemon": {"server", "ticket_cli", "loopback", "pickle"},
    "server": {"edge_daemon", "ticket_cli", "loopback", "pickle"},
    "ticket_cli": {"edge_daemon", "loopback", "pickle"},
    "loopback": {"edge_daemon", "pickle"},
    # ticket.wire records <-> Flower records, shared by the device and the server: it may
    # import only the core and flwr.
    "flower_wire": {"edge_daemon", "server", "ticket_cli", "loopback", "pickle"},
    # The hub (cards, the served index) builds on the core and the registry of ticket_cli.
    "hub": {"edge_daemon", "server", "loopback", "flower_wire", "pickle"},
}
# package -> (package it may reach only through, that package's one interface module)
ONLY_THROUGH = {
    "ticket_cli": ("server", "server.api"),
    "hub": ("ticket_cli", "ticket_cli.registry"),
}


ENVIRONMENT_NAMES = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}
DYNAMIC_IMPORTERS = {"import_module", "__import__"}


def _imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, top-level module) of every import: statements, relative ones resolved, and
    `importlib.import_module` / `__import__` calls naming a module by a string literal."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = path.relative_to(root).parent.parts  # ticket/data/heart.py -> (ticket, data)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found += [(node.lineno, module) for module in _from_targets(node, package)]
        elif isinstance(node, ast.Call) and (module := _dynamic_target(node)) is not None:
            found.append((node.lineno, module))
    return found


def _absolute_imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every absolute import; `from a import b` counts as `a.b`,
    because b may be a submodule."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def _from_targets(node: ast.ImportFrom, package: tuple[str, ...]) -> list[str]:
    if node.level == 0:
        return [str(node.module).split(".")[0]]
    # `from .` is the file's own package; each further dot climbs one package up.
    climb = node.level - 1
    if climb < len(package):
        return [package[0]]  # still inside the file's own top-level package
    # Climbed out of every package: what follows names top-level modules.
    if node.module:
        return [node.module.split(".")[0]]
    return [alias.name.split(".")[0] for alias in node.names]


def _dynamic_target(node: ast.Call) -> str | None:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in DYNAMIC_IMPORTERS or not node.args:
        return None
    first = node.args[0]
    if not isinstance(first, ast.Constant) or not isinstance(first.value, str):
        return None
    # A relative name resolves against a `package=` argument: only absolute ones are checked.
    return None if first.value.startswith(".") else first.value.split(".")[0]


def _reads_environment(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return sorted(node.lineno for node in ast.walk(tree) if _is_environment_read(node))


def _is_environment_read(node: ast.AST) -> bool:
    if isinstance(node, ast.Attribute):
        return node.attr in ENVIRONMENT_NAMES  # os.environ, os.getenv(...)
    return (  # from os import environ / getenv / *
        isinstance(node, ast.ImportFrom)
        and node.level == 0
        and node.module == "os"
        and any(alias.name in ENVIRONMENT_NAMES | {"*"} for alias in node.names)
    )


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


@pytest.mark.parametrize("package", sorted(ONLY_THROUGH))
def test_package_reaches_another_only_through_its_interface(package: str) -> None:
    other, interface = ONLY_THROUGH[package]
    violations = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in _sources(package)
        for line, module in _absolute_imports(path)
        if module.split(".")[0] == other
        and module != interface
        and not module.startswith(interface + ".")
    ]
    assert violations == []


def test_the_interface_walker_sees_submodules(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import server.fleet\nfrom server import config\nfrom server.api import X\n")

    assert _absolute_imports(probe) == [
        (1, "server.fleet"),
        (2, "server.config"),
        (3, "server.api.X"),
    ]


def test_deploy_holds_artefacts_only() -> None:
    # deploy/ is what an operator copies onto a machine: units and example configs, no code.
    assert sorted((ROOT / "deploy").rglob("*.py")) == []
    assert (ROOT / "deploy" / "systemd" / "edge-daemon.service").is_file()


def test_core_never_reads_the_environment() -> None:
    violations = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in _sources("ticket")
        for line in _reads_environment(path)
    ]
    assert violations == []


def test_the_walker_sees_real_imports(tmp_path: Path) -> None:
    # Guard against a walker that silently finds nothing: every way of importing is seen.
    probe = tmp_path / "ticket" / "sub" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text(
        "\n".join(
            [
                "import flwr.app",  # 1
                "from server.cli import main",  # 2
                "import os",  # 3
                "os.environ['X']",  # 4
                "from os import getenv as read",  # 5
                "from os import path",  # 6: not the environment
                "from . import masks",  # 7: ticket.sub.masks
                "from .. import codec",  # 8: ticket.codec
                "from ...ticket_cli import cli",  # 9: climbs out of ticket
                "from ... import edge_daemon",  # 10: climbs out of ticket
                "import importlib",  # 11
                "importlib.import_module('yaml.loader')",  # 12
                "__import__('pickle')",  # 13
                "importlib.import_module('.x', package='ticket')",  # 14: relative, skipped
            ]
        )
        + "\n"
    )

    found = _imports(probe, root=tmp_path)

    assert sorted(found) == [
        (1, "flwr"),
        (2, "server"),
        (3, "os"),
        (5, "os"),
        (6, "os"),
        (7, "ticket"),
        (8, "ticket"),
        (9, "ticket_cli"),
        (10, "edge_daemon"),
        (11, "importlib"),
        (12, "yaml"),
        (13, "pickle"),
    ]
    assert {module for _, module in found} & FORBIDDEN["ticket"] == {
        "flwr",
        "server",
        "ticket_cli",
        "edge_daemon",
        "yaml",
        "pickle",
    }
    assert _reads_environment(probe) == [4, 5]
    assert len(_sources("ticket")) > 5
    # The real tree is walked too: the core imports its own modules, by name.
    assert any(module == "ticket" for _, module in _imports(ROOT / "ticket" / "bundle.py"))
