"""tilevl: the InternVL family of multimodal chat models, end to end.

The public API is small: build or load a model, load its tokenizer, tile an image, chat.
"""

from tilevl.checkpoint.loader import load_model, read_config, save_model
from tilevl.checkpoint.tokenizer import load_tokenizer
from tilevl.config import ModelConfig, VisionConfig
from tilevl.errors import CheckpointError, ConfigError, InputError, MissingDependencyError, TilevlError
from tilevl.model.vlm import VisionLanguageModel, build_model

__all__ = [
    "CheckpointError", "ConfigError", "InputError", "MissingDependencyError", "ModelConfig",
    "TilevlError", "VisionConfig", "VisionLanguageModel", "build_model", "load_model",
    "load_tokenizer", "read_config", "save_model",
]
__version__ = "0.1.0"
