"""MUVERA FDE invariants (algorithms.md §1.6 item 1, a–h), MaxSim, ball carving, and how well FDE
inner products track exact Chamfer on real MiniLM token embeddings."""

import numpy as np
import pytest

from index.errors import Invalid
from index.fde import FdeEncoder, MultiVectorConfig
from index.maxsim import TokenBatch, ball_carve, chamfer, chamfer_many

D = 48


def unit(rng, n, d=D):
    X = rng.standard_normal((n, d)).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


@pytest.fixture
def rng():
    return np.random.default_rng(11)


def test_a_single_tokens_identity_projection_give_r_times_inner_product(rng):
    fde = FdeEncoder(MultiVectorConfig(token_dim=D, repetitions=7, simhash_bits=4, projection_dim=None))
    for _ in range(20):
        q, p = unit(rng, 1), unit(rng, 1)
        got = (fde.queries([q]) @ fde.documents([p]).T).item()
        assert got == pytest.approx(7 * (q @ p.T).item(), abs=1e-5)


def test_b_one_bucket_one_repetition_is_sum_query_dot_mean_document(rng):
    fde = FdeEncoder(MultiVectorConfig(token_dim=D, repetitions=1, simhash_bits=0, projection_dim=None))
    Q, P = unit(rng, 6), unit(rng, 11)
    assert (fde.queries([Q]) @ fde.documents([P]).T).item() == pytest.approx(float(Q.sum(0) @ P.mean(0)), abs=1e-5)


def test_c_token_order_does_not_matter(rng):
    fde = FdeEncoder(MultiVectorConfig(token_dim=D, simhash_bits=3, projection_dim=8))
    P, Q = unit(rng, 5), unit(rng, 9)  # 5 tokens in 8 buckets: fills (and their ties) are exercised
    for _ in range(5):
        assert np.allclose(fde.documents([P]), fde.documents([P[rng.permutation(5)]]), atol=1e-6)
        assert np.allclose(fde.queries([Q]), fde.queries([Q[rng.permutation(9)]]), atol=1e-6)


def test_d_fixed_seed_is_deterministic_and_seeds_differ(rng):
    sets = [unit(rng, n) for n in (3, 17, 40)]
    a = FdeEncoder(MultiVectorConfig(token_dim=D, seed=5)).documents(sets)
    b = FdeEncoder(MultiVectorConfig(token_dim=D, seed=5)).documents(sets)
    c = FdeEncoder(MultiVectorConfig(token_dim=D, seed=6)).documents(sets)
    assert np.array_equal(a, b) and not np.allclose(a, c)


def test_d2_an_fde_does_not_depend_on_the_batch_it_is_encoded_in(rng):
    """What the store promises: a document's FDE is a function of its own tokens, so recomputing
    it from the stored tokens, alone or in any batch, gives the same vector. Both sides run on
    this machine with the same shapes per set, so the comparison is exact."""
    fde = FdeEncoder(MultiVectorConfig(token_dim=D, seed=5, final_dim=512))
    sets = [unit(rng, n) for n in (1, 3, 17, 40, 64, 200)]
    together = fde.documents(sets)
    for i, s in enumerate(sets):
        assert np.array_equal(together[i], fde.documents([s])[0])
    shuffled = [sets[i] for i in (5, 2, 0, 4, 1, 3)]
    assert np.array_equal(fde.documents([*shuffled, unit(rng, 300)])[:6], together[[5, 2, 0, 4, 1, 3]])
    assert np.array_equal(fde.queries(sets)[3], fde.queries([sets[3]])[0])


@pytest.mark.parametrize("R,k,P,final", [(20, 5, 16, None), (10, 4, 8, None), (3, 2, None, None), (20, 5, 16, 2048)])
def test_e_dimension(rng, R, k, P, final):
    config = MultiVectorConfig(token_dim=D, repetitions=R, simhash_bits=k, projection_dim=P, final_dim=final)
    expected = final or R * 2**k * (P or D)
    assert config.dim == expected
    assert FdeEncoder(config).documents([unit(rng, 4)]).shape == (1, expected)


