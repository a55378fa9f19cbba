"""The fixed choice lists of embedlab's options, in one light module (no numpy, torch or pandas), so that the CLI
builds its `--help` choices from the same tuples the library validates against."""

DECODERS = ("auto", "pil", "torchvision")  # extract --decode
ENGINES = ("local", "ray")  # extract --engine
VECTOR_DTYPES = ("float32", "float16")  # extract --dtype
METHODS = ("rave", "mean-diff")  # residual --method
PRECISIONS = ("fp32", "bf16")  # train / enhance --precision
FAMILIES = ("page", "adds", "removes")  # explain-residual --family: one family for both lists, or one list
RECIPES = ("A", "B", "C")  # synth-backlit --recipe (help text: datasets.synth.RECIPES)
CORRECT_PRESETS = ("rave-shift",)  # correct --preset (help text: analysis.correct.PRESETS)
# the concept bank's categories, in the bank's order (embedlab/data/concepts/<name>.txt; --vocab concepts:NAME,...)
CONCEPT_CATEGORIES = ("objects", "scenes", "attributes", "photographic", "people")
SCORE_LAYOUTS = ("wide", "tidy")  # export concept-scores --layout
