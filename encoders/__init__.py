"""Coordinates -> features. Every encoder builds from a tiny-cuda-nn style config."""

from .base import Encoding
from .registry import build_encoding, encoding_class, list_encodings, register

__all__ = ["Encoding", "build_encoding", "encoding_class", "list_encodings", "register"]
