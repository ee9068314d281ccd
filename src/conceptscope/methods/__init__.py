"""Concept-explanation methods, one module per method, each a scikit-learn style object."""
