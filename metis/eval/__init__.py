"""Evaluation on the paper's benchmarks (docs/evaluation.md; entry point ``python -m metis.evaluate``).

- :mod:`metis.eval.benchmarks`: ``BENCHMARKS`` loaders and :func:`load_benchmark`;
- :mod:`metis.eval.formats`: VLMEvalKit TSV / Hugging Face layouts, image decoding;
- :mod:`metis.eval.runner`: :class:`EvalRunner`, batched and resumable inference;
- :mod:`metis.eval.scoring`: rule-first scoring, the LLM judge fallback, per-benchmark metrics;
- :mod:`metis.eval.report`: result and comparison tables, W&B table, ``python -m metis.eval.report``.
"""
