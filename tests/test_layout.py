"""The package layout is a rule the code keeps, not a README promise: the shipped model folder holds the four
remote-code files and nothing the tooling adds; the model never imports the tooling; functions stay short (Triton
kernels aside); the tooling's user errors come from one family; recipes are package data."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "mosaic_bert"
SHIPPED = {"configuration_bert.py", "modeling_bert.py", "bert_padding.py", "flash_attn_triton.py"}
MAX_FUNCTION_LINES = 60


def python_files(*folders):
    for folder in folders:
        yield from sorted((ROOT / folder).rglob("*.py"))


def is_kernel(fn: ast.FunctionDef) -> bool:
    """A Triton kernel (`@triton.jit`, possibly under `@triton.autotune`): exempt from the length rule."""
    return any("jit" in ast.unparse(d) or "autotune" in ast.unparse(d) for d in fn.decorator_list)


def long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not is_kernel(node):
            n = node.end_lineno - node.lineno + 1
            if n > MAX_FUNCTION_LINES:
                where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                out.append(f"{where}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_model_folder_holds_the_four_shipped_files_only():
    present = {p.name for p in (PKG / "modeling").iterdir() if p.suffix == ".py"}
    assert present == SHIPPED | {"__init__.py"}, present


def test_model_never_imports_the_tooling():
    for path in (PKG / "modeling").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                assert node.level == 1, f"{path.name} imports outside the model folder: {ast.unparse(node)}"
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert not node.module.startswith("mosaic_bert"), f"{path.name}: {ast.unparse(node)}"


def test_no_function_over_sixty_lines():
    offenders = [o for p in python_files("mosaic_bert", "scripts", "benchmarks") for o in long_functions(p)]
    assert not offenders, "split these functions:\n" + "\n".join(offenders)


def test_length_rule_can_fail(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    src = tmp_path / "long.py"
    src.write_text(f"def short():\n    return 1\n\n\ndef f():\n{body}\n\n\n@triton.jit\ndef k():\n{body}\n")
    assert [o.split()[1] for o in long_functions(src)] == ["f"]


def test_tooling_errors_are_one_family():
    from mosaic_bert import errors

    for name in ("RecipeError", "DataError", "ResumeError", "GlueDataError"):
        cls = getattr(errors, name)
        assert issubclass(cls, errors.MosaicBertError) and issubclass(cls, ValueError)
    bare = []
    for path in python_files("mosaic_bert/train", "mosaic_bert/glue"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None:
                call = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                if isinstance(call, ast.Name) and call.id in ("RuntimeError", "Exception"):
                    bare.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bare, f"raise a MosaicBertError subclass that names the fix instead: {bare}"


@pytest.mark.parametrize("name", ["tiny-default", "mosaic-bert-base-uncased", "mosaic-bert-large-uncased",
                                  "hf-bert-base-uncased"])
def test_recipes_ship_inside_the_package(name):
    assert (PKG / "train" / "recipes" / f"{name}.yaml").is_file()
    setup = (ROOT / "setup.py").read_text()
    assert "recipes/*.yaml" in setup
