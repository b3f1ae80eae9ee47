"""Dagster definitions, one folder per domain (data, pretrain, posttrain, evaluation), each with
its assets, checks, jobs, schedules and sensors; loaded by `definitions.py` with
`dg.load_from_defs_folder`. Thin: they resolve the run spec, call curation/ or launch a program.
`resources.py` and `common.py` sit below every domain; imports run one way only."""
