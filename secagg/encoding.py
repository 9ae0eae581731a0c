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

Ring elements of Z_(2^32) are held in ``torch.int32`` and those of Z_(2^64) in
``torch.int64`` (two's complement).  Additions are done on unsigned ``numpy.uint32``
/ ``numpy.uint64`` views of the same memory (:func:`as_ring_array`), whose wrap-around
is defined behaviour in C (signed overflow, which a plain signed add would rely on, is
not), at no extra copy.  The protocol (:mod:`secagg.protocol`) takes and returns those
unsigned arrays.

Guard bits and the range check: with ``guard_bits`` g > 0 the scale is chosen for
``n * 2^g`` parties, so a legitimate sum of at most n codes uses only a 2^-g fraction
of the ring and :meth:`FixedPointCodec.out_of_range` can flag a sum that no clipped
inputs could produce (a client that put a ring value outside [-c, c] into its masked
input, or one that wraps the ring).  It is a coarse check: an input inside the clip
range, however poisoned, passes (input validation such as ACORN's proofs is out of
scope), and a shift that keeps every coordinate inside n * c passes too.

Weighted means (:class:`WeightedMeanCodec`): a party with integer weight w sends the
codes of (w * x, w); the server decodes sum_u w_u x_u and sum_u w_u and divides, so
the weights stay as private as the inputs.
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
    "WeightedMeanCodec",
    "as_ring_array",
    "check_ring",
    "fixed_point_frac_bits",
    "ring_dtype",
    "wrapping_add",
    "wrapping_add_",
    "wrapping_sub_",
    "wrapping_sum",
]

SUPPORTED_MODULUS_BITS: tuple[int, ...] = (32, 64)
"""Ring sizes 2^k: Z_(2^32) (the default) and Z_(2^64)."""

MIN_FRAC_BITS: int = 8
"""Fewest fractional bits accepted: below this the quantisation error is too coarse."""

_MAX_FRAC_BITS: int = 96
"""Most fractional bits: keeps the scale 2^f finite and exact in float32 (< 2^127)."""

_CHUNK = 64 * 1024
"""Elements per step of :meth:`FixedPointCodec.encode` (buffers stay in cache)."""

_COIN_BITS = 24
_COIN_MASK = (1 << _COIN_BITS) - 1
_COIN_STEP = 2.0**-_COIN_BITS

_RING_DTYPE = {32: torch.int32, 64: torch.int64}
_UNSIGNED_VIEW = {torch.int32: np.dtype(np.uint32), torch.int64: np.dtype(np.uint64)}


def check_ring(clip_range: float, modulus_bits: int) -> None:
    """Validate the clipping range (a finite real > 0) and the ring Z_(2^modulus_bits)."""
    if isinstance(clip_range, bool) or not isinstance(clip_range, (int, float)):
        raise ValueError(f"clip_range must be a real number, got {clip_range!r}")
    if not (math.isfinite(clip_range) and clip_range > 0):
        raise ValueError(f"clip_range must be finite and in (0, inf), got {clip_range!r}")
    _check_modulus_bits(modulus_bits)


def _check_modulus_bits(modulus_bits: int) -> None:
    if modulus_bits not in SUPPORTED_MODULUS_BITS:
        raise ValueError(f"modulus_bits must be one of {SUPPORTED_MODULUS_BITS}, got {modulus_bits!r}")


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def ring_dtype(modulus_bits: int) -> np.dtype:
    """The unsigned numpy dtype holding elements of Z_(2^modulus_bits): uint32 or uint64."""
    _check_modulus_bits(modulus_bits)
    return _UNSIGNED_VIEW[_RING_DTYPE[modulus_bits]]


def as_ring_array(t: torch.Tensor) -> np.ndarray:
    """Zero-copy unsigned numpy view (uint32/uint64) of an int32/int64 CPU ring tensor.

    What :meth:`secagg.protocol.ClientRound.set_input` takes; writes through.
    """
    if not isinstance(t, torch.Tensor) or t.dtype not in _UNSIGNED_VIEW:
        got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"t must be an int32 or int64 torch.Tensor, got {got}")
    if t.device.type != "cpu":
        raise ValueError(f"t must be on the CPU, got device {t.device}")
    return t.numpy().view(_UNSIGNED_VIEW[t.dtype])


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


