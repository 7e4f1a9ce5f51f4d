"""Editor evaluation: the GEdit-Bench protocol (VIEScore-style SC / PQ / O judged by a VLM), the RRM score and
the sandbox oracle score, aggregated per category and macro-averaged.

- `protocol`: pure aggregation maths (per-sample SC = min, PQ = min, O = sqrt(SC*PQ); category means; macro mean).
- `viescore`: the judge's prompts (our words) and its tolerant reply parser.
- `scorers`: batch scorers (judge, RRM, oracle) hosted by `edit_rlhf.actors.evaluation.EvalScorerWorker`.
- `gedit`: the loader of GEdit-Bench's layout (-> an edit-prompt dataset).
- `results`: per-sample records -> the result table (JSON / CSV; GEdit EN / CN as separate tables) and the
  one-line summary.
- `editreward`: EditReward-Bench's published RRM metric (per dimension, strict, mean over task types), for eval-rrm.

The driver is `edit_rlhf.pipelines.eval_editor` (`edit-rlhf eval-editor`).
"""
