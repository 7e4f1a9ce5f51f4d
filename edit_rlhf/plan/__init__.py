"""`edit-rlhf plan --config X`: per pool and per GPU memory of a pipeline config, from models built at their real
size on the meta device (see `planner`). `run.run_plan` returns a `Plan`; `report.table` prints it."""
