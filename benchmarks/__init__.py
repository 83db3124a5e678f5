"""Benchmarks of torchinvariance: the paper reproduction and the speed measurements."""
