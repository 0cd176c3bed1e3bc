"""A griffe extension for the documentation site: reStructuredText roles in docstrings become code.

The package's NumPy docstrings use Sphinx roles (``:class:`~fedpriv.registry.Registry```,
``:func:`option```), which Markdown would print as they are. mkdocstrings-python loads this file
(``extensions`` in mkdocs.yml) and rewrites each role to a code span of its target (the last
component for a ``~`` target), before the docstring is parsed.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|obj|exc|const):`(~?)([^`]+)`")


def plain(text: str) -> str:
    """``text`` with every role replaced by a Markdown code span."""
    return ROLE.sub(lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", text)


class RstRoles(griffe.Extension):
    """Rewrite the roles of every object's docstring as it is loaded."""

    def on_instance(self, *, node: Any, obj: griffe.Object, agent: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain(obj.docstring.value)
