"""The package's layers: each imports only the layers before it, and no module imports itself back."""

import ast
import pathlib

import bitkeras

PACKAGE = pathlib.Path(bitkeras.__file__).parent

LAYERS = ("models", "io", "finetuning", "jobs")
"""Bottom to top; `data` and the top-level helpers (files, checks) sit beside them."""

ALLOWED = {
    "models": set(),
    "data": set(),
    "io": {"models", "data"},
    "finetuning": {"models", "data", "io"},
    "jobs": {"models", "data", "io", "finetuning"},
}


def _imports(path):
    """The bitkeras modules a file imports, anywhere in it (functions included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "bitkeras":
                names.update(f"bitkeras.{alias.name}" for alias in node.names)
            elif node.module.startswith("bitkeras."):
                names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("bitkeras."))
    return names


def _module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_each_layer_imports_only_the_layers_below_it():
    offending = []
    for package, allowed in ALLOWED.items():
        for path in sorted((PACKAGE / package).glob("*.py")):
            for name in _imports(path):
                layer = name.split(".")[1]
                if layer in ALLOWED and layer != package and layer not in allowed:
                    offending.append(f"{_module_name(path)} imports {name}")
    assert offending == []


def test_no_module_imports_its_importers():
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {name: {i for i in _imports(path) if i in modules} for name, path in modules.items()}

    def reaches(start, target, seen):
        for name in graph.get(start, ()):
            if name == target or (name not in seen and reaches(name, target, seen | {name})):
                return True
        return False

    packages = {name for name, path in modules.items() if path.name == "__init__.py"}
    cycles = [name for name in modules if name not in packages and reaches(name, name, set())]
    assert cycles == []
