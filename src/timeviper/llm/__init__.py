"""The language model: a pattern-driven Mamba-2 / attention / MLP decoder (NemotronH, Qwen2, Qwen3)."""

from timeviper.llm.cache import Cache, KVCache, MambaState
from timeviper.llm.config import LMConfig
from timeviper.llm.model import HybridLM, LMOutput

__all__ = ["Cache", "HybridLM", "KVCache", "LMConfig", "LMOutput", "MambaState"]
