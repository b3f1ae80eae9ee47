"""Dagster assets, one module per stage; thin wrappers over curation/, training/ and evaluation/."""
