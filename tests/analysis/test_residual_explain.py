import json

import numpy as np
import pytest

from embedlab.analysis import permutation, vocab
from embedlab.analysis.bootstrap import bootstrap_stability
from embedlab.analysis.checks import compare_nonsemantic
from embedlab.analysis.correct import gram_schmidt, project_out, rave_shift_direction
from embedlab.analysis.explain import centre, deflation_rankings, explain_vectors
from embedlab.analysis.formula import l2n, rave_residual
from embedlab.analysis.residual_file import load_residual
from tests.helpers.extraction import run_cli


def test_rave_formula_and_thr():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 16)), rng.normal(size=(60, 16)) + 0.5
    r, thr, v_from, v_to = rave_residual(a, b)
    na, nb = l2n(a), l2n(b)
    exp_from, exp_to = l2n(na.mean(0)), l2n(nb.mean(0))
    assert np.allclose(r, l2n(exp_to - exp_from)) and np.isclose(thr, exp_to @ r)
    assert np.isclose(thr, np.sqrt((1 - exp_from @ exp_to) / 2))  # method.md 2.2
    stab = bootstrap_stability(a, b, n_boot=50)
    assert 0.5 < stab["mean_cosine"] <= 1 and stab["ci95"][0] <= stab["mean_cosine"] <= stab["ci95"][1]


def test_cut_context_text_encoding_is_exact(tiny_model):
    from embedlab import models

    texts = ["backlit", "a photo of a cat on a sunny day", "x", "a very long prompt " * 3]
    cut = models.encode_texts(tiny_model, texts, cut_context=True)
    full = models.encode_texts(tiny_model, texts, cut_context=False)
    assert np.abs(cut - full).max() < 1e-5
    raw = models.encode_texts(tiny_model, texts, normalize=False)
    assert np.allclose(l2n(raw), full, atol=1e-5)


def test_text_embeddings_are_cached(tiny_model):
    concepts = ["sunny", "dark", "cat"]
    e1, info1 = vocab.embed_concepts(tiny_model, concepts, ["a photo of {}."])
    e2, info2 = vocab.embed_concepts(tiny_model, concepts, ["a photo of {}."])
    assert info1["cache"] == "miss" and info2["cache"] == "hit" and np.array_equal(e1, e2)
    tokens = vocab.tokenizer_tokens(tiny_model.tokenizer)
    assert len(tokens) == 49408
    words = vocab.words_from_tokens(tokens)
    assert "photo" in words and all(w.isalpha() for w in words)


def test_a_cached_call_builds_no_tokenizer(tiny_model):
    """The token vocabulary and the tokenizer's identity come from a cache on the second call: a lazy handle
    (what explain-residual uses) then never builds the tokenizer, which would import all of open_clip."""
    from embedlab import models

    first = models.TextModelHandle("embedlab-tiny", "none", "sha-not-checked-here", 64)
    v1 = vocab.resolve_vocab("tokens", first)
    second = models.TextModelHandle("embedlab-tiny", "none", "sha-not-checked-here", 64)
    v2 = vocab.resolve_vocab("tokens", second)
    assert second._tokenizer is None
    assert (
        v2.concepts == v1.concepts == list(dict.fromkeys(t for t in vocab.tokenizer_tokens(tiny_model.tokenizer) if t))
    )
    assert (second.info["tokenizer"], second.info["context_length"]) == (
        first.info["tokenizer"],
        first.info["context_length"],
    )


@pytest.fixture(scope="module")
def planted_vocab():
    """A real (random-init) open_clip text tower: the 128-d embedlab-demo architecture (64-d towers crowd a
    3,000-word vocabulary so much that mixtures of two planted directions match some unrelated word)."""
    from embedlab import models

    lm = models.load_model("embedlab-demo", "none", "cpu")
    words = vocab.words_from_tokens(vocab.tokenizer_tokens(lm.tokenizer))[:3000]
    extra = ["sunlit", "sunlight", "sunlighting", "puppy", "puppies", "puppy dog"]  # synonyms, near-duplicates
    concepts = [w for w in words if w not in extra] + extra
    E, _ = vocab.embed_concepts(lm, concepts, ["{}"])
    C, _ = centre(E)
    return concepts, E, C


