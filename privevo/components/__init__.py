"""Kubeflow Pipelines components: one module per container step, each a thin adapter.

A component parses its inputs, calls one function of ``privevo.steps`` and writes a
reference (URI + sha256 in the artifact's metadata) to its output artifact. Every
module also runs as a plain command (``python -m privevo.components.dp_vote --help``); the
steps themselves, and which flags each takes, are described once in
``privevo.step_table``.
"""
