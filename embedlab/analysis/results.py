"""Results a notebook can hold: the dicts the commands return (JSON-ready, as the CLI prints them), with their main
table as a DataFrame (`.to_pandas()`)."""

from __future__ import annotations


class Result(dict):
    """A command's result: a dict as before, whose rows under `table` (a list of records) `.to_pandas()` returns."""

    def __init__(self, data: dict, table: str):
        super().__init__(data)
        self.table = table

    def to_pandas(self):
        """The result's main table (explain_residual: the ranked concepts; probe_residual: one row per edit and
        strength) as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame.from_records(list(self.get(self.table) or []))

    def significant(self, alpha: float = 0.05, column: str = "p_fwer"):
        """The rows of the main table whose family-wise p-value (`column`) is below `alpha`."""
        table = self.to_pandas()
        if column not in table:
            return table.iloc[0:0]
        return table[table[column] < alpha].reset_index(drop=True)

    def __repr__(self) -> str:
        n = len(self.get(self.table) or [])
        return f"Result({n} rows in {self.table!r}; keys: {', '.join(list(self)[:8])})"

    def _repr_html_(self) -> str:
        return self.to_pandas().head(20).to_html(index=False)

    def __reduce__(self):  # pickles (and copies) as a Result, not a plain dict
        return (Result, (dict(self), self.table))