def _planted_sets(concepts, C, seed, n=400, light_w=0.2, bias_w=0.15):
    rng = np.random.default_rng(seed)
    d = C.shape[1]
    light, bias = C[concepts.index("sunlit")], C[concepts.index("puppy")]
    centre = l2n(rng.normal(size=d))
    noise = 0.5 / np.sqrt(d)  # within-set spread: pairwise cosines around 0.8, as for CLIP image sets
    A = l2n(centre + noise * rng.normal(size=(n, d)))
    B = l2n(centre + noise * rng.normal(size=(n, d)) + light_w * light + bias_w * bias)
    return A, B, light, bias


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_lighting_and_bias_are_found_and_significant(planted_vocab, seed):
    concepts, E, C = planted_vocab
    A, B, light, bias = _planted_sets(concepts, C, seed)
    r = rave_residual(A, B)[0]
    out = explain_vectors(r, E, concepts, A, B, top=10, permutations=1000, seed=seed)
    top2 = set(out["adds"]["concept"].head(2))
    assert top2 == {"sunlit", "puppy"}, out["adds"].head(5)
    assert (out["adds"]["p_fwer"].head(2) < 0.05).all()
    assert (out["adds"]["p_fwer_deflated"].head(2) < 0.05).all()
    assert out["info"]["permutation"]["K"] == 1000
    assert out["info"]["permutation"]["smallest_attainable_p"] == pytest.approx(1 / 1001)
    # correcting the bias word removes >= 95% of the projection on it and keeps the lighting direction
    r2, stats = project_out(r, [bias])
    assert abs(r2 @ bias) <= 0.05 * abs(r @ bias)
    assert l2n(r2) @ l2n(light) >= 0.9


def test_a_weaker_bias_is_still_found_by_the_deflated_test(planted_vocab):
    """The marginal max-statistic test compares raw scores; a bias much smaller than the lighting shift only
    stands out once lighting is deflated, which the sequential (deflated) test accounts for."""
    concepts, E, C = planted_vocab
    A, B, light, bias = _planted_sets(concepts, C, 0, light_w=0.3, bias_w=0.06)
    out = explain_vectors(rave_residual(A, B)[0], E, concepts, A, B, top=5, permutations=1000)
    assert list(out["adds"]["concept"].head(2)) == ["sunlit", "puppy"]
    assert out["adds"]["p_fwer_deflated"].iloc[1] < 0.05


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_negative_control_two_halves_of_one_set(planted_vocab, seed):
    concepts, E, C = planted_vocab
    A, _, _, _ = _planted_sets(concepts, C, seed, n=400)  # two halves of 200
    rng = np.random.default_rng(100 + seed)
    idx = rng.permutation(len(A))
    h1, h2 = A[idx[:200]], A[idx[200:]]
    r = rave_residual(h1, h2)[0]
    out = explain_vectors(r, E, concepts, h1, h2, top=10, permutations=1000, seed=seed)
    for side in ("adds", "removes"):
        assert (out[side]["p_fwer"] >= 0.05).all()
        assert (out[side]["p_fwer_deflated"] >= 0.05).all()
    assert out["info"]["candidates_q_below_05"] == 0


def test_family_wise_error_rate_is_calibrated(planted_vocab):
    """Under the null a valid 5% test rejects in about 5% of splits (the fixed seeds above are three of them):
    the page (both lists) is one family. (tests/test_significance.py checks the rate on 500 splits.)"""
    concepts, E, C = planted_vocab
    A, _, _, _ = _planted_sets(concepts, C, 7, n=200)
    false_pos = 0
    n_splits = 60
    for t in range(n_splits):
        idx = np.random.default_rng(500 + t).permutation(len(A))
        h1, h2 = A[idx[:100]], A[idx[100:]]
        out = explain_vectors(rave_residual(h1, h2)[0], E, concepts, h1, h2, top=3, permutations=200, seed=t)
        false_pos += bool((out["adds"]["p_fwer"] < 0.05).any() or (out["removes"]["p_fwer"] < 0.05).any())
    assert false_pos / n_splits <= 0.15  # binomial(60, 0.05): P(>= 10) < 0.2%


