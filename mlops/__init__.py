"""MLflow for the project: tracking (`mlops.tracking`) and the model registry (`mlops.registry`).

`guidance/` never imports MLflow: what it logs goes through `guidance.run_log.OpenRun`, which
`mlops.tracking.tracked_run` implements. Every public function here takes the tracking URI as the
keyword argument `tracking_uri`; left out, it is `$MLFLOW_TRACKING_URI`, else a SQLite store
(`mlflow.db`) in the working directory. Nothing here imports Ray.
"""
