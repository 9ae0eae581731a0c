"""Client-level DP: clipping a client's update, and noise shares whose (secure) sum carries
the full noise, less what the dropouts took."""

import pytest
import torch

from fedsim.dp.client_level import add_noise_share, clip_update, noise_share_std, realized_noise_multiplier


def test_clip_update_bounds_the_norm_and_keeps_small_updates():
    big = torch.full((100,), 1.0)
    assert torch.linalg.vector_norm(clip_update(big, 2.0)) == pytest.approx(2.0)
    small = torch.full((4,), 0.1)
    assert torch.equal(clip_update(small, 2.0), small)
    with pytest.raises(ValueError, match="clip_norm=0"):
        clip_update(small, 0)


def test_noise_shares_sum_to_the_full_noise_and_dropouts_lower_it():
    z, clip, m = 1.3, 0.5, 8
    g = torch.Generator().manual_seed(0)
    total = sum(add_noise_share(torch.zeros(200_000), noise_share_std(z, clip, m), g) for _ in range(m))
    # sample std of 2e5 normals: relative standard error ~ 1/sqrt(4e5) = 0.0016
    assert float(total.std()) == pytest.approx(z * clip, rel=0.01)
    assert realized_noise_multiplier(z, m, m) == z
    assert realized_noise_multiplier(z, m, 2) == pytest.approx(z / 2)
    assert realized_noise_multiplier(z, m, 2 * m) == pytest.approx(z * 2**0.5)  # a large Poisson cohort
    with pytest.raises(ValueError, match="survivors=-1"):
        realized_noise_multiplier(z, m, -1)


@pytest.mark.parametrize("dropped", [set(), {2, 5}])
def test_secure_sum_of_noise_shares_has_the_full_variance_minus_dropouts(dropped):
    """m clients send only their noise shares through the real protocol: the decoded sum's
    variance is (zS)²·s/m for s survivors, i.e. the realized multiplier z·√(s/m)."""
    import os

    from secagg import FixedPointCodec
    from secagg.protocol import ProtocolParams, run_in_memory

    z, clip, m, dim = 1.5, 0.2, 8, 20_000
    codec = FixedPointCodec(4.0, m, 32)
    g = torch.Generator().manual_seed(4)
    std = noise_share_std(z, clip, m)
    inputs = {u: codec.encode(add_noise_share(clip_update(torch.zeros(dim), clip), std, g), g).numpy().view("uint32") for u in range(1, m + 1)}
    params = ProtocolParams(session=os.urandom(16), round_idx=1, client_ids=tuple(range(1, m + 1)), dim=dim, threshold=5)
    server = run_in_memory(params, inputs, {"MaskedInputCollection": dropped})
    assert not server.aborted and len(server.survivors) == m - len(dropped)
    total = codec.decode_sum(server.result)
    realized = realized_noise_multiplier(z, m, len(server.survivors))
    # sample std of 2e4 normals: relative standard error 0.5%; allow 3%
    assert float(total.std()) == pytest.approx(realized * clip, rel=0.03)
