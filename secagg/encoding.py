"""Fixed-point encoding of real vectors into the ring Z_(2^k), and ring arithmetic.

Secure aggregation sums vectors over a finite ring Z_R (Bonawitz et al., CCS 2017,
"Practical Secure Aggregation for Privacy-Preserving Machine Learning", Sec. 3: each
party holds x_u in Z_R^m and the server learns sum_u x_u mod R).  Real-valued model
updates enter that ring through a fixed-point code with R = 2^k:

    enc(x) = SR(clip(x, -c, c) * 2^f)  mod 2^k        (SR: unbiased stochastic rounding)
    dec(s) = signed(s) / 2^f

where ``signed`` maps Z_(2^k) to [-2^(k-1), 2^(k-1)).  Choosing f so that
``n * ceil(c * 2^f) <= 2^(k-1) - 1`` guarantees that the signed sum of the n parties'
codes never wraps, hence dec(sum_u enc(x_u) mod 2^k) = sum_u dec(enc(x_u)) exactly.

Ring elements of Z_(2^32) are held in ``torch.int32`` (two's complement).  Additions
are done on unsigned ``numpy.uint32`` views of the same memory, whose wrap-around is
defined behaviour in C (signed overflow, which a plain ``int32`` add would rely on, is
not), at no extra copy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from secagg.prg import KEY_BYTES, NONCE_BYTES, Keystream

__all__ = [
    "FixedPointCodec",
    "MIN_FRAC_BITS",
    "SUPPORTED_MODULUS_BITS",
    "fixed_point_frac_bits",
    "wrapping_add",
    "wrapping_add_",
    "wrapping_sub_",
    "wrapping_sum",
]

SUPPORTED_MODULUS_BITS: tuple[int, ...] = (32,)
"""Ring sizes 2^k implemented so far (a 64-bit ring is planned; the field is kept)."""

MIN_FRAC_BITS: int = 8
"""Fewest fractional bits accepted: below this the quantisation error is too coarse."""

_MAX_FRAC_BITS: int = 96
"""Most fractional bits: keeps the scale 2^f finite and exact in float32 (< 2^127)."""

_CHUNK = 64 * 1024
"""Elements per step of :meth:`FixedPointCodec.encode` (buffers stay in cache)."""

_COIN_BITS = 24
_COIN_MASK = (1 << _COIN_BITS) - 1
_COIN_STEP = 2.0**-_COIN_BITS

_RING_DTYPE = {32: torch.int32}
_UNSIGNED_VIEW = {32: np.uint32}


def check_ring(clip_range: float, modulus_bits: int) -> None:
    """Validate the clipping range (a finite real > 0) and the ring Z_(2^modulus_bits)."""
    if isinstance(clip_range, bool) or not isinstance(clip_range, (int, float)):
        raise ValueError(f"clip_range must be a real number, got {clip_range!r}")
    if not (math.isfinite(clip_range) and clip_range > 0):
        raise ValueError(f"clip_range must be finite and in (0, inf), got {clip_range!r}")
    if modulus_bits not in SUPPORTED_MODULUS_BITS:
        raise ValueError(
            f"modulus_bits must be one of {SUPPORTED_MODULUS_BITS} (64 is planned), got {modulus_bits!r}"
        )


def fixed_point_frac_bits(clip_range: float, num_parties: int, modulus_bits: int) -> int | None:
    """Largest f with ``num_parties * ceil(clip_range * 2^f) <= 2^(modulus_bits-1) - 1``.

    This is the headroom condition of the module docstring: with inputs clipped to
    [-c, c] and stochastic rounding (which moves a value by less than one step, so a
    code's magnitude is at most ceil(c * 2^f)), the signed sum of ``num_parties`` codes
    stays inside [-(2^(k-1) - 1), 2^(k-1) - 1] and never wraps in Z_(2^k).  Returns
    ``None`` when no f in [MIN_FRAC_BITS, 96] satisfies it.  Exact integer arithmetic:
    ``clip_range * 2^f`` (``math.ldexp``) is exact in binary floating point.
    """
    if not (math.isfinite(clip_range) and clip_range > 0):
        raise ValueError(f"clip_range must be finite and in (0, inf), got {clip_range!r}")
    if num_parties < 1:
        raise ValueError(f"num_parties must be >= 1, got {num_parties!r}")
    limit = 2 ** (modulus_bits - 1) - 1

    def fits(f: int) -> bool:
        try:
            return num_parties * math.ceil(math.ldexp(clip_range, f)) <= limit
        except OverflowError:
            return False

    guess = math.floor(math.log2(limit) - math.log2(num_parties) - math.log2(clip_range))
    f = max(MIN_FRAC_BITS - 1, min(_MAX_FRAC_BITS, guess))
    while f >= MIN_FRAC_BITS and not fits(f):
        f -= 1
    while f < _MAX_FRAC_BITS and fits(f + 1):
        f += 1
    return f if f >= MIN_FRAC_BITS and fits(f) else None


def _largest_float32_at_most(value: float) -> float:
    """Largest float32 <= value, so that clipping in float32 never exceeds ``value``."""
    as32 = np.float32(value)
    if float(as32) > value:
        as32 = np.nextafter(as32, np.float32(0.0))
    return float(as32)


def _coin_key(generator: torch.Generator) -> bytes:
    """A 256-bit AES key for the rounding coins, drawn from the caller's generator."""
    drawn = torch.randint(0, 256, (KEY_BYTES,), generator=generator, dtype=torch.uint8)
    return drawn.numpy().tobytes()


@dataclass(frozen=True)
class FixedPointCodec:
    """Fixed-point code from [-clip_range, clip_range]^d into Z_(2^modulus_bits)^d.

    ``frac_bits`` (f) is derived, not given (see :func:`fixed_point_frac_bits`), so
    that the sum of ``num_parties`` codes decodes exactly, without wrap-around
    (Bonawitz et al. 2017, Sec. 3: inputs in Z_R with R large enough for the sum).
    """

    clip_range: float
    num_parties: int
    modulus_bits: int = 32
    frac_bits: int = field(init=False)

    def __post_init__(self) -> None:
        check_ring(self.clip_range, self.modulus_bits)
        if isinstance(self.num_parties, bool) or not isinstance(self.num_parties, int):
            raise ValueError(f"num_parties must be an int >= 1, got {self.num_parties!r}")
        if self.num_parties < 1:
            raise ValueError(f"num_parties must be >= 1, got {self.num_parties}")
        frac_bits = fixed_point_frac_bits(self.clip_range, self.num_parties, self.modulus_bits)
        if frac_bits is None:
            limit = 2 ** (self.modulus_bits - 1) - 1
            raise ValueError(
                f"no fixed-point scale with at least {MIN_FRAC_BITS} fractional bits fits: "
                f"num_parties={self.num_parties} * clip_range={self.clip_range} * "
                f"2^{MIN_FRAC_BITS} must be <= 2^{self.modulus_bits - 1} - 1 = {limit} so the "
                f"cohort sum cannot wrap; lower clip_range or num_parties"
            )
        object.__setattr__(self, "frac_bits", frac_bits)

    @property
    def scale(self) -> float:
        """The scale 2^f."""
        return 2.0**self.frac_bits

    @property
    def max_abs_code(self) -> int:
        """Largest magnitude of one party's code: ceil(clip_range * 2^f)."""
        return math.ceil(self.clip_range * self.scale)

    @property
    def dtype(self) -> torch.dtype:
        """Torch dtype holding ring elements (two's complement)."""
        return _RING_DTYPE[self.modulus_bits]

    def encode(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Encode a real CPU tensor: clip to [-c, c], scale by 2^f, round stochastically.

        Stochastic rounding: code = floor(v) + floor(frac(v) + u) with u uniform on
        the grid k * 2^-24, k in [0, 2^24), i.e. floor(v) + Bernoulli(frac(v)), so
        E[code] = v up to 2^-24 of one step: the aggregate stays unbiased.  The coins
        u are the AES-256-CTR keystream (:mod:`secagg.prg`) under a 256-bit key drawn
        from ``generator``: same generator state, same code; ~10x faster than
        ``torch.rand``.  They are not masks and need not be secret.

        Works chunk by chunk through cache-sized buffers: the only allocation of the
        input's size is the returned int32 tensor.  Raises ValueError if ``x`` has a
        NaN or infinite entry.
        """
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a floating-point torch.Tensor, got {got}")
        if x.device.type != "cpu":
            raise ValueError(f"x must be on the CPU, got device {x.device}")
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if x.dtype not in (torch.float32, torch.float64):
            x = x.to(torch.float32)
        flat = x.reshape(-1)
        out = torch.empty(flat.shape, dtype=self.dtype)
        if flat.numel() == 0:
            return out.reshape(x.shape)
        lo, hi = torch.aminmax(flat)  # one pass; NaN propagates to both
        if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
            raise ValueError("x must contain only finite values (found NaN or inf)")
        bound = (
            _largest_float32_at_most(self.clip_range)
            if x.dtype == torch.float32
            else self.clip_range
        )
        scaled_bound = bound * self.scale  # exact in x's dtype: a power-of-two multiple
        coins = Keystream(_coin_key(generator), bytes(NONCE_BYTES))
        chunk = min(_CHUNK, flat.numel())
        v = torch.empty(chunk, dtype=x.dtype)
        code = torch.empty(chunk, dtype=x.dtype)
        bits = torch.empty(chunk, dtype=torch.int32)
        for start in range(0, flat.numel(), chunk):
            m = min(chunk, flat.numel() - start)
            v_m, code_m, bits_m = v[:m], code[:m], bits[:m]
            torch.mul(flat[start : start + m], self.scale, out=v_m)  # exact
            v_m.clamp_(-scaled_bound, scaled_bound)
            torch.floor(v_m, out=code_m)
            v_m.sub_(code_m)  # frac(v) in [0, 1), exact (Sterbenz)
            coins.read_into(bits_m)
            bits_m.bitwise_and_(_COIN_MASK)  # k uniform in [0, 2^24)
            v_m.add_(bits_m, alpha=_COIN_STEP)  # frac(v) + u, u = k 2^-24, in [0, 2)
            v_m.floor_()  # 1 with probability frac(v) (up to 2^-24), else 0
            code_m.add_(v_m)
            out[start : start + m].copy_(code_m)  # |code| <= max_abs_code < 2^31
        return out.reshape(x.shape)

    def decode_sum(self, s: torch.Tensor) -> torch.Tensor:
        """Decode a ring element (a sum of at most ``num_parties`` codes) to float32.

        Interprets ``s`` as signed (two's complement) and divides by 2^f.  The int32 ->
        float32 conversion rounds to nearest and the division by 2^f is exact.
        """
        _check_ring_tensor("s", s, self.dtype)
        return s.to(torch.float32).mul_(1.0 / self.scale)


def _check_ring_tensor(name: str, t: torch.Tensor, dtype: torch.dtype = torch.int32) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        raise ValueError(f"{name} must have dtype {dtype}, got {t.dtype}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU, got device {t.device}")


def _unsigned(t: torch.Tensor) -> np.ndarray:
    """Zero-copy unsigned view of an int32 tensor's memory (wrap-around is defined)."""
    return t.numpy().view(_UNSIGNED_VIEW[32])


def _check_same_shape(name: str, acc: torch.Tensor, other: torch.Tensor) -> None:
    if acc.shape != other.shape:
        raise ValueError(f"{name} must have shape {tuple(acc.shape)}, got {tuple(other.shape)}")


def _wrapping_inplace(acc: torch.Tensor, other: torch.Tensor, ufunc: np.ufunc) -> torch.Tensor:
    """acc <- ufunc(acc, other) on uint32 views of the same memory: defined wrap-around, no temporaries."""
    _check_ring_tensor("acc", acc)
    _check_ring_tensor("other", other)
    _check_same_shape("other", acc, other)
    a = _unsigned(acc)
    ufunc(a, _unsigned(other), out=a)
    return acc


def wrapping_add_(acc: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """In place: acc <- acc + other  (mod 2^32).  Returns ``acc``."""
    return _wrapping_inplace(acc, other, np.add)


def wrapping_sub_(acc: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """In place: acc <- acc - other  (mod 2^32).  Returns ``acc``."""
    return _wrapping_inplace(acc, other, np.subtract)


def wrapping_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pure: a + b in Z_(2^32), as a new int32 tensor."""
    _check_ring_tensor("a", a)
    return wrapping_add_(a.clone(memory_format=torch.contiguous_format), b)


def wrapping_sum(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Pure: sum_i tensors[i] in Z_(2^32), as a new int32 tensor (inputs untouched)."""
    if len(tensors) == 0:
        raise ValueError("tensors must hold at least 1 tensor, got 0")
    for i, t in enumerate(tensors):
        _check_ring_tensor(f"tensors[{i}]", t)
        _check_same_shape(f"tensors[{i}]", tensors[0], t)
    acc = torch.empty(tensors[0].shape, dtype=torch.int32)
    if len(tensors) == 1:
        return acc.copy_(tensors[0])
    out = _unsigned(acc)
    np.add(_unsigned(tensors[0]), _unsigned(tensors[1]), out=out)
    for t in tensors[2:]:
        np.add(out, _unsigned(t), out=out)
    return acc
