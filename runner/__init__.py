"""Executes a plan: launches Live Avatar with torchrun and records the run (installed as avatardoctor.runner)."""
