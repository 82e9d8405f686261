"""Backends: where the solvers' arrays live (:mod:`xfusion.solvers.backend` holds the interface and the
in-memory one; :mod:`xfusion.backends.blockwise` runs it on Dask pixel blocks)."""
