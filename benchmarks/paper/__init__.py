"""Reproduction of the paper's Table 1 and Figures 2-5 (``python -m benchmarks.paper``)."""
