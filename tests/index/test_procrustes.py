"""Maps between encoders: recovery of known maps by each family, orthogonality, the extra-dims layout,
and the score calibration used while a gallery is half backfilled."""

import numpy as np
import pytest

from index.procrustes import complete_rotation, fit_calibration, fit_orthogonal_map, map_queries, orthogonality_error
from index.vectors import normalize


def random_orthonormal(rows: int, cols: int, seed: int) -> np.ndarray:
    """(rows, cols) with orthonormal columns (rows ≥ cols) or rows (rows < cols)."""
    A = np.random.default_rng(seed).standard_normal((max(rows, cols), min(rows, cols)))
    Q, _ = np.linalg.qr(A)
    return Q if rows >= cols else Q.T


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    return normalize(np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32))


def test_recovers_a_known_rotation():
    X_old = unit_rows(2000, 64, 0)
    R = random_orthonormal(64, 64, 1)
    X_new = (X_old @ R.T).astype(np.float32)  # new = old rotated: the map back is R
    W = fit_orthogonal_map(X_new, X_old)
    assert np.abs(W - R).max() < 1e-4
    assert orthogonality_error(W) < 1e-5
    assert np.abs(map_queries(X_new, W) - X_old).max() < 1e-4


def test_recovers_a_rotation_under_noise():
    X_old = unit_rows(3000, 32, 2)
    R = random_orthonormal(32, 32, 3)
    X_new = normalize((X_old @ R.T + 0.1 * np.random.default_rng(4).standard_normal(X_old.shape)).astype(np.float32))
    W = fit_orthogonal_map(X_new, X_old)
    assert orthogonality_error(W) < 1e-5
    assert np.abs(W - R).max() < 0.05
    fitted = np.einsum("ij,ij->i", map_queries(X_new, W), X_old).mean()
    true = np.einsum("ij,ij->i", map_queries(X_new, R), X_old).mean()  # the noise caps both near 0.87
    assert fitted >= true - 1e-3


@pytest.mark.parametrize("d_new,d_old", [(768, 384), (384, 768)])
def test_recovers_a_semi_orthogonal_embedding(d_new, d_old):
    """384→768: the old space holds an isometric copy of the new one; 768→384: the new space
    holds the old one plus extra dimensions. Either way Procrustes finds the embedding."""
    n = 4000
    if d_new > d_old:  # the new model = the old one embedded in more dims (+ extra content)
        E = random_orthonormal(d_new, d_old, 5)  # (d_new, d_old), orthonormal columns
        X_old = unit_rows(n, d_old, 6)
        extra = unit_rows(n, d_new, 7)
        extra -= (extra @ E) @ E.T  # orthogonal to the old content
        X_new = normalize((X_old @ E.T + 0.3 * extra).astype(np.float32))
        expected = E
    else:  # the old model = the new one embedded in more dims
        E = random_orthonormal(d_new, d_old, 8)  # (d_new, d_old), orthonormal rows
        X_new = unit_rows(n, d_new, 9)
        X_old = (X_new @ E).astype(np.float32)
        expected = E
    W = fit_orthogonal_map(X_new, X_old)
    assert W.shape == (d_new, d_old)
    assert orthogonality_error(W) < 1e-4
    assert np.abs(W - expected).max() < 0.02
    cos = np.einsum("ij,ij->i", map_queries(X_new, W), X_old)
    assert cos.mean() > 0.999


