"""Evaluation: pure protocol functions (k-NN, features, attention maps) and the evaluators that
`config.evals` names (evaluators.py). Nothing here imports an objective: evaluators receive the
run's objective and read its declared `backbone`, `backbone_variables` and `eval_metrics`."""
