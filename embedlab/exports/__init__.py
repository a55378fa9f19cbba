"""Exports to the tools people already use: per-image concept scores as parquet (`concept_scores`) and a FiftyOne
dataset (`fiftyone_dataset`, the optional extra `embedlab[fiftyone]`)."""
