"""docs/architecture.md's one-way flow, checked on the sources: fp8train reaches the kernels only through the
`kernels` package's public names, and kernels never import fp8train."""
import ast
from pathlib import Path

import kernels

REPO = Path(__file__).resolve().parents[2]


def imports(package):
    """(file, module, names) of every import statement in the package's sources, functions' bodies included."""
    for path in sorted((REPO / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                yield path.relative_to(REPO), node.module, [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    yield path.relative_to(REPO), alias.name, []


def test_fp8train_uses_only_the_public_kernels_api():
    found = [(str(path), module, names) for path, module, names in imports("fp8train")
             if module == "kernels" or module.startswith("kernels.")]
    assert found, "fp8train no longer imports kernels at all: this check would pass vacuously"
    for path, module, names in found:
        assert module == "kernels", f"{path} imports {module}: use the names kernels/__init__.py exports"
        assert set(names) <= set(kernels.__all__), f"{path} imports {set(names) - set(kernels.__all__)}"


def test_kernels_do_not_import_fp8train():
    bad = [(str(path), module) for path, module, _ in imports("kernels") if module.split(".")[0] == "fp8train"]
    assert not bad
