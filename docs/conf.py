"""Sphinx configuration of the uenn-geo documentation (API reference and the markdown pages).

Build (from the repository root, after ``pip install -e ".[docs]"``)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import uenn_geo  # noqa: E402

project = "uenn-geo"
author = "uenn-geo contributors"
copyright = "uenn-geo contributors, MIT licence"
version = release = uenn_geo.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# docs/README.md says how to build this site; it is not a page of it.
exclude_patterns = ["_build", "README.md", "**/README.md"]

# Docstrings: Google style (PyG, e3nn), with the ``Args:`` / ``Returns:`` sections of napoleon.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True

# One page per package (``automodule`` with the package's ``__all__``), so that moving code
# between files inside a package changes nothing here.
autodoc_default_options = {
    "members": True,
    "undoc-members": False,
    "show-inheritance": True,
    "member-order": "bysource",
}
autodoc_typehints = "description"
autodoc_class_signature = "mixed"
autodoc_inherit_docstrings = False
# Docstrings cross-reference torch, numpy, ASE and PyG objects that this site does not hold;
# unresolved Python references are not warnings (the default, stated here on purpose).
nitpicky = False

# Markdown pages: $...$ and $$...$$ maths, heading anchors for links such as ``#the-layer``.
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

html_theme = "alabaster"
html_title = f"uenn-geo {release}"
html_static_path = []
