"""conceptscope: concept-based explanations of vision models, as a library and a Snakemake pipeline.

The library does not know Snakemake: every function takes arrays, models and paths.
"""

__version__ = "0.1.0"
