"""Small models the project builds itself, so tests run offline in seconds."""

from .factory import TINY_CORPUS, make_tiny_bundle, tiny_configs

__all__ = ["TINY_CORPUS", "make_tiny_bundle", "tiny_configs"]
