"""The tree draws the architecture: each folder of hsm_ocsp imports only what its
``__init__`` docstring allows, read from the source with ``ast``."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "hsm_ocsp"
LAYERS = ["core", "config", "store", "pkcs11", "server", "cli"]  # each may import the ones before
THIRD_PARTY = {
    "core": {"asn1crypto", "cryptography"},
    "config": {"cryptography"},
    "store": {"lmdb", "redis"},
    "pkcs11": {"asn1crypto", "cryptography", "pkcs11"},
    "server": {"aiohttp", "prometheus_client", "cryptography", "uvloop", "multidict", "yarl"},
    "cli": {"cryptography", "asn1crypto", "pkcs11"},
}
# Standard-library modules that do I/O or run processes: not in the pure core.
NOT_IN_CORE = {"os", "subprocess", "socket", "shutil", "tempfile", "signal", "pathlib"}
STDLIB = set(__import__("sys").stdlib_module_names)


def _imports(path: Path) -> list[str]:
    """The absolute names a module imports (relative ones resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    here = path.relative_to(PACKAGE.parent).with_suffix("").parts
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(here[: len(here) - node.level])
                module = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:  # from . import x
                    names += [f"{module}.{alias.name}" for alias in node.names]
                    continue
                names.append(module)
            else:
                names.append(node.module or "")
    return names


def _modules() -> list[tuple[str, Path]]:
    return [
        (path.parent.name, path)
        for layer in LAYERS
        for path in sorted((PACKAGE / layer).glob("*.py"))
    ]


def _allowed(layer: str, name: str) -> bool:
    top = name.split(".")[0]
    if top == "hsm_ocsp":
        parts = name.split(".")
        if len(parts) == 1 or parts[1] in ("__version__", "__init__"):
            return True
        return parts[1] in LAYERS[: LAYERS.index(layer) + 1]
    if top in STDLIB or top == "__future__":
        return not (layer == "core" and top in NOT_IN_CORE)
    return top in THIRD_PARTY[layer]


@pytest.mark.parametrize(("layer", "path"), _modules(), ids=lambda v: getattr(v, "name", v))
def test_each_module_imports_only_its_own_and_inner_layers(layer: str, path: Path) -> None:
    wrong = [name for name in _imports(path) if not _allowed(layer, name)]
    assert not wrong, f"{path.relative_to(PACKAGE.parent)} ({layer}) imports {wrong}"


def test_the_token_layer_takes_plain_values_not_the_configuration() -> None:
    """hsm_ocsp/pkcs11 is handed module paths, PINs, key specs and numbers: it imports
    nothing of hsm_ocsp/config (server/key_set.py turns a configuration into key specs)."""
    found = {
        str(path.relative_to(PACKAGE)): [
            n for n in _imports(path) if n.startswith("hsm_ocsp.config")
        ]
        for _, path in _modules()
        if path.parent.name == "pkcs11"
    }
    assert not {k: v for k, v in found.items() if v}
    assert found  # the layer was looked at


def test_the_checker_catches_an_inner_layer_importing_an_outer_one() -> None:
    assert not _allowed("core", "hsm_ocsp.server.app")
    assert not _allowed("core", "aiohttp.web")
    assert not _allowed("core", "pkcs11")
    assert not _allowed("core", "subprocess")
    assert not _allowed("pkcs11", "hsm_ocsp.server.metrics")
    assert not _allowed("pkcs11", "prometheus_client")
    assert not _allowed("server", "hsm_ocsp.cli.main")
    assert _allowed("server", "hsm_ocsp.pkcs11.token")
    assert _allowed("cli", "hsm_ocsp.server.supervisor")


def test_no_module_is_left_outside_a_layer() -> None:
    """(A module of over about 400 lines is worth a look in review: said, not failed.)"""
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py"], loose
    for _, path in _modules():
        if (lines := len(path.read_text().splitlines())) > REVIEW_LINES:
            warnings.warn(
                f"{path.relative_to(PACKAGE)}: {lines} lines; one job still?", stacklevel=1
            )


REVIEW_LINES = 400
MAX_COMPLEXITY = 10
_BRANCHES = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.ExceptHandler, ast.IfExp, ast.match_case)


def complexity(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """McCabe's number, as ruff's C901 counts it (each if, elif, loop, except handler and
    nested function), plus what it leaves out: each boolean operator (``a and b or c``
    is two), each conditional expression and each ``if`` of a comprehension."""
    count = 1
    stack = list(ast.iter_child_nodes(function))
    while stack:
        node = stack.pop()
        if isinstance(node, (*_BRANCHES, ast.FunctionDef, ast.AsyncFunctionDef)):
            count += 1
        elif isinstance(node, ast.BoolOp):
            count += len(node.values) - 1
        elif isinstance(node, ast.comprehension):
            count += len(node.ifs)
        stack.extend(ast.iter_child_nodes(node))
    return count


def test_no_function_is_too_complex_counting_boolean_operators() -> None:
    found = {
        f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}": number
        for _, path in _modules()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (number := complexity(node)) > MAX_COMPLEXITY
    }
    assert not found, found


def test_the_complexity_counts_what_it_says() -> None:
    def number(source: str) -> int:
        node = ast.parse(source).body[0]
        assert isinstance(node, ast.FunctionDef)
        return complexity(node)

    assert number("def f():\n    return 1") == 1
    assert number("def f(a, b, c):\n    return a and b or c") == 3
    assert number("def f(a):\n    if a:\n        pass\n    elif a > 1:\n        pass") == 3
    assert number("def f(a):\n    return [x for x in a if x if x > 1] or (1 if a else 2)") == 5
    assert number("def f(a):\n    try:\n        pass\n    except E:\n        pass") == 2