def test_extra_dims_layout_keeps_new_to_new_results_identical():
    """R = [W | W⊥] is orthogonal: z = q R keeps every new→new score, so top-10 is the same,
    and z[:d_o] is exactly q W, the old-compatible part."""
    d_new, d_old = 96, 64
    X_old = unit_rows(1500, d_old, 10)
    X_new = unit_rows(1500, d_new, 11)
    X_new[:, :d_old] += 2 * X_old
    X_new = normalize(X_new)
    W = fit_orthogonal_map(X_new, X_old)
    R = complete_rotation(W, seed=3)
    assert R.shape == (d_new, d_new)
    assert orthogonality_error(R) < 1e-5
    assert np.abs(R[:, :d_old] - W).max() == 0
    Z = X_new @ R
    assert np.abs(Z[:, :d_old] - X_new @ W).max() < 1e-5
    Q, G = X_new[:100], X_new[100:]
    top = np.argsort(-(Q @ G.T), axis=1)[:, :10]
    top_z = np.argsort(-((Q @ R) @ (G @ R).T), axis=1)[:, :10]
    assert (top == top_z).all()
    assert np.abs((Q @ G.T) - (Q @ R) @ (G @ R).T).max() < 1e-5
    with pytest.raises(ValueError):
        complete_rotation(W.T)


def test_fit_rejects_unpaired_rows():
    with pytest.raises(ValueError):
        fit_orthogonal_map(np.zeros((3, 4)), np.zeros((2, 4)))
    with pytest.raises(ValueError):
        fit_orthogonal_map(np.zeros((0, 4)), np.zeros((0, 4)))


def test_calibration_fits_a_line_and_falls_back_safely():
    x = np.linspace(0.2, 0.8, 50)
    cal = fit_calibration(x, 1.5 * x + 0.1)
    assert cal.scale == pytest.approx(1.5, abs=1e-6) and cal.offset == pytest.approx(0.1, abs=1e-6)
    flat = fit_calibration(np.full(5, 0.5), np.full(5, 0.7))  # degenerate: match the means
    assert flat.scale == 1.0 and flat.offset == pytest.approx(0.2)
    falling = fit_calibration(x, -x)  # a negative slope would reverse the order: refuse it
    assert falling.scale == 1.0
    assert np.all(np.diff(falling(x)) > 0)


def test_ridge_and_affine_maps_recover_what_a_rotation_cannot():
    """A new space that is a general linear map of the old one plus an offset (as models with
    different centres give): the least-squares families recover it, a rotation cannot."""
    from index.procrustes import LINEAR_KINDS, fit_map_kind

    rng = np.random.default_rng(3)
    X_old = normalize(rng.standard_normal((4000, 24)))
    A = rng.standard_normal((24, 32))  # not orthogonal: stretches some directions
    X_new = normalize(X_old @ A + 0.8 * rng.standard_normal(32))  # and a common offset
    fit, held = slice(0, 3000), slice(3000, None)
    cosine = {}
    for kind in LINEAR_KINDS:
        W = fit_map_kind(kind, X_new[fit], X_old[fit])
        assert W.shape == ((33, 24) if kind == "affine" else (32, 24))
        cosine[kind] = float(np.einsum("ij,ij->i", map_queries(X_new[held], W), X_old[held]).mean())
    assert min(cosine["affine"], cosine["ridge"]) > 0.99 > 0.8 > cosine["orthogonal"], cosine
    with pytest.raises(ValueError):
        fit_map_kind("mlp", X_new, X_old)


def test_the_gate_serves_the_best_family_that_passes_and_the_labelled_criterion_decides():
    from index.encoder_upgrade import gate, ndcg_at_k

    figures = {
        "maps": {
            "orthogonal": {"mean_cosine": 0.73, "recall_at_10": 0.64, "labelled_ndcg_at_10": 0.60},
            "ridge": {"mean_cosine": 0.84, "recall_at_10": 0.83, "labelled_ndcg_at_10": 0.66},
            "affine": {"mean_cosine": 0.86, "recall_at_10": 0.82, "labelled_ndcg_at_10": 0.64},
        }
    }
    by_thresholds = gate(figures, 0.8, 0.8)
    assert by_thresholds["passed"] and by_thresholds["map"] == "ridge"  # the better recall of the two that pass
    assert by_thresholds["maps"]["orthogonal"] != "passed" and by_thresholds["maps"]["affine"] == "passed"
    labelled = gate({**figures, "labelled": {"queries": 50, "old_to_old_ndcg_at_10": 0.645}}, 0.99, 0.99)
    assert labelled["passed"] and labelled["map"] == "ridge"  # the thresholds do not decide then
    assert labelled["maps"] == {
        "orthogonal": labelled["maps"]["orthogonal"],
        "ridge": "passed",
        "affine": "failed",
    } or (labelled["maps"]["affine"] != "passed")
    failed = gate({**figures, "labelled": {"queries": 50, "old_to_old_ndcg_at_10": 0.70}}, 0.0, 0.0)
    assert not failed["passed"] and failed["map"] == "ridge" and "no map passed" in failed["reason"]
    assert ndcg_at_k([["a", "b"], ["x"]], [{"a"}, {"y"}]) == pytest.approx(0.5)
    assert ndcg_at_k([["b", "a"]], [{"a"}]) == pytest.approx(1 / np.log2(3))


