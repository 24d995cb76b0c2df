"""The built-in demo, in one place: its checkpoints (checkpoints.py: the full-size skeleton `check --demo`
reads, the tiny real one the demo's ranks load) and its workload (workload.py: a small real TPP-shaped
run that the runner launches as it launches Live Avatar's entry)."""