def test_f_filled_document_has_no_empty_block(rng):
    config = MultiVectorConfig(token_dim=D, repetitions=6, simhash_bits=5, projection_dim=8)
    F = FdeEncoder(config).documents([unit(rng, 2), unit(rng, 1)]).reshape(2, 6, 32, 8)
    assert (np.abs(F).sum(axis=3) > 0).all()
    unfilled = (
        FdeEncoder(MultiVectorConfig(token_dim=D, repetitions=6, simhash_bits=5, projection_dim=8, fill_empty=False))
        .documents([unit(rng, 2)])
        .reshape(6, 32, 8)
    )
    assert (np.abs(unfilled).sum(axis=2) == 0).any()  # without fill, most of 32 buckets stay empty


def test_g_every_token_is_at_hamming_zero_from_its_own_bucket(rng):
    fde = FdeEncoder(MultiVectorConfig(token_dim=D, repetitions=4, simhash_bits=5))
    X = unit(rng, 200)
    b = fde.buckets(X)
    assert (fde.hamming(b, b) == 0).all()
    # the bucket id's bits are the token's sign pattern against the hyperplanes
    signs = (X @ fde._hyperplanes).reshape(200, 4, 5) > 0
    assert np.array_equal(((b[..., None] >> np.arange(5)) & 1).astype(bool), signs)
    # and distances to other buckets count differing signs
    assert fde.hamming(np.array([0b10110]), np.array([0b00011]))[0] == 3


def test_h_query_with_fill_is_an_error(rng):
    fde = FdeEncoder(MultiVectorConfig(token_dim=D))
    with pytest.raises(Invalid):
        fde.encode([unit(rng, 3)], "query", fill=True)


def test_empty_token_set_and_bad_configs_are_rejected(rng):
    fde = FdeEncoder(MultiVectorConfig(token_dim=D))
    with pytest.raises(Invalid):
        fde.documents([unit(rng, 3), np.zeros((0, D), np.float32)])
    for bad in (
        dict(projection_dim=D + 1),
        dict(simhash_bits=11),
        dict(repetitions=0),
        dict(final_dim=10**6),
        dict(repetitions=128, simhash_bits=10),
    ):
        with pytest.raises(Invalid):
            MultiVectorConfig(token_dim=D, **bad).check()


def test_chamfer_and_ball_carving(rng):
    Q, sets = unit(rng, 7), [unit(rng, n) for n in (1, 5, 30)]
    expected = [(Q @ P.T).max(axis=1).sum() for P in sets]
    assert np.allclose(chamfer(Q, sets), expected, atol=1e-5)
    assert np.allclose(chamfer(Q, sets[::-1]), expected[::-1], atol=1e-5)
    assert np.allclose(TokenBatch(sets).chamfer(Q), expected, atol=1e-5)
    # many queries at once, float16 sets streamed in slices (of 30 tokens here: the buffer is as
    # large as the largest set, so the 30-token set goes alone and the last four together);
    # each cell is the one-query score
    Qs = [unit(rng, m) for m in (1, 4, 9)]
    half = [unit(rng, n).astype(np.float16) for n in (3, 30, 1, 7, 8, 2)]
    many = chamfer_many(Qs, half, slice_tokens=8)
    assert many.shape == (3, 6)
    for i, Qi in enumerate(Qs):
        one = [(Qi @ h.astype(np.float32).T).max(axis=1).sum() for h in half]
        assert np.allclose(many[i], one, atol=1e-5)
    assert chamfer_many(Qs, []).shape == (3, 0) and chamfer_many([], half).shape == (0, 6)
    # tokens that are near-copies collapse into one cluster whose row is their sum
    base = unit(rng, 3)
    noisy = np.concatenate([base, base + 0.01 * unit(rng, 3)])
    carved = ball_carve(noisy / np.linalg.norm(noisy, axis=1, keepdims=True), 0.7)
    assert carved.shape == (3, D)
    assert ball_carve(base, 1.0).shape == (3, D)  # nothing merges above similarity 1
