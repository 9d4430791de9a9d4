"""Analysis of finished runs: small-sample statistics and the pre-stated decision rules of the
miniature experiment. Reads numbers and per-run files; never trains."""
