"""The facade only re-exports: every name of `aiki` is its home package's own object.

Read from the source of `aiki/__init__.py`: its body is a docstring, imports and
`__all__`, nothing else, and the package has no module besides `__about__`.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import aiki
import aiki_core

SOURCE = Path(aiki.__file__).parent
BODY = ast.parse((SOURCE / "__init__.py").read_text()).body
IMPORTED = {
    alias.asname or alias.name: node.module
    for node in BODY
    if isinstance(node, ast.ImportFrom) and node.module and node.module != "__future__"
    for alias in node.names
}


def test_the_package_holds_no_module_of_its_own() -> None:
    files = sorted(path.name for path in SOURCE.iterdir() if path.name != "__pycache__")
    assert files == ["__about__.py", "__init__.py", "py.typed"]


def test_the_module_is_a_docstring_imports_and_all() -> None:
    docstring, *rest = BODY
    assert isinstance(docstring, ast.Expr)
    assert isinstance(docstring.value, ast.Constant)
    assert isinstance(docstring.value.value, str)
    *imports, last = rest
    assert all(isinstance(node, ast.ImportFrom) for node in imports)
    assert isinstance(last, ast.Assign)
    assert [target.id for target in last.targets if isinstance(target, ast.Name)] == ["__all__"]


def test_all_is_exactly_the_imported_names_sorted() -> None:
    assert list(aiki.__all__) == sorted(IMPORTED)


@pytest.mark.parametrize("name", sorted(IMPORTED))
def test_each_name_is_its_home_package_object(name: str) -> None:
    home = importlib.import_module(IMPORTED[name])
    assert getattr(aiki, name) is getattr(home, name)
    if IMPORTED[name] != "aiki.__about__":
        # a library package's public name, not one of its private modules'
        assert name in home.__all__


def test_the_errors_are_the_whole_public_error_tree() -> None:
    errors = {
        name
        for name in aiki_core.__all__
        if isinstance(getattr(aiki_core, name), type)
        and issubclass(getattr(aiki_core, name), aiki_core.AikiError)
    }
    assert errors <= set(aiki.__all__), f"errors missing from aiki: {errors - set(aiki.__all__)}"
