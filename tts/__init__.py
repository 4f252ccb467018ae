"""indextts2-pipeline: a strict re-implementation of IndexTTS2."""

__version__ = "0.1.0"
