"""One module per `medimg` subcommand: its arguments and what it runs.

The DVC stages' scripts (stages/*.py) run the same commands (`base.run_stage`), each
importing only its own command module, so a stage depends on the code it runs and
not on the other subcommands (dvc.yaml). `medimg.cli` puts them together.
"""
