"""Ray + Zarr + MLflow orchestration of MID: pool generation, training, evaluation, tracking, configs."""
