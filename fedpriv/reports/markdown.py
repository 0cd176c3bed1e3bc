"""Text from run folders (run names, paths, data set names) made inert in ``report.md``."""

from __future__ import annotations

import html
import re

# Characters that start Markdown links, images, code and emphasis, or end a table cell.
MARKDOWN_SPECIALS = re.compile(r"([\\`*\[\]|])")


def markdown_text(value: object) -> str:
    """``value`` as literal Markdown text: HTML escaped (no tag runs in a viewer) and Markdown escaped.

    A run named ``<img src=x onerror=alert(1)>`` shows as that text, and a ``|`` does not split a
    table cell.
    """
    text = html.escape(str(value), quote=True).replace("\n", " ")
    return MARKDOWN_SPECIALS.sub(r"\\\1", text)
