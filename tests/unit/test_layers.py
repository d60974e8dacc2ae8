"""The package's layers, read from the source: imports run down the layers, never up.

Layers, top first (docs/architecture.md draws the same picture):

    cli -> agent, signer -> ops -> plan -> config -> vault, store, hsm, dev, serve, crypto -> catalog, errors, ...

A module may import its own package and any lower layer. Private names (a leading underscore) are
never used from another module. plan/ does no I/O: it imports none of vault, store, hsm, dev,
serve. hvac is imported only in vault/, pkcs11 only in hsm/, the
`kubernetes` client only in signer/kube.py; dev/ (the embedded OpenBao and its SoftHSM token for
demos) is the one declared exception for hvac and pkcs11.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "vaultk8s"

# Top first. Everything in one tuple is one layer; a name is a subpackage or a top-level module.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli", "__main__"),
    ("agent", "signer"),
    ("ops",),
    ("plan",),
    ("config",),
    ("vault", "store", "hsm", "dev", "serve", "crypto"),
    ("catalog", "errors", "crashpoint", "durations", "hostnames", "keytypes", "__init__"),
)
RANK = {name: rank for rank, layer in enumerate(LAYERS) for name in layer}

# Third-party modules only one place may import (a prefix of the module path under vaultk8s/).
CONFINED = {
    "hvac": ("vault/", "dev/"),
    "pkcs11": ("hsm/", "dev/"),
    "kubernetes": ("signer/kube.py",),
}


@dataclass(frozen=True)
class Import:
    source: str  # path under vaultk8s/
    line: int
    module: str  # absolute dotted module
    names: tuple[str, ...]  # names taken with `from module import ...`


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _rel(path: Path) -> str:
    return str(path.relative_to(PACKAGE))


def _dotted(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(), str(path))
    here = _dotted(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(_rel(path), node.lineno, a.name, ()) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            names = tuple(a.name for a in node.names)
            found.append(Import(_rel(path), node.lineno, module, names))
            if module == "vaultk8s" or (node.level and not node.module):
                # `from vaultk8s import catalog`: each name is a module of its own
                found += [Import(_rel(path), node.lineno, f"{module}.{n}", ()) for n in names
                          if _is_module(f"{module}.{n}")]
    return found


def _is_module(dotted: str) -> bool:
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def _unit(dotted: str) -> str | None:
    """The layer unit of a vaultk8s module: its subpackage or top-level module name."""
    parts = dotted.split(".")
    if parts[0] != "vaultk8s":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


ALL_IMPORTS = [imp for path in _modules() for imp in _imports(path)]


def test_every_unit_has_a_layer() -> None:
    units = {_unit(_dotted(p)) for p in _modules()}
    assert units - set(RANK) == set(), "add these to LAYERS (and to docs/architecture.md)"


def test_imports_run_down_the_layers() -> None:
    upward = []
    for imp in ALL_IMPORTS:
        source, target = _unit(_dotted(PACKAGE / imp.source)), _unit(imp.module)
        if target is None or target == source or (imp.module == "vaultk8s" and imp.names):
            continue
        if RANK[target] < RANK[source]:
            upward.append(f"{imp.source}:{imp.line} imports {imp.module} ({target} is above {source})")
    assert not upward, "\n".join(upward)


# Planning is pure: it may use crypto (parsing, comparing) but no module that does I/O.
IO_UNITS = ("vault", "store", "hsm", "dev", "serve")


def test_plan_does_no_io() -> None:
    impure = [f"{imp.source}:{imp.line} imports {imp.module}" for imp in ALL_IMPORTS
              if imp.source.startswith("plan/") and _unit(imp.module) in IO_UNITS]
    assert not impure, "\n".join(impure)


def test_no_private_name_crosses_modules() -> None:
    crossing = []
    for imp in ALL_IMPORTS:
        if not imp.module.startswith("vaultk8s"):
            continue
        crossing += [f"{imp.source}:{imp.line} imports {n} from {imp.module}" for n in imp.names
                     if n.startswith("_") and not n.startswith("__")]
    crossing += _private_attribute_uses()
    assert not crossing, "\n".join(crossing)


def _private_attribute_uses() -> list[str]:
    """`module._name` where `module` was imported from vaultk8s in this file."""
    found = []
    for path in _modules():
        tree = ast.parse(path.read_text(), str(path))
        aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vaultk8s"):
                aliases |= {a.asname or a.name for a in node.names}
            elif isinstance(node, ast.Import):
                aliases |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith("vaultk8s")}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                found.append(f"{_rel(path)}:{node.lineno} uses {node.value.id}.{node.attr}")
    return found


def test_no_class_overrides_a_private_method_of_another_module() -> None:
    """A subclass in one module overriding `_name` of a base class defined in another."""
    defined: dict[str, tuple[str, set[str]]] = {}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                methods = {f.name for f in node.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
                defined.setdefault(node.name, (_rel(path), methods))
    overrides = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            for base in node.bases:
                name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", None)
                if name not in defined or defined[name][0] == _rel(path):
                    continue
                mine = {f.name for f in node.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
                overrides += [f"{_rel(path)}: {node.name}.{m} overrides {name}.{m} of {defined[name][0]}"
                              for m in sorted(mine & defined[name][1]) if m.startswith("_") and not m.startswith("__")]
    assert not overrides, "\n".join(overrides)


@pytest.mark.parametrize("library", sorted(CONFINED))
def test_confined_libraries(library: str) -> None:
    allowed = CONFINED[library]
    outside = [f"{imp.source}:{imp.line} imports {imp.module}" for imp in ALL_IMPORTS
               if imp.module.split(".")[0] == library and not imp.source.startswith(allowed)]
    assert not outside, "\n".join(outside)


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    """The parser resolves relative and package imports, so the checks above are not vacuous."""
    sample = PACKAGE / "plan" / "leaves.py"
    modules = {imp.module for imp in _imports(sample)}
    assert "vaultk8s.crypto" in modules
    assert RANK["cli"] < RANK["plan"] < RANK["catalog"]
