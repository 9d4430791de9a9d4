"""Evaluation on the paper's benchmarks (docs/evaluation.md; entry point ``python -m metis.evaluate``).

- :mod:`metis.eval.benchmarks`: ``BENCHMARKS`` loaders and :func:`load_benchmark`
  (the CharXiv loader in :mod:`metis.eval.charxiv`);
- :mod:`metis.eval.formats`: VLMEvalKit TSV / Hugging Face layouts, image decoding, ``EvalError``;
- :mod:`metis.eval.runner`: :class:`EvalRunner`, batched, per-sample appended, fingerprinted resume;
- :mod:`metis.eval.fingerprint`: run / input fingerprints and the provenance of a run;
- :mod:`metis.eval.predictions`: prediction files for score-only runs (ours, VLMEvalKit, lmms-eval);
- :mod:`metis.eval.judging`: the judge (start-up probe, guard against a dead endpoint, grading prompts);
- :mod:`metis.eval.scoring` and :mod:`metis.eval.rules`: rule-first scoring, benchmark answer rules;
- :mod:`metis.eval.metrics`: accuracy over scored rows, standard errors, per-benchmark metrics;
- :mod:`metis.eval.report`: result and comparison tables with flags, W&B table, ``python -m metis.eval.report``.
"""
