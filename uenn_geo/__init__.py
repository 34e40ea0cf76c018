"""uenn-geo: feedforward unitary-equivariant neural networks for PyTorch Geometric.

Layers (:mod:`uenn_geo.nn`) act on :obj:`(..., n, M)` tensors of M vectors of
:math:`\\mathbb{C}^n` or :math:`\\mathbb{R}^n`; force models (:mod:`uenn_geo.models`) map a
PyG batch with positions (Angstrom) to forces (eV/Angstrom). Data flows positions ->
edges (:mod:`uenn_geo.edges`) -> graph layers -> equivariant stack -> energy and forces.
"""

from uenn_geo import nn, testing
from uenn_geo.edges import Edges, build_edges
from uenn_geo.models import MODELS, ForceModel, load_model, save_model
from uenn_geo.neighbors import radius_graph

__version__ = "0.1.0"

__all__ = [
    "nn",
    "testing",
    "Edges",
    "build_edges",
    "ForceModel",
    "MODELS",
    "load_model",
    "save_model",
    "radius_graph",
    "__version__",
]
