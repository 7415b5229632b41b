"""The package's import graph: no cycles (module-level imports; TYPE_CHECKING-only imports are
annotations), no imports hidden inside functions in the driver model, and the layer rules of
docs/DESIGN.md that the code relies on."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "virtio_msix"


def _module(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> list[str]:
    if node.level:
        base = mod.split(".") if is_pkg else mod.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    names = [f"{target}.{a.name}" for a in node.names]
    return [target, *names]


def _type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in SRC.rglob("*.py")}
    g: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        tree = ast.parse(path.read_text())
        body = [n for n in tree.body if not (isinstance(n, ast.If) and _type_checking(n))]
        for node in body:
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                targets = _resolve(mod, path.name == "__init__.py", node)
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            g[mod] |= {t for t in targets if t in files and t != mod}
    return g


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(g[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n) :] + [n]
                raise AssertionError("import cycle: " + " → ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)


def test_driver_model_has_no_imports_inside_functions():
    for path in (SRC / "guest").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                inner = [n for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom)]
                assert not inner, f"{path.name}:{node.lineno} {node.name} imports inside"


def test_layer_rules():
    g = graph()

    def reach(m: str) -> set[str]:
        seen, todo = set(), [m]
        while todo:
            for n in g[todo.pop()]:
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        return seen

    for m in g:
        deps = g[m]
        if m.startswith("virtio_msix.pci."):
            assert all(d.startswith(("virtio_msix.pci", "virtio_msix.trace", "virtio_msix.abi"))
                       for d in deps), (m, deps)  # fmt: skip
        if m.startswith("virtio_msix.virtio."):
            assert not any(d.startswith(("virtio_msix.host", "virtio_msix.guest",
                                         "virtio_msix.uml", "virtio_msix.qemu"))
                           for d in deps), (m, deps)  # fmt: skip
        if m.startswith("virtio_msix.abi"):
            assert all(d.startswith("virtio_msix.abi") for d in deps), (m, deps)
        if m.startswith("virtio_msix.uml."):
            assert "virtio_msix.qemu.debian" not in deps, m
    assert "virtio_msix.devcli" not in reach("virtio_msix.guest.sim")
