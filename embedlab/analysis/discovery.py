"""Slices found in embedding space for the audit: k-means on one half of the test units, the clusters described and
tested on the other half (`embedlab.analysis.audit`). With a per-unit score the centres are found on the vectors and
the score together, so that they lean to where the score is worst; the other half's units join them by their
vectors alone, so that their scores, which the score test compares, chose nothing (a test half assigned by its own
scores claimed a difference in 97% of worlds with a score unrelated to the images:
analyses/results/audit_calibration.json)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedlab.analysis.formula import l2n
from embedlab.analysis.slices import Slice


@dataclass
class Discovery:
    """Clusters found on the discovery half: their centres (over the unit vectors, and the standardised score when
    one is given) and the units' vectors, which place every unit."""

    centres: np.ndarray
    feats: np.ndarray  # (G, d) unit vectors of the units
    scale: float  # the score's weight among the features (0: no score)
    test: np.ndarray  # (G,) the test half
    kept: list  # the cluster ids that became slices

    def labels(self) -> np.ndarray:
        """Each unit's nearest centre by its vector alone (the embedding part of the centres): a test unit's own
        score never decides its cluster, so the score test on the test half is not run on what chose the units."""
        c = self.centres[:, : self.feats.shape[1]]
        f = self.feats
        return np.argmin((f * f).sum(1)[:, None] - 2 * f @ c.T + (c * c).sum(1), axis=1)


def _standard(y: np.ndarray) -> np.ndarray:
    return (y - y.mean()) / (y.std() or 1.0)


def discover_slices(units, k: int, seed: int, scores: np.ndarray | None, min_groups: int):
    """(slices, split record, `Discovery`): k-means (scikit-learn, seeded) on the discovery half's unit vectors (and
    the standardised score, when given, so that the centres lean to where the score is worst), each test-half unit
    assigned to its nearest centre by its vector (`Discovery.labels`); with a score, one more slice: the 2/k (at most
    half) of the test-half units where a regression on the vectors predicts the worst score (`worst_score_units`;
    twice a cluster's average share, so that a problem smaller than a cluster is mostly inside it). A slice with
    fewer than `min_groups` test-half units in it or out of it is left out."""
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(seed)
    order = rng.permutation(units.G)
    test = np.zeros(units.G, bool)
    test[order[units.G // 2 :]] = True
    feats = l2n(units.U)
    scale = 0.0 if scores is None else float(np.sqrt(np.mean(np.sum((feats - feats.mean(0)) ** 2, 1))))
    full = feats if scores is None else np.c_[feats, _standard(scores)[:, None] * scale]
    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(full[~test])
    disc = Discovery(km.cluster_centers_, feats, scale, test, [])
    label = disc.labels()
    slices = []
    for c in range(k):
        unit_in = test & (label == c)
        if min(unit_in.sum(), (test & ~unit_in).sum()) < min_groups:
            continue
        disc.kept.append(c)
        slices.append(Slice(f"cluster {c + 1}", "discovered", ("embedding",), unit_in[units.codes]))
    if scores is not None:
        worst = worst_score_units(feats, scores, test, min(2.0 / k, 0.5))
        if min(worst.sum(), (test & ~worst).sum()) >= min_groups:
            slices.append(Slice("predicted worst score", "discovered", ("embedding", "score"), worst[units.codes]))
    split = {"discovery_units": int((~test).sum()), "test_units": int(test.sum()), "seed": seed, "k": k}
    return slices, split, disc


def worst_score_units(feats: np.ndarray, scores: np.ndarray, test: np.ndarray, share: float) -> np.ndarray:
    """The test-half units whose score a ridge regression on the vectors, fitted on the discovery half, predicts
    worst (the top `share` of the test half): where in embedding space the score is high, learned on one half and
    applied to the other by the vectors alone, so that the test half's own scores choose nothing."""
    from sklearn.linear_model import RidgeCV

    model = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(feats[~test], _standard(scores)[~test])
    pred = model.predict(feats)
    cut = np.quantile(pred[test], 1.0 - share)
    return test & (pred >= cut)
