"""Kubeflow Pipelines components: one module per container step, each a thin adapter.

A component parses its inputs, calls one function of ``privevo.steps`` and writes a
reference (URI + sha256 in the artifact's metadata) to its output artifact. Every
module also runs as a plain command: ``python -m components.dp_vote --help``.
"""

#: The six step kinds, in DAG order.
STEP_KINDS = ("embed_private", "generate_initial", "embed_synthetic", "dp_vote", "generate_variations", "evaluate")
