"""Speed benchmark of the invariance regularizer, the metrics and the weight-tying baselines (issue 7).

Run ``python -m benchmarks.speed [--device auto|cpu|cuda] [--quick] [--out DIR] [--threads N]``. Every
comparison is measured side by side in the same run: after a warm-up, interleaved rounds of
``torch.utils.benchmark.Timer.blocked_autorange`` on every case of a section; a time is the median over all
blocks, a ratio is the median over the rounds of the ratio of the two cases' medians in that round (so a load
change on the shared machine hits both sides of a ratio alike), reported with the smallest and the largest
per-round ratio. Absolute times are not comparable between runs.

Sections:

1. Training step of the paper MLP (batch 512, 36x36 images, rotations of order 4): ``plain`` (augmented step,
   batch B), ``bound`` (stacked orbit, one forward/backward over order x B rows: the floor of the full-orbit
   regularizer), ``ir`` (``InvarianceLoss`` with ``logits=`` reuse), ``naive`` (a Python loop with one
   forward per group element and f(x) recomputed); ``elements=1`` against its floor (one forward/backward
   over 2 x B rows); the same under ``torch.compile``.
2. Scaling: ``ir`` step time and memory for group orders 2, 4, 8, for ``elements=k`` (k = 1, 2, 4) and with
   ``chunk_size=1`` (activation checkpointing per chunk).
3. Metrics throughput (samples/s): LI, DI, and SI (50-step Integrated Gradients, the default plain-torch
   backend) against its floor: the same forward+backward rows (50 steps x the orbit) in SI's own batch shapes
   (all steps in one pass, as ``saliency_map`` chunks them by default); against one captum call per group
   element; also SI with ``backend="captum"`` (one captum call for the whole orbit), for information, and the
   one-pass floor against the floor of earlier runs (one pass per step). LI/DI, SI with its floor, the two
   floors, and the captum cases are four groups, each timed in its own rounds (see ``section_metrics``), with
   the minor page faults per call of each case. SI itself needs no optional extra; without captum only the
   captum rows are skipped, with a note.
4. Weight-tying cost: forward+backward time and parameter count of ``GroupInvariantMLP`` and
   ``EscnnInvariantMLP`` against ``MLP``.

Memory: on CPU there is no allocator peak counter, so the benchmark reports the bytes autograd holds for the
backward pass (the activations), measured with ``torch.autograd.graph.saved_tensors_hooks``: every tensor
saved during the forward is counted once per storage, parameters excluded. With ``chunk_size`` the checkpointed
chunks save nothing but their inputs; their activations are recomputed one chunk at a time during backward
(a transient of one chunk, not counted, and independent of the group order). On CUDA the report adds the
allocator's peak (``torch.cuda.max_memory_allocated`` above the memory in use before the step).

Layout: :mod:`.timing` (profiles, interleaved timing, memory measures), :mod:`.workloads` (shared state and
training-step losses), :mod:`.sections` (the four sections), :mod:`.report` (targets and Markdown), :mod:`.cli`
(the command line). Only the public API is used (``import torchinvariance as ti``).
"""
