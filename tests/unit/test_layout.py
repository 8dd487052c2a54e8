"""The layout rule: ``spine`` is one namespace package in five parts; stdlib ``platform`` wins."""

from __future__ import annotations

import importlib
import sysconfig
from pathlib import Path

import spine

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("platform", "events", "graph", "tools", "agents")


def test_stdlib_platform_is_not_shadowed() -> None:
    import platform

    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    assert Path(platform.__file__).resolve().parent == stdlib
    assert platform.python_version()


def test_spine_is_a_namespace_package_with_all_five_parts() -> None:
    paths = {Path(p).resolve() for p in spine.__path__}
    assert paths == {ROOT / part / "spine" for part in PARTS}
    for part in PARTS:
        assert importlib.import_module(f"spine.{part}").__file__


def test_no_init_file_hides_the_other_parts() -> None:
    for part in PARTS:
        assert not (ROOT / part / "__init__.py").exists()
        assert not (ROOT / part / "spine" / "__init__.py").exists()
