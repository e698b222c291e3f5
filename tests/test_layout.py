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


def _is_module(name):
    relative = pathlib.Path(*name.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").is_file() or (PACKAGE / relative).is_dir()


def _imports(source):
    """The bitkeras modules `source` imports, anywhere in it (functions included).

    `from bitkeras.io import checkpoint` imports the module bitkeras.io.checkpoint,
    not only the package: that is the edge a cycle runs through.
    """
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "bitkeras" or node.module.startswith("bitkeras."):
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    names.add(submodule if _is_module(submodule) else node.module)
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
            for name in _imports(path.read_text()):
                layer = name.split(".")[1]
                if layer in ALLOWED and layer != package and layer not in allowed:
                    offending.append(f"{_module_name(path)} imports {name}")
    assert offending == []


def _cycles(sources, packages=()):
    """The modules of `sources` ({module name: source}) that import themselves back.

    `packages`: the names among them that are packages, whose `__init__` may
    gather what is below it without forming a cycle of its own.
    """
    graph = {name: {i for i in _imports(source) if i in sources}
             for name, source in sources.items()}

    def reaches(start, target, seen):
        for name in graph.get(start, ()):
            if name == target or (name not in seen and reaches(name, target, seen | {name})):
                return True
        return False

    return [name for name in sources if name not in packages and reaches(name, name, set())]


def test_no_module_imports_its_importers():
    sources = {_module_name(path): path.read_text() for path in PACKAGE.rglob("*.py")}
    packages = {_module_name(path) for path in PACKAGE.rglob("__init__.py")}
    assert _cycles(sources, packages) == []


def test_a_cycle_through_an_import_inside_a_function_is_found():
    # The form both cycles the package once had took: the module's import of the other
    # waited inside a function, and named the package before the module.
    sources = {
        "bitkeras.io.checkpoint": "def read():\n    from bitkeras.io import torch_layouts\n",
        "bitkeras.io.torch_layouts": "from bitkeras.io.checkpoint import HEAD_PREFIX\n",
        "bitkeras.io.weights": "import bitkeras.files\n",
    }
    assert sorted(_cycles(sources)) == ["bitkeras.io.checkpoint", "bitkeras.io.torch_layouts"]


def _private_uses(source, module):
    """`module`'s uses of another bitkeras module's private names (`other._name`)."""
    tree = ast.parse(source)
    modules, uses = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and (
                node.module == "bitkeras" or node.module.startswith("bitkeras.")):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if _is_module(submodule):
                    modules[alias.asname or alias.name] = submodule
                elif alias.name.startswith("_") and node.module != module:
                    uses.append(f"{module} imports {node.module}.{alias.name}")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.attr.startswith("_") and not node.attr.startswith("__")
                and modules.get(node.value.id, module) != module):
            uses.append(f"{module} uses {modules[node.value.id]}.{node.attr}")
    return uses


def test_no_module_uses_another_modules_private_names():
    uses = [use for path in sorted(PACKAGE.rglob("*.py"))
            for use in _private_uses(path.read_text(), _module_name(path))]
    assert uses == []


def test_a_private_use_across_modules_is_found():
    source = ("from bitkeras.finetuning import sources\n"
              "from bitkeras.data.glyphs import _colours\n"
              "sources._decodes([])\n")
    assert sorted(_private_uses(source, "bitkeras.detection.data")) == [
        "bitkeras.detection.data imports bitkeras.data.glyphs._colours",
        "bitkeras.detection.data uses bitkeras.finetuning.sources._decodes"]


TESTS = pathlib.Path(__file__).parent


def _test_module_imports(source):
    """The test modules (test_*, conftest) that `source` imports."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found.update(name for name in names if name.startswith("tests.")
                     and name.split(".")[1].startswith(("test_", "conftest")))
    return found


def test_no_test_module_imports_another():
    # What tests share lives in tests/helpers; a test module imported by another runs
    # its module-level code twice and ties the two together.
    imports = {path.name: sorted(_test_module_imports(path.read_text()))
               for path in sorted(TESTS.rglob("*.py"))}
    assert {name: found for name, found in imports.items() if found} == {}
    assert _test_module_imports("from tests.conftest import TINY\n"
                                "from tests.test_layers import op_types\n"
                                "from tests.helpers import reference\n") == {
        "tests.conftest", "tests.conftest.TINY", "tests.test_layers",
        "tests.test_layers.op_types"}


PRIVATE_APIS = ("_flatten_layers", "_loss_tracker", "_get_variable_index", "_track_variable",
                "_use_cached_eval_dataset", "_maybe_symbolic_build", "_distribute_strategy",
                "tensorflow.python", "tensorflow.core")
"""Private Keras and TensorFlow names bitkeras has needed: compat.py's, and no other module's."""


def test_private_keras_and_tensorflow_apis_are_used_only_in_compat():
    uses = [f"{_module_name(path)}: {name}" for path in sorted(PACKAGE.rglob("*.py"))
            if path.name != "compat.py" for name in PRIVATE_APIS if name in path.read_text()]
    assert uses == []


def test_the_pins_are_the_versions_compat_was_checked_on():
    from bitkeras import compat

    setup = (PACKAGE.parent / "setup.py").read_text()
    for package, checked in (("keras", compat.KERAS_CHECKED),
                             ("tensorflow", compat.TENSORFLOW_CHECKED)):
        major, minor = checked[-1].split(".")
        low, high = checked[0], f"{major}.{int(minor) + 1}"
        assert f'"{package}>={low},<{high}"' in setup, (package, checked)


def test_the_module_map_names_every_module_and_only_those():
    import re

    readme = (PACKAGE.parent / "docs" / "modules.md").read_text()
    listed = set(re.findall(r"^\| `(bitkeras(?:\.\w+)+)` \|", readme, re.M))
    modules = {_module_name(path) for path in PACKAGE.rglob("*.py")
               if path.stem not in ("__init__", "__main__")}
    assert (sorted(modules - listed), sorted(listed - modules)) == ([], [])
