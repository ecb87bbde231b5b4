"""Ray Tune search over guidance profiles (`speechguide tune`).

`space` (what is searched), `objective` (how a profile is scored on validation data; pure PyTorch),
`trainable` (one trial: generate in batches, report after each), `sweep` (Optuna + ASHA/FIFO,
restore, retries, MLflow parent run) and `tracking` (MLflow parent and nested runs).
"""