def test_slerp_moves_along_the_arc_and_keeps_the_old_query_where_there_is_none():
    from index.procrustes import slerp

    rng = np.random.default_rng(5)
    U, V = normalize(rng.standard_normal((200, 16))), normalize(rng.standard_normal((200, 16)))
    assert np.abs(slerp(U, V, 0.0) - U).max() < 1e-5 and np.abs(slerp(U, V, 1.0) - V).max() < 1e-5
    for alpha in (0.25, 0.5, 0.75):
        Z = slerp(U, V, alpha)
        assert np.abs(np.linalg.norm(Z, axis=1) - 1).max() < 1e-5
        total = np.arccos(np.clip(np.einsum("ij,ij->i", U, V), -1, 1))
        to_u = np.arccos(np.clip(np.einsum("ij,ij->i", U, Z), -1, 1))
        to_v = np.arccos(np.clip(np.einsum("ij,ij->i", Z, V), -1, 1))
        assert np.abs(to_u - alpha * total).max() < 1e-3 and np.abs(to_v - (1 - alpha) * total).max() < 1e-3
    same, opposite = slerp(U[:3], U[:3], 0.5), slerp(U[:3], -U[:3], 0.5)
    assert np.abs(same - U[:3]).max() < 1e-5 and np.abs(opposite - U[:3]).max() < 1e-5


def test_a_blend_serves_with_labels_when_it_alone_reaches_the_old_model_and_without_only_as_the_fallback():
    from index.encoder_upgrade import gate

    linear = {
        "orthogonal": {"mean_cosine": 0.73, "recall_at_10": 0.64, "labelled_ndcg_at_10": 0.58},
        "ridge": {"mean_cosine": 0.84, "recall_at_10": 0.83, "labelled_ndcg_at_10": 0.59},
    }
    blend = {"mean_cosine": 0.95, "recall_at_10": 0.93, "labelled_ndcg_at_10": 0.68, "alpha": 0.25, "base": "ridge"}
    figures = {"maps": {**linear, "blend": blend}, "labelled": {"queries": 200, "old_to_old_ndcg_at_10": 0.675}}
    verdict = gate(figures, 0.8, 0.8)
    assert verdict["passed"] and verdict["map"] == "blend" and (verdict["alpha"], verdict["base"]) == (0.25, "ridge")
    assert verdict["maps"]["ridge"] != "passed" and "alpha 0.25" in verdict["reason"]
    below = gate({**figures, "maps": {**linear, "blend": {**blend, "labelled_ndcg_at_10": 0.67}}}, 0.8, 0.8)
    assert not below["passed"] and "previous model" in below["reason"]
    # without labels the figures measure closeness to the old queries, which a blend has by
    # construction: it never serves then, and the best linear map is named even when none passes
    unlabelled = {"maps": {**linear, "blend": blend}}
    assert gate(unlabelled, 0.8, 0.8)["map"] == "ridge"
    refused = gate(unlabelled, 0.5, 0.5)
    assert refused["passed"] and refused["map"] == "ridge" and "labelled" in refused["maps"]["blend"]
    none = gate(unlabelled, 0.9, 0.9)
    assert not none["passed"] and none["map"] == "ridge" and "alpha" not in none
