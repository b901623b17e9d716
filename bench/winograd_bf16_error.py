#!/usr/bin/python3
"""Why Strata's bf16 convolutions do not round Winograd's transformed tiles (docs/precision.md).

A bf16 convolution that used vdpbf16ps inside Winograd would round U = G g G^T and V = B^T d B
(the transformed filter and input tiles) to bf16 before the element-wise products, instead of the
filter g and the input d. This script measures, in double precision, the error of that scheme
against the exact convolution, as a multiple of the error of rounding g and d themselves (what
Strata's bf16 computes, and the reference backend's emulation): F(m x m, 3x3) for m = 2, 3, 4,
with the Toom-Cook interpolation points given, 3x3 filters of He-scaled normal weights over 64
channels, inputs normal or rectified (ReLU'd). Run with /usr/bin/python3 (Debian's python3-torch,
used only for its bf16 rounding).
"""
import torch

torch.manual_seed(0)
D = torch.float64


def bf16(t):
    return t.float().to(torch.bfloat16).to(D)


def toom_cook(m, r, points):
    """A^T (m x n), G (n x r), B^T (n x n) of F(m, r) from n - 1 finite points and infinity."""
    n = m + r - 1
    at = torch.zeros(m, n, dtype=D)
    g = torch.zeros(n, r, dtype=D)
    for j, a in enumerate(points):
        for i in range(m):
            at[i, j] = a**i
        f = 1.0
        for l, b in enumerate(points):
            if l != j:
                f *= a - b
        for k in range(r):
            g[j, k] = a**k / f
    at[m - 1, n - 1] = 1
    g[n - 1, r - 1] = 1
    # B^T from the identity sum_j A^T[i, j] G[j, k] B^T[j, l] = [l == i + k].
    bt = torch.zeros(n, n, dtype=D)
    for l in range(n):
        rows, rhs = [], []
        for i in range(m):
            for k in range(r):
                rows.append([at[i, j] * g[j, k] for j in range(n)])
                rhs.append(1.0 if l == i + k else 0.0)
        bt[:, l] = torch.linalg.lstsq(torch.tensor(rows, dtype=D),
                                      torch.tensor(rhs, dtype=D).unsqueeze(1)).solution[:, 0]
    d, w = torch.randn(n, dtype=D), torch.randn(r, dtype=D)
    exact = torch.stack([sum(d[i + k] * w[k] for k in range(r)) for i in range(m)])
    assert (exact - at @ ((g @ w) * (bt @ d))).abs().max() < 1e-9
    return bt, g, at


def errors(bt, g, at, channels=64, filters=32, tiles=150, relu=False):
    n = bt.shape[0]
    d = torch.randn(tiles, channels, n, n, dtype=D)
    if relu:
        d = d.clamp(min=0)
    w = torch.randn(filters, channels, 3, 3, dtype=D) * (2 / (9 * channels))**0.5
    patches = d.unfold(2, 3, 1).unfold(3, 3, 1)
    exact = torch.einsum('tcijrs,kcrs->tkij', patches, w)
    rounded_inputs = torch.einsum('tcijrs,kcrs->tkij', bf16(patches), bf16(w))
    u, v = g @ w @ g.T, bt @ d @ bt.T
    m = torch.einsum('kcab,tcab->tkab', bf16(u), bf16(v))
    rounded_tiles = at @ m @ at.T
    rms = lambda e: (e**2).mean().sqrt().item()
    return rms(rounded_tiles - exact) / rms(rounded_inputs - exact), rms(rounded_tiles - exact) / rms(exact)


print('| tile | points | input | error / rounded inputs\' error | relative rms error |')
print('| --- | --- | --- | --- | --- |')
for m, points in [(2, [0, 1, -1]), (3, [0, 1, -1, 2]), (3, [0, 1, -1, 0.5]), (4, [0, 1, -1, 2, -2]),
                  (4, [0, 1, -1, 0.5, -0.5])]:
    bt, g, at = toom_cook(m, 3, points)
    for relu in (False, True):
        ratio, relative = errors(bt, g, at, relu=relu)
        print(f'| F({m}x{m}) | {points} | {"ReLU" if relu else "normal"} | {ratio:.1f}x | {relative:.1e} |')
