"""Opening model paths and reading checkpoints, below `hf/` and `train/` so both use one reader:

    model_path = checkpoint.open_model_path(path)   # model_path.py: what the path holds, one precedence
    checkpoint.xmtf_format.StepReader(step_dir)      # our training's orbax checkpoints, read-only

Writing checkpoints (and resuming a run's optimizer state and data position) is `train/checkpoints.py`.
"""
from xmtf_jax.checkpoint.model_path import (HF_FOLDER, OUR_RUN, OUR_STEP, T5X, ModelPath, ModelPathError,
                                            open_model_path)

__all__ = ["HF_FOLDER", "OUR_RUN", "OUR_STEP", "T5X", "ModelPath", "ModelPathError", "open_model_path"]
