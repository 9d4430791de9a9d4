"""Data curation: from raw tool trajectories and prompts to the SFT and RL sets HDPO needs.

Stages (``python -m metis.curate stage=<name>``, docs/curation.md):

* ``reexecute`` (:mod:`metis.curation.reexecute`): replay recorded python calls in the sandbox;
* ``no_tool_solvable`` and ``rl_pass_rate`` (:mod:`metis.curation.policy`): sample a policy k times;
* ``judge`` (:mod:`metis.curation.judge`): an LLM judge with the rubric in ``prompts/``.

:mod:`metis.curation.runner` gives every stage batches, progress bars, resume from
``results.jsonl``, seeds and reports (:mod:`metis.curation.report`); :mod:`metis.curation.io`
reads the inputs. :mod:`metis.curation.synthetic_raw` and :mod:`metis.curation.fake_judge` are a
planted raw set, planted policy and rule-based judge server for tests and offline demos.
"""

from metis.curation.io import ResultLog
from metis.data.samples import Sample, SampleSource
from metis.curation.runner import Stage, StageAborted, run_stage

__all__ = ["ResultLog", "Sample", "SampleSource", "Stage", "StageAborted", "run_stage"]
