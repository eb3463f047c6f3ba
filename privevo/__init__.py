"""privevo: Private Evolution (DP synthetic images through foundation-model APIs).

The library holds the whole algorithm and its privacy analysis; the Kubeflow
components in ``components/`` are thin adapters over it. Nothing here imports kfp.
"""

__version__ = "0.1.0"
