"""The plugin API is documented: every hook in docs/plugins.md, every shipped plugin packaged."""

from __future__ import annotations

import inspect
import re
import tomllib
from pathlib import Path

import pytest

from jobd import hookspecs

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "plugins.md"
PLUGINS = sorted(path for path in (ROOT / "plugins").iterdir() if path.is_dir())
HOOKS = sorted(
    name for name, value in vars(hookspecs).items() if name.startswith("jobd_") and callable(value)
)


def test_there_are_hooks_and_plugins_to_check() -> None:
    assert {"jobd_handlers", "jobd_configure", "jobd_lifespan"} <= set(HOOKS)
    assert {"jobd-shell", "jobd-http", "jobd-email", "jobd-example"} <= {path.name for path in PLUGINS}


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hookspec_has_a_docstring(hook: str) -> None:
    assert inspect.getdoc(getattr(hookspecs, hook)), f"{hook} has no docstring in jobd/hookspecs.py"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hookspec_is_a_heading_in_the_guide(hook: str) -> None:
    headings = re.findall(r"^#{1,6} (.+)$", GUIDE.read_text(), flags=re.MULTILINE)
    found = any(re.search(rf"\b{hook}\b", heading) for heading in headings)
    assert found, f"no heading for {hook} in {GUIDE}"


@pytest.mark.parametrize("plugin", PLUGINS, ids=lambda path: path.name)
def test_every_shipped_plugin_has_a_readme_and_a_jobd_entry_point(plugin: Path) -> None:
    readme = plugin / "README.md"
    assert readme.is_file() and readme.read_text().strip(), f"{plugin.name} has no README.md"
    project = tomllib.loads((plugin / "pyproject.toml").read_text())
    entry_points = project["project"].get("entry-points", {}).get("jobd", {})
    assert len(entry_points) == 1, f"{plugin.name} must declare one entry point in the group 'jobd'"
    [(name, module)] = entry_points.items()
    package = plugin / "src" / module / "__init__.py"
    assert package.is_file(), f"{plugin.name}: entry point {name} names {module}, not found in src/"
    assert "jobd" in " ".join(project["project"]["dependencies"])
    assert list((plugin / "tests").glob("test_*.py")), f"{plugin.name} has no tests"


@pytest.mark.parametrize("plugin", PLUGINS, ids=lambda path: path.name)
def test_every_shipped_plugin_is_in_the_guide(plugin: Path) -> None:
    assert f"`{plugin.name}`" in GUIDE.read_text()
