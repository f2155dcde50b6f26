"""exp2 by a polynomial on the FMA pipe (FA4's trick), as PTX for inline asm (Triton's `exp2_poly` tiles).

The MUFU unit runs 16 exp2 per clock per SM; a softmax that waits on it can
move one exp2 in every `pack` to the FMA pipe. On the H200 it did not pay in
the Triton forward nor in the Gluon FP8 forward (docs/tuning-triton.md step
3, docs/tuning-gluon.md entry 19): there the softmax is not MUFU-bound. The PTX takes `pack` float32 elements, the first pack - 1 by
`ex2.approx.ftz.f32`, the last by Cody-Waite range reduction and a degree-3
polynomial: for x <= 0, n = floor(max(x, -127)) through a round-down add of
1.5 * 2^23, f = x - n in [0, 1), and 2^x = p(f) * 2^n with n added into p's
exponent bits. Every x <= -127, -inf included, gives exactly 0 (f = 0, p = 1,
and the exponent add cancels p's bits), as exp2 does; NaN gives 0 instead of
NaN.
"""
import struct

# 2^f on [0, 1) as 1 + f (c1 + f (c2 + f c3)): minimax in relative error with p(0) = 1, fitted by
# iteratively reweighted least squares; max relative error 8.6e-5 (float32), far under bf16's 2^-9 on P.
EXP2_POLY_COEFFS = (0.6951168179512024, 0.22764497995376587, 0.0770670548081398)
EXP2_POLY_CLAMP = -127.0  # below this the result is exactly 0, and the exponent field stays >= 0 above it
PACKS = (2, 4, 8)  # one exp2 in every `pack` by the polynomial
_ROUND_MAGIC = 12582912.0  # 1.5 * 2^23: x + this, rounded down, holds floor(x) in its low mantissa bits


def _f32_hex(x: float) -> str:
    return "0f" + struct.pack(">f", x).hex().upper()


def exp2_asm(pack: int) -> str:
    """PTX for `pack` float32 elements ($0..$pack-1 out, $pack..$2pack-1 in): the last by the polynomial."""
    if pack not in PACKS:
        raise ValueError(f"pack must be one of {PACKS}, got {pack}")
    c1, c2, c3 = (_f32_hex(c) for c in EXP2_POLY_COEFFS)
    magic = _f32_hex(_ROUND_MAGIC)
    mufu = [f"ex2.approx.ftz.f32 ${i}, ${pack + i};" for i in range(pack - 1)]
    out, x = f"${pack - 1}", f"${2 * pack - 1}"
    poly = [
        f"max.ftz.f32 xc, {x}, {_f32_hex(EXP2_POLY_CLAMP)};",
        f"add.rm.ftz.f32 r, xc, {magic};",
        f"sub.ftz.f32 f, r, {magic};",
        "sub.ftz.f32 f, xc, f;",
        f"fma.rn.ftz.f32 p, f, {c3}, {c2};",
        f"fma.rn.ftz.f32 p, p, f, {c1};",
        "fma.rn.ftz.f32 p, p, f, 0f3F800000;",
        "shl.b32 r, r, 23;",
        f"add.s32 {out}, p, r;",
    ]
    return "{ .reg .b32 xc, r, f, p; " + " ".join(mufu + poly) + " }"

