"""tilevl: the InternVL family of multimodal chat models, end to end.

The public API is small: build or load a model, load its tokenizer, tile an image, chat.
"""

from tilevl.chat.engine import GenerationSettings
from tilevl.chat.session import ChatSession
from tilevl.checkpoint.loader import load_model, read_config, save_model
from tilevl.checkpoint.tokenizer import load_tokenizer
from tilevl.config import ModelConfig, VisionConfig
from tilevl.errors import CheckpointError, ConfigError, InputError, MissingDependencyError, TilevlError
from tilevl.inputs.image import ImageSettings, load_image, preprocess, tile_image
from tilevl.inputs.video import load_video
from tilevl.model.vlm import VisionLanguageModel, build_model

__all__ = [
    "ChatSession", "CheckpointError", "ConfigError", "GenerationSettings", "ImageSettings",
    "InputError", "MissingDependencyError", "ModelConfig", "TilevlError", "VisionConfig",
    "VisionLanguageModel", "build_model", "load_image", "load_model", "load_tokenizer",
    "load_video", "preprocess", "read_config", "save_model", "tile_image",
]
__version__ = "0.1.0"
