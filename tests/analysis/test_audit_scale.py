"""The audit's streamed one-vs-rest pass equals a direct numpy computation on a small array."""

import numpy as np
import pytest

from embedlab.analysis.audit_scale import column_screen, omnibus_screen, slice_sums


def _data(seed=0, n=503, d=7):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    n_values = [3, 5, 2]
    codes = [rng.integers(k, size=n) for k in n_values]
    codes[1][:9] = -1  # missing values belong to no slice
    return X, codes, n_values


def _direct(X, mask):
    X = X.astype(np.float64)
    n, n_in = len(X), int(mask.sum())
    d = X[mask].mean(0) - X[~mask].mean(0)
    tr = float(((X - X.mean(0)) ** 2).sum())
    e0 = (1 / n_in + 1 / (n - n_in)) * tr / (n - 1)
    return float(d @ d), e0


@pytest.mark.parametrize("block,threads", [(64, 1), (503, 1), (1000, 1), (100, 3)])
def test_slice_sums_and_screen_match_numpy(block, threads):
    X, codes, n_values = _data()
    blocks = (X[i : i + block] for i in range(0, len(X), block))
    acc = slice_sums(blocks, codes, n_values, threads=threads)
    assert acc["n"] == len(X)
    np.testing.assert_allclose(acc["total"], X.astype(np.float64).sum(0), rtol=1e-5, atol=2e-5)  # float32 per block
    np.testing.assert_allclose(acc["sumsq"], float((X.astype(np.float64) ** 2).sum()), rtol=1e-6)  # float32 rows
    scr = omnibus_screen(acc["sums"], acc["counts"], acc["total"], acc["sumsq"], acc["n"])
    row = 0
    for k, nk in enumerate(n_values):
        for v in range(nk):
            mask = codes[k] == v
            assert acc["counts"][row] == mask.sum()
            np.testing.assert_allclose(acc["sums"][row], X[mask].astype(np.float64).sum(0), rtol=1e-5, atol=2e-5)
            d2, e0 = _direct(X, mask)
            assert scr["d2"][row] == pytest.approx(d2, rel=1e-4, abs=1e-7)
            assert scr["e0"][row] == pytest.approx(e0, rel=1e-6)
            assert scr["effect"][row] == pytest.approx(d2 - e0, rel=1e-4, abs=1e-7)
            assert scr["T"][row] == pytest.approx(d2 / e0, rel=1e-4, abs=1e-5)
            row += 1
    cols = column_screen(scr["T"], n_values)
    assert cols.shape == (3,) and cols[0] == pytest.approx(scr["T"][:3].mean())


def test_null_ratio_is_about_one_and_a_planted_value_stands_out():
    rng = np.random.default_rng(1)
    n, d = 4000, 16
    X = rng.normal(size=(n, d)).astype(np.float32)
    codes = [rng.integers(10, size=n)]
    X[codes[0] == 3, 0] += 0.5
    acc = slice_sums([X[:1500], X[1500:]], codes, [10])
    T = omnibus_screen(acc["sums"], acc["counts"], acc["total"], acc["sumsq"], acc["n"])["T"]
    assert np.argmax(T) == 3 and T[3] > 5
    assert 0.3 < np.median(np.delete(T, 3)) < 2.5


def test_rows_and_codes_must_agree():
    X, codes, n_values = _data()
    with pytest.raises(ValueError, match="rows"):
        slice_sums([X[:100]], codes, n_values)
    with pytest.raises(ValueError, match="more rows"):
        slice_sums([X, X], codes, n_values)


def test_empty_slice_is_nan():
    X, codes, n_values = _data()
    codes[2][:] = 0  # value 1 of the last column has no image
    acc = slice_sums([X], codes, n_values)
    scr = omnibus_screen(acc["sums"], acc["counts"], acc["total"], acc["sumsq"], acc["n"])
    assert np.isnan(scr["T"][-1]) and np.isnan(scr["T"][-2])  # no image inside / none outside


