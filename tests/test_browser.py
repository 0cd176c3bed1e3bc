"""The HTML pages the product writes, opened in a real browser (Debian's headless ``chromium``).

Each page is loaded from its folder, as a person opens it (the documentation site's pages too, built
from ``docs/`` into a temporary folder); a probe copy of the page (beside it,
so relative paths resolve) reports after the load event how many ``<img>`` there are, which did
not load, and how many tables; the browser's console must stay silent. A screenshot of each page
is kept in ``$FEDPRIV_SCREENSHOTS`` (default ``browser-screenshots/`` at the repository root) for a
person to look at. Without ``chromium`` the tests skip, unless ``FEDPRIV_REQUIRE_BROWSER=1`` (set
by ``.ci/run``, which installs it) makes them fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from fedpriv.cli import main as cli_main
from tests.test_own_data import test_index_html_summarises_the_run as write_run_folder

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
PROBE = """<script>window.addEventListener("load", () => {
  const broken = [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute("src"));
  const out = document.createElement("pre");
  out.id = "fedpriv-probe";
  out.textContent = JSON.stringify({images: document.images.length, broken: broken,
                                    tables: document.querySelectorAll("table").length});
  document.body.appendChild(out);
});</script>"""
_PROBE_OUT = re.compile(r'<pre id="fedpriv-probe">(.*?)</pre>', re.S)


def _chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("FEDPRIV_REQUIRE_BROWSER") == "1":
            pytest.fail("FEDPRIV_REQUIRE_BROWSER=1 but chromium is not installed (apt-get install -y chromium)")
        pytest.skip("Debian's chromium is not installed here (apt-get install -y chromium)")
    return found


def _screenshots() -> Path:
    folder = Path(os.environ.get("FEDPRIV_SCREENSHOTS", ROOT / "browser-screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_in_browser(page: Path, name: str, profile: Path) -> dict[str, object]:
    """Load ``page`` headless; returns the probe's counts, the console lines and the screenshot's path."""
    browser = _chromium()
    probe = page.with_name(f".probe-{page.name}")
    text = page.read_text()
    assert "</body>" in text, f"{page} has no </body>"
    probe.write_text(text.replace("</body>", PROBE + "</body>", 1))
    try:
        loaded = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                                 "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                                capture_output=True, text=True, timeout=120, check=True)
    finally:
        probe.unlink()
    found = _PROBE_OUT.search(loaded.stdout)
    assert found, f"the probe did not run in {page} (no load event?)"
    shot = _screenshots() / f"{name}.png"
    subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1200,2400",
                    page.as_uri()], capture_output=True, timeout=120, check=True)
    console = [line for line in loaded.stderr.splitlines() if ":CONSOLE" in line]
    return {**json.loads(found.group(1)), "console": console, "screenshot": shot}


def _assert_page_works(result: dict[str, object], tables: int) -> None:
    assert result["images"], "the page shows no image"
    assert result["broken"] == [], f"images that did not load: {result['broken']}"
    assert int(result["tables"]) >= tables  # type: ignore[call-overload]
    assert result["console"] == [], f"console messages: {result['console']}"
    assert Image.open(result["screenshot"]).getbbox() is not None  # type: ignore[arg-type]


def test_a_pages_broken_image_and_console_error_are_caught(tmp_path: Path) -> None:
    (tmp_path / "page.html").write_text('<html><body><img src="missing.png"><script>undefinedFunction();</script>'
                                        "</body></html>")
    result = open_in_browser(tmp_path / "page.html", "probe-self-check", tmp_path / "profile")
    assert result["broken"] == ["missing.png"] and result["tables"] == 0
    assert any("undefinedFunction" in line for line in result["console"])  # type: ignore[union-attr]


def test_a_run_folders_index_html_loads_its_images_and_tables(tmp_path: Path) -> None:
    write_run_folder(tmp_path / "run")
    result = open_in_browser(tmp_path / "run" / "index.html", "run-index", tmp_path / "profile")
    _assert_page_works(result, tables=2)


def test_a_reports_gallery_html_loads_every_grid(tmp_path: Path) -> None:
    write_run_folder(tmp_path / "run")
    assert cli_main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "report")]) == 0
    result = open_in_browser(tmp_path / "report" / "gallery.html", "report-gallery", tmp_path / "profile")
    _assert_page_works(result, tables=0)
    grids = list((tmp_path / "run" / "reconstructions").glob("*.png"))
    assert result["images"] == len(grids) > 0


def test_the_docs_front_page_loads_its_images_and_tables(built_site: Path, tmp_path: Path) -> None:
    result = open_in_browser(built_site / "index.html", "docs-index", tmp_path / "profile")
    _assert_page_works(result, tables=1)


def test_a_docs_reference_page_shows_its_tables(built_site: Path, tmp_path: Path) -> None:
    result = open_in_browser(built_site / "plugins.html", "docs-plugins", tmp_path / "profile")
    assert result["broken"] == [] and result["console"] == [], result
    assert int(result["tables"]) >= 5  # type: ignore[call-overload]  # protocols, defenses, attacks, models, data sets
