"""Zarr storage of observations and results (no pickle: arrays + JSON attributes)."""
from __future__ import annotations

import os

import xarray as xr


def write(ds: xr.Dataset, path, *, chunks=None, mode="w", client=None):
    """Write a Dataset to a Zarr store (format 3), lazy variables chunk by chunk.

    ``chunks``: optional dict dim -> size. ``client``: the ``distributed.Client`` that holds
    the result's data (a lazy ``fuse(..., client=client)`` result); default: the active Dask
    scheduler.
    """
    if chunks:
        ds = ds.chunk({k: v for k, v in chunks.items() if k in ds.dims})
    if client is not None:
        client.compute(ds.to_zarr(os.fspath(path), mode=mode, consolidated=False, compute=False)).result()
    else:
        ds.to_zarr(os.fspath(path), mode=mode, consolidated=False)
    return path


def open(path, *, chunks=None) -> xr.Dataset:  # noqa: A001 - mirrors xarray's verb
    """Open a Zarr store lazily (Dask-backed when ``chunks`` is given, e.g. ``{}`` for the stored chunks)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no Zarr store at {path}")
    ds = xr.open_zarr(path, chunks=chunks, consolidated=False)
    return ds if chunks is not None else ds.load()
