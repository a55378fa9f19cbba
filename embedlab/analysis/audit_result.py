"""What `audit` returns: its tables as DataFrames, the choices it made, and the figure data of its page.

Tables (one row per record, the same columns as the parquet files the CLI writes):
- `slices`: one row per audited slice. slice_id, name ("camera=B", "camera=B & hour=night", "cluster 3"), kind
  ("value", "bin", "conjunction", "discovered"), columns, n_images, n_groups, n_images_rest, n_groups_rest, effect (the
  debiased squared norm of the slice-minus-rest difference of mean unit vectors: ||d||^2 minus its expectation under
  the null), effect_lo/effect_hi (group-bootstrap interval), ratio (||d||^2 over that expectation), p (the slice's own
  permutation p), p_fwer (audit-wide family-wise p), q (BH over slices), column_p (its column's omnibus p), listed,
  duplicates (the larger listed slice it repeats, if any), overlaps, residual_path, top_concepts, and with a score
  column score_diff/score_lo/score_hi/score_p.
- `concepts`: per slice its top concepts: slice_id, slice, rank, concept, side ("adds": more of it in the slice than in
  the rest, "removes": less), score (cosine of the slice's difference vector with the centred concept), t, auroc,
  mean_sim_slice, mean_sim_rest, p_fwer, q.
- `columns`: per audited column: column, kind, n_values, n_slices, statistic, p.
- `jaccard`: the overlap (Jaccard index of image sets) of the listed slices, a square DataFrame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


@dataclass
class AuditResult:
    slices: pd.DataFrame
    concepts: pd.DataFrame
    columns: pd.DataFrame
    info: dict
    jaccard: pd.DataFrame = field(default_factory=pd.DataFrame)
    # per slice_id: {"concept": name, "slice": (n,) similarities of its units to the concept, "rest": (m,) likewise}
    figures: dict = field(default_factory=dict)
    # per slice_id: image paths of its exemplar units: most typical of the slice (largest projection on its
    # residual) without a score, its worst units (highest unit score first) with one
    exemplars: dict = field(default_factory=dict)
    out: Path | None = None
    # per slice_id: (n,) bool over the audited images (not written; the parquet tables name the slices)
    masks: dict = field(default_factory=dict, repr=False)

    TABLES = ("slices", "concepts", "columns", "jaccard")

    def to_pandas(self, table: str = "slices") -> pd.DataFrame:
        """One of the result's tables: "slices" (default), "concepts", "columns" or "jaccard"."""
        if table not in self.TABLES:
            raise ValueError(f"The 'table' parameter must be one of {self.TABLES}. Got {table!r} instead.")
        return getattr(self, table)

    def significant(self, alpha: float = 0.05) -> pd.DataFrame:
        """The listed slices whose audit-wide family-wise p-value is below `alpha`, largest effect first."""
        s = self.slices
        if s.empty or "p_fwer" not in s:
            return s.iloc[0:0]
        keep = (s["p_fwer"] < alpha) & s["listed"]
        return s[keep].sort_values("effect", ascending=False).reset_index(drop=True)

    def __repr__(self) -> str:
        if self.info.get("mode") == "screen":
            return (
                f"AuditResult(screen: {len(self.slices)} slices over {len(self.columns)} columns ranked by T, untested)"
            )
        n_sig = len(self.significant())
        return (
            f"AuditResult({len(self.slices)} slices over {len(self.columns)} columns, {n_sig} significant at "
            f"p_fwer < 0.05; {len(self.concepts)} concept rows)"
        )

    def _repr_html_(self) -> str:
        cols = [
            c
            for c in ("name", "n_images", "n_groups", "effect", "statistic", "p_fwer", "q", "top_concepts")
            if c in self.slices
        ]
        return self.slices[cols].head(20).to_html(index=False)
