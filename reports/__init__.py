"""Renders a run folder or a plain nvidia-smi CSV log as a report (installed as avatardoctor.reports)."""