def test_permutation_respects_groups():
    is_to = np.array([0, 0, 1, 1, 0, 1], bool)
    groups = np.array(["a", "a", "a", "b", "b", "b"])  # groups span both sets: shuffle within groups
    labels, info = permutation.permutation_labels(is_to, groups, 50, 0)
    assert "within groups" in info["scheme"]
    for row in labels:
        assert row[:3].sum() == 1 and row[3:].sum() == 2
    nested = np.array(["a", "a", "b", "b", "c", "c"])
    labels, info = permutation.permutation_labels(np.array([0, 0, 1, 1, 0, 0], bool), nested, 20, 0)
    assert info["scheme"].startswith("groups permuted") and info["distinct_shuffles"] == pytest.approx(3)
    for row in labels:
        assert row[0] == row[1] and row[2] == row[3] and row[4] == row[5]


def test_projection_helpers():
    rng = np.random.default_rng(0)
    D = rng.normal(size=(3, 10))
    Q = gram_schmidt(np.vstack([D, D[0] + D[1]]))
    assert Q.shape == (3, 10) and np.allclose(Q @ Q.T, np.eye(3), atol=1e-10)
    r = l2n(rng.normal(size=10))
    r2, stats = project_out(r, D)
    assert np.allclose(D @ r2, 0, atol=1e-10) and np.isclose(np.linalg.norm(r2), 1)
    r3, _ = project_out(r2, D)
    assert np.allclose(r3, r2)  # idempotent
    E = rng.normal(size=(100, 10))
    u, detail = rave_shift_direction(r, E, k=15)
    assert len(detail["top_indices"]) == 15 and np.isclose(np.linalg.norm(u), 1)
    s = (E @ r) / np.linalg.norm(E, axis=1)
    top, bot = np.argsort(-s)[:15], np.argsort(s)[:15]
    a, b = l2n((s[top, None] * E[top]).mean(0)), l2n((s[bot, None] * E[bot]).mean(0))
    assert np.allclose(u, l2n(a + b))


def test_nonsemantic_comparison_warns_on_resolution():
    import pandas as pd

    a = pd.DataFrame(
        {
            "width": [256] * 20,
            "height": [256] * 20,
            "jpeg_quality": [75.0] * 20,
            "mean_luma": np.linspace(0.2, 0.4, 20),
            "format": ["JPEG"] * 20,
        }
    )
    b = pd.DataFrame(
        {
            "width": [2040] * 20,
            "height": [1356] * 20,
            "jpeg_quality": [None] * 20,
            "mean_luma": np.linspace(0.25, 0.45, 20),
            "format": ["PNG"] * 20,
        }
    )
    out = compare_nonsemantic(a, b)
    text = " ".join(out["warnings"])
    assert "width separates" in text and "formats differ" in text


def _cli(*args):
    return run_cli(*args, timeout=600)