def _check_coin_key(coin_key: object) -> bytes:
    """The rounding coins' AES-256 key: exactly KEY_BYTES bytes."""
    if not isinstance(coin_key, (bytes, bytearray)):
        raise ValueError(f"coin_key must be {KEY_BYTES} bytes, got {type(coin_key).__name__}")
    if len(coin_key) != KEY_BYTES:
        raise ValueError(f"coin_key must be exactly {KEY_BYTES} bytes, got {len(coin_key)}")
    return bytes(coin_key)


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
    guard_bits: int = 0
    frac_bits: int = field(init=False)

    def __post_init__(self) -> None:
        check_ring(self.clip_range, self.modulus_bits)
        _check_count("num_parties", self.num_parties)
        if isinstance(self.guard_bits, bool) or not isinstance(self.guard_bits, int) or not 0 <= self.guard_bits <= 16:
            raise ValueError(f"guard_bits must be an int in [0, 16], got {self.guard_bits!r}")
        parties = self.num_parties << self.guard_bits
        frac_bits = fixed_point_frac_bits(self.clip_range, parties, self.modulus_bits)
        if frac_bits is None:
            limit = 2 ** (self.modulus_bits - 1) - 1
            raise ValueError(
                f"no fixed-point scale with at least {MIN_FRAC_BITS} fractional bits fits: "
                f"num_parties={self.num_parties} * 2^guard_bits={2**self.guard_bits} * "
                f"clip_range={self.clip_range} * 2^{MIN_FRAC_BITS} must be <= 2^{self.modulus_bits - 1} - 1 = "
                f"{limit} so the cohort sum cannot wrap; lower clip_range or the cohort, or use a 64-bit ring"
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

    def encode(self, x: torch.Tensor, coin_key: bytes) -> torch.Tensor:
        """Encode a real CPU tensor: clip to [-c, c], scale by 2^f, round stochastically.

        Stochastic rounding: code = floor(v) + floor(frac(v) + u) with u uniform on
        the grid k * 2^-24, k in [0, 2^24), i.e. floor(v) + Bernoulli(frac(v)), so
        E[code] = v up to 2^-24 of one step: the aggregate stays unbiased.  The coins
        u are the AES-256-CTR keystream (:mod:`secagg.prg`) under ``coin_key``
        (``KEY_BYTES`` = 32 bytes): same key, same code; ~10x faster than ``torch.rand``.
        They are not masks, but the caller draws a fresh key per encode from a CSPRNG
        (fedsim: ``SecretRandom.key()``) so that nobody can predict how a value was
        rounded; reusing a key reuses the coins.

        Works chunk by chunk through cache-sized buffers: the only allocation of the
        input's size is the returned ring tensor (``dtype``).  Raises ValueError if ``x`` has a
        NaN or infinite entry.
        """
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a floating-point torch.Tensor, got {got}")
        if x.device.type != "cpu":
            raise ValueError(f"x must be on the CPU, got device {x.device}")
        coin_key = _check_coin_key(coin_key)
        if x.dtype not in (torch.float32, torch.float64):
            x = x.to(torch.float32)
        flat = x.reshape(-1)
        out = torch.empty(flat.shape, dtype=self.dtype)
        if flat.numel() == 0:
            return out.reshape(x.shape)
        lo, hi = torch.aminmax(flat)  # one pass; NaN propagates to both
        if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
            raise ValueError("x must contain only finite values (found NaN or inf)")
        bound = _largest_float32_at_most(self.clip_range) if x.dtype == torch.float32 else self.clip_range
        scaled_bound = bound * self.scale  # exact in x's dtype: a power-of-two multiple
        coins = Keystream(coin_key, bytes(NONCE_BYTES))
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
            out[start : start + m].copy_(code_m)  # |code| <= max_abs_code < 2^(k-1)
        return out.reshape(x.shape)

    def decode_sum(self, s: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Decode a ring element (a sum of at most ``num_parties`` codes) to float32.

        ``s``: a ring tensor of ``dtype`` or the unsigned array the protocol returns
        (``ServerRound.result``).  Interprets it as signed (two's complement) and
        divides by 2^f.  The integer -> float32 conversion rounds to nearest and the
        division by 2^f is exact.
        """
        s = _ring_tensor("s", s, self.modulus_bits)
        return s.to(torch.float32).mul_(1.0 / self.scale)

    def out_of_range(self, s: torch.Tensor | np.ndarray, parties: int) -> int:
        """How many coordinates of the ring sum ``s`` of ``parties`` codes no clipped inputs
        can produce: |signed(s_i)| > parties * ceil(c * 2^f).  0 for every honest sum.

        Only meaningful with ``guard_bits`` > 0 (else the bound spans the whole ring for
        a full cohort); see the module docstring for what it cannot catch.
        """
        _check_count("parties", parties)
        s = _ring_tensor("s", s, self.modulus_bits)
        bound = parties * self.max_abs_code
        if bound >= 2 ** (self.modulus_bits - 1) - 1:
            return 0
        # |x| > bound without abs(): abs(INT_MIN) overflows
        return int(torch.count_nonzero((s > bound) | (s < -bound)))


def _ring_tensor(name: str, s: torch.Tensor | np.ndarray, modulus_bits: int) -> torch.Tensor:
    """``s`` as a signed ring tensor of Z_(2^modulus_bits) (zero-copy from unsigned numpy)."""
    if isinstance(s, np.ndarray):
        if s.dtype != ring_dtype(modulus_bits):
            raise ValueError(f"{name} must have dtype {ring_dtype(modulus_bits)}, got {s.dtype}")
        return torch.from_numpy(s.view(np.int32 if modulus_bits == 32 else np.int64))
    _check_ring_tensor(name, s, _RING_DTYPE[modulus_bits])
    return s


@dataclass(frozen=True)
class WeightedMeanCodec:
    """Codes for a weighted mean: a party with weight w in [0, max_weight] sends
    enc(w * clip(x, -c, c)) followed by the integer w itself, dim + 1 ring elements.

    The server's sum decodes to (sum_u w_u x_u, sum_u w_u) and :meth:`decode_mean`
    divides; neither a party's weight nor its weighted input leaves it unmasked.
    Headroom: the fixed-point part uses clip range c * max_weight for
    ``num_parties`` parties (:class:`FixedPointCodec`), and the weight entry needs
    num_parties * max_weight <= 2^(k-1) - 1; both are checked here.
    """

    clip_range: float
    max_weight: int
    num_parties: int
    modulus_bits: int = 32
    values: FixedPointCodec = field(init=False)

    def __post_init__(self) -> None:
        check_ring(self.clip_range, self.modulus_bits)
        _check_count("max_weight", self.max_weight)
        values = FixedPointCodec(self.clip_range * self.max_weight, self.num_parties, self.modulus_bits)
        limit = 2 ** (self.modulus_bits - 1) - 1
        if self.num_parties * self.max_weight > limit:
            raise ValueError(
                f"num_parties={self.num_parties} * max_weight={self.max_weight} must be <= "
                f"2^{self.modulus_bits - 1} - 1 = {limit} so the sum of weights cannot wrap"
            )
        object.__setattr__(self, "values", values)

    def encode(self, x: torch.Tensor, weight: int, coin_key: bytes) -> torch.Tensor:
        """Codes of (weight * clip(x), weight): a flat ring tensor of x.numel() + 1 elements.

        ``coin_key``: the 32-byte key of the rounding coins (:meth:`FixedPointCodec.encode`).
        """
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= self.max_weight:
            raise ValueError(f"weight must be an int in [0, {self.max_weight}], got {weight!r}")
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a floating-point torch.Tensor, got {got}")
        flat = x.detach().reshape(-1).to(torch.float64)
        weighted = flat.clamp(-self.clip_range, self.clip_range).mul_(weight)
        out = torch.empty(flat.numel() + 1, dtype=self.values.dtype)
        out[:-1] = self.values.encode(weighted, coin_key)
        out[-1] = weight
        return out

    def decode_mean(self, s: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, int]:
        """(sum_u w_u x_u / sum_u w_u as float32, sum_u w_u) from the ring sum ``s``.

        Raises ValueError when the total weight is 0 (no mean exists).
        """
        s = _ring_tensor("s", s, self.modulus_bits)
        total = int(s[-1])
        if total <= 0:
            raise ValueError(f"total weight must be > 0 to take a mean, got {total}")
        return self.values.decode_sum(s[:-1]).div_(total), total


def _check_ring_tensor(name: str, t: torch.Tensor, dtype: torch.dtype | None = None) -> None:
    """A CPU ring tensor: int32 or int64, and of ``dtype`` when given."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    allowed = (dtype,) if dtype is not None else tuple(_UNSIGNED_VIEW)
    if t.dtype not in allowed:
        raise ValueError(f"{name} must have dtype {' or '.join(map(str, allowed))}, got {t.dtype}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU, got device {t.device}")


def _check_same_ring(name: str, acc: torch.Tensor, other: torch.Tensor) -> None:
    _check_ring_tensor(name, other, acc.dtype)
    if acc.shape != other.shape:
        raise ValueError(f"{name} must have shape {tuple(acc.shape)}, got {tuple(other.shape)}")


def _wrapping_inplace(acc: torch.Tensor, other: torch.Tensor, ufunc: np.ufunc) -> torch.Tensor:
    """acc <- ufunc(acc, other) on unsigned views of the same memory: defined wrap-around, no temporaries."""
    _check_ring_tensor("acc", acc)
    _check_same_ring("other", acc, other)
    a = as_ring_array(acc)
    ufunc(a, as_ring_array(other), out=a)
    return acc


def wrapping_add_(acc: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """In place: acc <- acc + other  (mod 2^32 for int32, 2^64 for int64).  Returns ``acc``."""
    return _wrapping_inplace(acc, other, np.add)


def wrapping_sub_(acc: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """In place: acc <- acc - other  (mod 2^32 for int32, 2^64 for int64).  Returns ``acc``."""
    return _wrapping_inplace(acc, other, np.subtract)


def wrapping_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pure: a + b in the ring of a's dtype, as a new tensor."""
    _check_ring_tensor("a", a)
    return wrapping_add_(a.clone(memory_format=torch.contiguous_format), b)


def wrapping_sum(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Pure: sum_i tensors[i] in the ring of their dtype, as a new tensor (inputs untouched)."""
    if len(tensors) == 0:
        raise ValueError("tensors must hold at least 1 tensor, got 0")
    _check_ring_tensor("tensors[0]", tensors[0])
    for i, t in enumerate(tensors):
        _check_same_ring(f"tensors[{i}]", tensors[0], t)
    acc = torch.empty(tensors[0].shape, dtype=tensors[0].dtype)
    if len(tensors) == 1:
        return acc.copy_(tensors[0])
    out = as_ring_array(acc)
    np.add(as_ring_array(tensors[0]), as_ring_array(tensors[1]), out=out)
    for t in tensors[2:]:
        np.add(out, as_ring_array(t), out=out)
    return acc
