"""The files the worker and the CLI read besides code: the bundled views file and its examples
(``schemas/``) and the connector configs (``connectors/``).

They live at the repository's top level, where their users look for them. The wheel carries
them inside the package (``app/_bundled/schemas``, ``app/_bundled/connectors``: see
``[tool.setuptools.package-dir]`` in ``pyproject.toml``), so an installed worker needs no
checkout; from a checkout (or an editable install) they are read where they are.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Literal

Kind = Literal["schemas", "connectors"]


def bundled(kind: Kind) -> Traversable:
    """The directory of ``kind``: inside the installed package, else the checkout's."""
    packaged = files("app") / "_bundled" / kind
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parent.parent / kind
    if not checkout.is_dir():
        raise FileNotFoundError(
            f"viewsync's {kind}/ is neither in the installed package ({packaged}) nor in a "
            f"checkout ({checkout}): reinstall viewsync")
    return checkout
