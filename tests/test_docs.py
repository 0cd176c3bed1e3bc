"""The documentation site: it builds with warnings as errors, a broken link fails it, and its
generated pages (plugins, command line) equal what the code generates today."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from fedpriv import cli_reference, plugin_reference
from fedpriv.defenses.base import DEFENSES
from tests.conftest import ROOT, build_site


def test_the_site_builds_with_warnings_as_errors(built_site: Path) -> None:
    for page in ("index.html", "plugins.html", "configuration.html", "reference/cli.html", "api/options.html",
                 "reproductions/gao-2021-ats.html"):
        assert (built_site / page).is_file(), page
    api = (built_site / "api" / "attacks.html").read_text()
    assert "attacks.base.Knowledge" in api and ":class:`" not in api  # rendered, roles rewritten


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    for name in ("docs", "tools"):
        shutil.copytree(ROOT / name, tmp_path / name)
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    (tmp_path / "fedpriv").symlink_to(ROOT / "fedpriv")  # the API pages read the package beside mkdocs.yml
    with (tmp_path / "docs" / "how-to" / "resume.md").open("a") as page:
        page.write("\nSee also [the old page](no-such-page.md).\n")
    built = build_site(tmp_path / "mkdocs.yml", tmp_path / "site")
    log = built.stdout + built.stderr
    assert built.returncode != 0, log
    assert "contains a link 'no-such-page.md'" in log and "Aborted with 1 warnings in strict mode" in log


@pytest.mark.parametrize(("page", "render", "command"), [
    ("plugins.md", plugin_reference.render, plugin_reference.COMMAND),
    ("reference/cli.md", cli_reference.render, cli_reference.COMMAND),
])
def test_the_generated_pages_are_current(page: str, render: object, command: str) -> None:
    assert (ROOT / "docs" / page).read_text() == render(), f"run: {command}"  # type: ignore[operator]


def test_every_defense_factory_names_the_class_it_builds() -> None:
    kinds = {name: plugin_reference.defense_class(name).acts_on for name in DEFENSES.names()}
    assert kinds["ats"] == "inputs" and kinds["truncate"] == "predictions" and kinds["quantize"] == "updates"
    assert kinds["complex"] == "features" and kinds["none"] == "nothing"


@pytest.mark.parametrize("name", ["README.md", "REPRODUCING.md"])
def test_the_top_level_pages_link_to_files_of_the_repository(name: str) -> None:
    """README and REPRODUCING point into docs/ (not built by mkdocs, so checked here); nothing outside the repo."""
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", (ROOT / name).read_text())
    assert targets
    assert [t for t in targets if not (ROOT / t).is_file() or ".." in Path(t).parts] == []
