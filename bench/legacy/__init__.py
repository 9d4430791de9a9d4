"""The agent loop, HF engine and log-prob code as they were before the performance work
(verbatim copies of metis/agent/{loop,engines,batching,logprobs}.py at the commit the benchmark
started from), so the benchmark can report before/after numbers in one run."""
