"""A griffe extension for the API reference: Sphinx roles in docstrings become code.

The docstrings are prose written for ``help()`` and Sphinx alike: ``:class:`Backend```,
``:func:`maintguard.sync.get_state```. Markdown would show the role's name as text; this
keeps only the target, as inline code.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|meth|func|attr|mod|exc|data|obj):`~?([^`]+)`")


class SphinxRoles(griffe.Extension):
    """Rewrite ``:role:`target``` as ```target``` in every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(r"`\1`", obj.docstring.value)