@pytest.mark.parametrize("threads,dtype", [(1, np.float64), (2, np.float32), (3, np.float64)])
def test_membership_sums_equal_the_sparse_product(threads, dtype):
    """Rows in no slice, in one, in many (conjunctions overlap): the threaded kernel equals M.T @ X."""
    import scipy.sparse as sp

    from embedlab.analysis.null_kernels import membership_sums

    rng = np.random.default_rng(3)
    n, d, S = 5000, 9, 13
    X = rng.normal(size=(n, d)).astype(dtype)
    M = sp.csr_matrix(rng.random((n, S)) < 0.2)
    sums, sq = membership_sums(X, M.indptr, M.indices, S, threads=threads)
    expect = np.asarray(M.T.astype(np.float64) @ X.astype(np.float64))
    np.testing.assert_allclose(sums, expect, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-4)
    assert sq == pytest.approx(float((X.astype(np.float64) ** 2).sum()), rel=1e-6)


def test_membership_sums_refuse_an_index_out_of_range():
    from embedlab.analysis.null_kernels import membership_sums

    with pytest.raises(ValueError, match="CSR membership"):
        membership_sums(np.ones((2, 3)), np.array([0, 1, 2]), np.array([0, 5]), 3)  # slice 5 of 3
    with pytest.raises(ValueError, match="CSR membership"):
        membership_sums(np.ones((2, 3)), np.array([0, 1]), np.array([0]), 3)  # indptr of one row for two


def test_prefetched_keeps_order_raises_the_readers_error_and_stops_early():
    from embedlab._io import prefetched

    assert list(prefetched(iter(range(50)), depth=2)) == list(range(50))

    def failing():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(prefetched(failing()))
    produced = []

    def counting():
        for i in range(1000):
            produced.append(i)
            yield i

    it = prefetched(counting())
    assert next(it) == 0
    it.close()  # the consumer stops: the producer stops too, a queue's length ahead at most
    assert len(produced) <= 4


def test_prefetched_blocks_with_three_buffers_are_not_overwritten_while_used(tmp_path):
    """The reader of the scale benchmark reuses three buffers; one block ahead, no block changes while summed."""
    import time

    from analyses.bench.audit_scale import read_blocks
    from embedlab._io import prefetched

    X = np.random.default_rng(0).normal(size=(1000, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    seen = []
    for block in prefetched(read_blocks(tmp_path / "x.npy", rows=64, buffers=3)):
        copy = block.copy()
        time.sleep(0.002)  # the producer reads ahead meanwhile
        np.testing.assert_array_equal(block, copy)
        seen.append(copy)
    np.testing.assert_array_equal(np.concatenate(seen), X)


def test_the_memory_budget_counts_slice_weights_and_the_permutation_table():
    """A million units with 1,000 slices and 999 permutations need far more than their vectors: refused up front."""
    from embedlab.analysis.audit_pass import check_units_fit
    from embedlab.errors import ConfigError

    G, d = 1_000_000, 512
    fits = 3 * G * d * 8 + 4 * G  # the vectors and the observed labelling
    check_units_fit(G, d, False, fits)
    with pytest.raises(ConfigError, match="permutations"):
        check_units_fit(G, d, False, fits, n_slices=1000, permutations=999)


def test_screen_concept_scores_name_the_planted_direction():
    """A value whose images are moved along one centred concept: its difference direction scores that concept first
    (positive), and the opposite value's scores it last (negative)."""
    from embedlab.analysis.audit_scale import screen_concept_scores, slice_differences

    rng = np.random.default_rng(2)
    n, d, V = 3000, 24, 12
    C = rng.normal(size=(V, d))
    C /= np.linalg.norm(C, axis=1, keepdims=True)
    X = rng.normal(size=(n, d))
    hit = rng.random(n) < 0.2
    X[hit] += 0.8 * C[5]
    sums = np.stack([X[hit].sum(0), X[~hit].sum(0)])
    D = slice_differences(sums, [hit.sum(), (~hit).sum()], X.sum(0), n)
    np.testing.assert_allclose(D[0], X[hit].mean(0) - X[~hit].mean(0))
    scores = screen_concept_scores(D, C)
    assert scores[0].argmax() == 5 and scores[0, 5] > 0.5
    assert scores[1].argmin() == 5 and scores[1, 5] < -0.5
