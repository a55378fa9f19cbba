"""The concept report agrees with itself: for a planted bias, the list it sits on, the table's difference and t,
the AUROC, the similarity histogram and the bar chart's value all point the same way, and every statistic's header
names its unit; a concept whose per-group difference and image-level list disagree in sign is flagged."""

import numpy as np
import pandas as pd

from embedlab.analysis.explain import explain_vectors
from embedlab.analysis.formula import l2n
from embedlab.reports.concept_report import column_label, render_html, render_markdown, sign_disagrees


def _residual(x_from, x_to):
    v_from, v_to = l2n(l2n(x_from).mean(0)), l2n(l2n(x_to).mean(0))
    return l2n(v_to - v_from)


def _world(seed=0, d=48, V=60, G=14, per_side=4, planted=3, strength=0.6):
    """G groups (scenes), each with `per_side` 'from' and 'to' images; every 'to' image carries concept `planted`."""
    rng = np.random.default_rng(seed)
    E = l2n(rng.normal(size=(V, d)))
    C = E - E.mean(0)
    c = C[planted] / np.linalg.norm(C[planted])
    scenes = rng.normal(size=(G, d))
    x_from, x_to, g_from, g_to = [], [], [], []
    for g in range(G):
        for _ in range(per_side):
            x_from.append(scenes[g] + 0.5 * rng.normal(size=d))
            x_to.append(scenes[g] + 0.5 * rng.normal(size=d) + strength * np.linalg.norm(scenes[g]) * c)
            g_from.append(g)
            g_to.append(g)
    return E, np.array(x_from), np.array(x_to), np.array(g_from + g_to)


def _report(result, concepts):
    table = pd.concat([result["adds"], result["removes"]], ignore_index=True)
    info = dict(result["info"], vocabulary="test", vocabulary_source="test", templates=["{}"])
    return {
        "info": info,
        "residual": {"path": "r.npy", "method": "rave", "from": "from", "to": "to", "model": "m", "thr": 0.1},
        "concepts": table.to_dict(orient="records"),
    }, table


def test_a_planted_bias_reads_the_same_in_every_part_of_the_report():
    E, x_from, x_to, groups = _world()
    concepts = [f"c{i}" for i in range(len(E))]
    res = explain_vectors(_residual(x_from, x_to), E, concepts, x_from, x_to, groups, top=5, permutations=200)
    report, table = _report(res, concepts)
    row = table[table["concept"] == "c3"]
    assert len(row) == 1 and row["direction"].item() == "adds", table[["direction", "concept"]]  # the list side
    row = row.iloc[0]
    assert row["cosine_at_pick"] > 0 and row["diff"] > 0 and row["t"] > 0  # the bar, the table's difference, t
    assert row["auroc"] > 0.5 and row["p_fwer"] < 0.05  # the AUROC side; found by the group-level test
    assert report["info"]["test_unit"]["unit"] == "groups" and report["info"]["groups"] == 14
    j = res["figure"]["index"].index(int(row["vocab_index"]))  # the histogram: the to set sits higher
    assert res["figure"]["to"][:, j].mean() > res["figure"]["from"][:, j].mean()
    assert not sign_disagrees(row)
    html, md = render_html(report, table, {}), render_markdown(report, table)
    for col in ("diff", "auroc", "p_fwer", "mean_sim_to"):
        assert column_label(report, col) == f"{col} (per group)"
        assert f"{col} (per group)" in html and f"{col} (per group)" in md
    assert "cosine_at_pick (residual of image means)" in html
    assert "&#9888; sign" not in html.split("</table>")[0]  # nothing flagged on the planted row's list


def test_a_concept_whose_groups_and_images_disagree_in_sign_is_flagged():
    """One big group holds many 'to' images rich in concept 5 (so the image means, hence the residual, add it),
    while in every other group the 'to' images hold less of it than the 'from' images: per group, diff < 0."""
    rng = np.random.default_rng(1)
    d, V = 48, 40
    E = l2n(rng.normal(size=(V, d)))
    C = E - E.mean(0)
    c = C[5] / np.linalg.norm(C[5])
    x_from, x_to, g_from, g_to = [], [], [], []
    for g in range(12):
        scene = rng.normal(size=d)
        n_to = 40 if g == 0 else 2
        shift = 3.0 if g == 0 else -1.0
        for _ in range(2):
            x_from.append(scene + 0.3 * rng.normal(size=d))
            g_from.append(g)
        for _ in range(n_to):
            x_to.append(scene + 0.3 * rng.normal(size=d) + shift * c)
            g_to.append(g)
    x_from, x_to = np.array(x_from), np.array(x_to)
    res = explain_vectors(
        _residual(x_from, x_to),
        E,
        [f"c{i}" for i in range(V)],
        x_from,
        x_to,
        np.array(g_from + g_to),
        top=5,
        permutations=100,
    )
    report, table = _report(res, None)
    row = table[table["concept"] == "c5"]
    assert len(row) == 1 and row["direction"].item() == "adds", table[["direction", "concept", "diff"]]
    row = row.iloc[0]
    assert row["diff"] < 0 and sign_disagrees(row)
    html, md = render_html(report, table, {}), render_markdown(report, table)
    assert "&#9888; sign" in html and "sign of diff disagrees with the list" in md
