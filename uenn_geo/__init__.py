"""uenn-geo: feedforward unitary-equivariant neural networks for PyTorch Geometric."""

__version__ = "0.1.0"
