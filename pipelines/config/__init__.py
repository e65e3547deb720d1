"""params.yaml's schema, one module per section, and its loading (pipelines/config/params.py).

Nothing here imports torch: validating params is quick, and so is a stage's --help."""

from pipelines.config.base import ParamsError
from pipelines.config.params import PARAMS_FILE, Params, load_params

__all__ = ["PARAMS_FILE", "Params", "ParamsError", "load_params"]
