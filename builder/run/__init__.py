"""The run directory ``<output.dir>/<run>/``: paths, lock, completion markers, the cost ledger,
the build and its dry run (``plan``).

The run directory is the only interface between stages: each stage reads the files earlier
stages left there and writes its own (see ``builder.stages.base``).
"""
