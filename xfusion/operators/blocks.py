"""Block (halo) forms of the operators: how any operator runs on a pixel block of the cube.

Every cube is (x, y, energy) and a block holds the whole energy axis, so spectral operators
are local. A spatial operator declares

* ``depth = (d_x, d_y)``: the halo, in its INPUT pixels, that its forward needs around a block
  (0 for local operators, the kernel radius for a convolution), as dask-image derives it from
  the kernel shape;
* ``factor = (v_x, v_y)``: input pixels per output pixel (the rebinning factor; 1 otherwise);
* ``forward_valid(z)``: the forward of a block that carries exactly ``depth`` halo pixels on
  each side (zeros beyond the field: the zero-boundary rule of the operators), returning the
  block's output (``(b - 2 d) / v`` pixels a side) -- the 'valid' part;
* ``adjoint_valid(u)``: the adjoint of an output block with ``adjoint_depth`` halo pixels
  (default ``ceil(d / v)``; declared by operators that are compositions inside), returning
  ``(b - 2 adjoint_depth) v`` input pixels.

An operator without ``forward_valid`` (a dense or sparse matrix over the whole field, e.g.
:class:`~xfusion.operators.footprint.Footprint`) has no block form; one with ``block_ops``
(:class:`~xfusion.operators.psf.SpatialMatrix` built from a PSF) runs as that composition.
The functions below extend the forms to compositions (a :class:`~xfusion.operators.model.Chain`
or a list, first operator applied first) and accept blocks with MORE halo than needed (cropped
first), so a backend only needs :func:`depth`, :func:`factor`, :func:`forward_block` and
:func:`adjoint_block`. Composition rules, with ``d_k``, ``v_k`` those of operator k:

* forward halo (input pixels): ``G_k = d_k + v_k G_{k+1}``, ``G_n = 0``, depth ``G_0``;
* adjoint halo (output pixels of operator k): ``H_k = a_k + ceil(H_{k-1} / v_k)``, ``H_{-1} = 0``,
  ``a_k`` its own adjoint halo; the adjoint of operator k leaves ``(H_k - a_k) v_k >= H_{k-1}``
  pixels, the excess is cropped.
"""
from __future__ import annotations

import math


def parts(op):
    """The operators of a composition (first applied first), or [op] for an elementary one."""
    if isinstance(op, (list, tuple)):
        return [p for o in op for p in parts(o)]
    from .model import Chain

    ops = getattr(op, "block_ops", None)
    if ops is None and isinstance(op, Chain):
        ops = op.ops
    if ops is None:
        return [op]
    return [p for o in ops for p in parts(o)]


def has_block_form(op):
    """Whether every part of ``op`` runs on a pixel block with a halo (a part made of others, such as an
    energy-dependent PSF, only if its halo is defined: not over whole-field maps)."""
    if not all(hasattr(p, "forward_valid") and not getattr(p, "position_dependent", False) for p in parts(op)):
        return False
    try:
        depth(op)
    except ValueError:
        return False
    return True


def _check(op):
    for p in parts(op):
        if not hasattr(p, "forward_valid"):
            raise ValueError(f"{type(p).__name__} acts on the whole field at once and has no block (halo) form: run "
                             "it on one block covering the field (chunks equal to the field size), or in memory")


def factor(op):
    v = [1, 1]
    for p in parts(op):
        f = getattr(p, "factor", (1, 1))
        v = [v[0] * f[0], v[1] * f[1]]
    return tuple(v)


def depth(op):
    """Forward halo (input pixels) of ``op`` on each of the two spatial axes."""
    _check(op)
    g = [0, 0]
    for p in reversed(parts(op)):
        d, f = p.depth, getattr(p, "factor", (1, 1))
        g = [d[a] + f[a] * g[a] for a in range(2)]
    return tuple(g)


def _own_adjoint_depth(p):
    """Adjoint halo of an elementary operator: ``adjoint_depth`` if it declares one, else ``depth / factor``."""
    own = getattr(p, "adjoint_depth", None)
    if own is not None:
        return tuple(own)
    d, f = p.depth, getattr(p, "factor", (1, 1))
    return (-(-d[0] // f[0]), -(-d[1] // f[1]))


def _adjoint_halos(ps):
    """H_k of every prefix of ``ps`` (module notes)."""
    h, out = [0, 0], []
    for p in ps:
        a, f = _own_adjoint_depth(p), getattr(p, "factor", (1, 1))
        h = [a[i] + math.ceil(h[i] / f[i]) for i in range(2)]
        out.append(tuple(h))
    return out


def adjoint_depth(op):
    """Adjoint halo (output pixels) of ``op``."""
    _check(op)
    return _adjoint_halos(parts(op))[-1]


def crop(a, c):
    """``a`` without ``c = (c_x, c_y)`` pixels on each side of axes 0 and 1."""
    if c[0] == 0 and c[1] == 0:
        return a
    return a[c[0]:a.shape[0] - c[0], c[1]:a.shape[1] - c[1]]


def forward_block(op, z, halo):
    """Forward of a block ``z`` carrying ``halo = (h_x, h_y) >= depth(op)`` pixels on each side (zeros
    beyond the field): the output of the block's interior."""
    g = depth(op)
    z = crop(z, (halo[0] - g[0], halo[1] - g[1]))
    for p in parts(op):
        z = p.forward_valid(z)
    return z


def adjoint_block(op, u, halo):
    """Adjoint of an output block ``u`` carrying ``halo >= adjoint_depth(op)`` pixels on each side: the
    adjoint on the input pixels of the block's interior."""
    ps = parts(op)
    hs = _adjoint_halos(ps)
    cur = tuple(halo)
    for k in range(len(ps) - 1, -1, -1):
        p = ps[k]
        u = crop(u, (cur[0] - hs[k][0], cur[1] - hs[k][1]))
        u = p.adjoint_valid(u)
        f, own = getattr(p, "factor", (1, 1)), _own_adjoint_depth(p)
        cur = tuple((hs[k][a] - own[a]) * f[a] for a in range(2))
    return crop(u, cur)