def test_end_to_end_cli_flow(tmp_path, tiny_run, demo_manifest):
    from embedlab.datasets.manifest import read_manifest

    n_backlit = sum(e.role == "backlit" and e.split == "train" for e in read_manifest(demo_manifest).entries)
    res = tmp_path / "residual.npy"
    r = _cli(
        "residual",
        str(tiny_run),
        "--from",
        "role=backlit,split=train",
        "--to",
        "role=welllit,split=train",
        "--out",
        str(res),
        "--bootstrap",
        "50",
    )
    assert r.returncode == 0, r.stderr
    vec = np.load(res, allow_pickle=False)
    assert vec.dtype == np.float32 and vec.shape == (64,)
    side = json.loads(res.with_suffix(".json").read_text())
    assert side["from"]["count"] == n_backlit and side["bootstrap"]["unit"] == "group" and "thr" in side
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("cat\nflower\n<b>bold</b>\nrocket\nbacklit\nwell-lit\nperson\nmotorcycle\n")
    rep = tmp_path / "report"
    r = _cli(
        "explain-residual",
        str(res),
        "--vocab",
        str(vocab_file),
        "--top",
        "5",
        "--permutations",
        "200",
        "--out",
        str(rep),
        "--device",
        "cpu",
    )
    assert r.returncode == 0, r.stderr
    for f in ("report.json", "report.csv", "report.md", "report.html"):
        assert (rep / f).stat().st_size > 0
    html = (rep / "report.html").read_text()
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    report = json.loads((rep / "report.json").read_text())
    assert report["info"]["permutation"]["K"] == 200 and report["exemplars"]
    corrected = tmp_path / "corrected.npy"
    r = _cli(
        "correct",
        str(res),
        "--remove",
        "cat",
        "--remove-pair",
        "a photo of a flower|a photo",
        "--vocab",
        str(vocab_file),
        "--out",
        str(corrected),
        "--device",
        "cpu",
    )
    assert r.returncode == 0, r.stderr
    assert "  cat: projection" in r.stdout and "  a photo of a flower: projection" in r.stdout  # labelled by edit
    c = load_residual(corrected)
    assert len(c.info["edits"]) == 2 and c.info["correction"]["cos_before_after"] < 1
    for d in c.info["correction"]["directions"]:
        assert abs(d["projection_after"]) < 1e-6
    r = _cli(
        "correct",
        str(res),
        "--preset",
        "rave-shift",
        "--top",
        "15",
        "--out",
        str(tmp_path / "shift.npy"),
        "--device",
        "cpu",
    )
    assert r.returncode == 0, r.stderr
    shifted = load_residual(tmp_path / "shift.npy")
    assert len(shifted.info["edits"][0]["removed_info_from"]) == 15
    r = _cli("correct", str(res), "--remove-labelled", f"{tiny_run}:group=chelsea", "--out", str(tmp_path / "inlp.npy"))
    # a random tiny model may give nothing learnable; then the command must say so, not fail obscurely
    assert r.returncode == 0 or "No linear direction predicts" in r.stderr, r.stderr
    if r.returncode == 0:  # every learned direction is labelled by the one edit it came from
        lines = [ln for ln in r.stdout.splitlines() if ": projection" in ln]
        n = len(load_residual(tmp_path / "inlp.npy").info["correction"]["directions"])
        assert len(lines) == n and all("group=chelsea" in ln for ln in lines), r.stdout
    r = _cli("plot", str(tiny_run), "--residual", str(res), "--out", str(tmp_path / "plots"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "plots" / "map_pca.png").exists() and (tmp_path / "plots" / "map_umap.png").exists()
    assert (tmp_path / "plots" / "projector" / "metadata.tsv").read_text().startswith("row_id\t")


def test_mismatched_residual_is_refused(tmp_path, tiny_run):
    from embedlab.analysis.correct import correct
    from embedlab.analysis.residual import residual
    from embedlab.analysis.residual_file import save_residual
    from embedlab.errors import IncompatibleRunError

    res = residual(tiny_run, "backlit", "welllit", tmp_path / "r.npy", bootstrap=0)
    info = dict(res.info)
    info["model"] = dict(info["model"], weights_sha256="0" * 64)
    save_residual(tmp_path / "bad.npy", res.vector, info)
    with pytest.raises(IncompatibleRunError):
        correct(tmp_path / "bad.npy", tmp_path / "c.npy", remove_pair=[("a", "b")], device="cpu")


def test_inlp_finds_and_removes_a_planted_attribute():
    from embedlab.analysis.correct import inlp_directions

    rng = np.random.default_rng(0)
    d = 32
    attr = l2n(rng.normal(size=d))
    y = rng.random(400) < 0.5
    X = l2n(rng.normal(size=(400, d)) * 0.2 + np.outer(np.where(y, 1.0, -1.0), attr) * 0.5)
    D, history = inlp_directions(X, y)
    assert len(D) >= 1 and history[0]["heldout_accuracy"] > 0.95
    assert abs(l2n(D[0]) @ attr) > 0.8
    assert history[-1]["heldout_accuracy"] <= history[-1]["majority_rate"] + 0.05 or len(D) == 10


def sequential_max_reference(S0, sign, A, B, picked) -> np.ndarray:
    """NumPy reference of `permutation.sequential_max`."""
    inv, pen = permutation.step_tables(A, picked)
    S = (sign * S0).astype(np.float32)
    rn2 = np.ones(len(S))
    out = np.empty((len(S), len(picked)))
    for i in range(len(picked)):
        out[:, i] = (S * inv[i] + pen[i]).max(1) / np.sqrt(np.maximum(rn2, 1e-12))
        S -= B[:, i : i + 1] * A[i][None, :]
        rn2 -= B[:, i].astype(np.float64) ** 2
    return out


def test_fused_sequential_null_matches_the_numpy_reference():
    rng = np.random.default_rng(0)
    K, V, m, d = 40, 3000, 5, 32
    C = l2n(rng.normal(size=(V, d))).astype(np.float32)
    T = np.linalg.qr(rng.normal(size=(d, m)))[0].T.astype(np.float32)
    R = l2n(rng.normal(size=(K, d))).astype(np.float32)
    S0 = R @ C.T
    A = np.ascontiguousarray((C @ T.T).T)
    for sign in (1.0, -1.0):
        B = np.ascontiguousarray(sign * (R @ T.T))
        picked = np.array([3, 10, 20, 30, 40])
        fast = permutation.sequential_max(S0, sign, A, B, picked)
        ref = sequential_max_reference(S0, sign, A, B, picked)
        assert np.allclose(fast, ref, atol=1e-6)


@pytest.mark.parametrize("block", [1, 97])
def test_blocked_permutation_null_matches_a_direct_computation(block):
    """The null is computed block by block over the vocabulary in several threads: it must equal scoring
    every shuffle against the whole vocabulary at once (block 1: blocks holding only a concept out of the
    race, whose partial maximum is -inf)."""
    rng = np.random.default_rng(1)
    n, V, d = 30, 400, 24
    X = l2n(rng.normal(size=(n, d)))
    C = l2n(rng.normal(size=(V, d))).astype(np.float32)
    labels, _ = permutation.permutation_labels(np.arange(n) >= 12, None, 50, seed=0)
    r = l2n(rng.normal(size=d))
    picks = deflation_rankings(r, C, 6)
    deflations = {
        side: (sign, [p["index"] for p in pk], np.array([p["direction"] for p in pk]))
        for side, sign, pk in (("adds", 1.0, picks[0]), ("removes", -1.0, picks[1]))
    }
    got = permutation.permutation_null(X, labels, C, "rave", deflations, block=block, rows=16, threads=3)
    R = permutation.shuffled_residuals(X, labels, "rave")
    S0 = R @ C.T
    assert np.allclose(got["max"], S0.max(1), atol=1e-6) and np.allclose(got["min"], S0.min(1), atol=1e-6)
    for side, (sign, idx, T) in deflations.items():
        A = np.ascontiguousarray(T.astype(np.float32) @ C.T)
        B = sign * (R @ T.T.astype(np.float32))
        ref = sequential_max_reference(S0, sign, A, B, np.array(idx))
        assert np.allclose(got["seq_" + side], ref, atol=1e-5)
    # the first step of each side is the plain maximum (of -score for 'removes')
    assert np.allclose(got["seq_adds"][:, 0], got["max"], atol=1e-6)
    assert np.allclose(got["seq_removes"][:, 0], -got["min"], atol=1e-6)


def test_deflation_rankings_follow_the_definition():
    """Against the definition, with every candidate materialised: pick the best cosine with the residual,
    project the pick out of the residual and of every candidate, renormalise, repeat (both signs at once)."""
    rng = np.random.default_rng(2)
    C = l2n(rng.normal(size=(500, 16))).astype(np.float32)
    r = l2n(rng.normal(size=16))
    both = deflation_rankings(r, C, 8)
    for sign, fast in zip((1.0, -1.0), both):
        rr, D, picked = sign * r, C.astype(np.float64), []
        for step in range(8):
            norms = np.linalg.norm(D, axis=1)
            cos = (D @ rr) / np.maximum(norms, 1e-12) / np.linalg.norm(rr)
            cos[picked] = -np.inf
            j = int(np.argmax(cos))
            assert fast[step]["index"] == j
            assert np.isclose(fast[step]["cosine_at_pick"], cos[j], atol=1e-5)
            t = D[j] / norms[j]
            picked.append(j)
            rr = rr - (rr @ t) * t
            D = D - np.outer(D @ t, t)
        assert np.isclose(fast[-1]["cum_explained"], 1 - rr @ rr, atol=1e-6)
