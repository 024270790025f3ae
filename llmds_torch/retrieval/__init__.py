"""llmds_torch.retrieval: dense (HNSW, flat) and sparse (BM25) search, fusion, sketches, pipeline."""

from .bm25 import METHODS as BM25_METHODS
from .bm25 import BM25Params
from .count_min_sketch import CountMinSketch
from .embedder import HashingEmbedder, default_embedder, load_sentence_embedder
from . import errors
from .errors import *  # noqa: F401,F403  (the package exports its errors)
from .flat_index import FlatIndex
from .fusion import convex_combination, distribution_based_fusion, fuse, reciprocal_rank_fusion, top_k
from .hnsw import HNSW
from .hot_cache import HotQueryCache
from .inverted_index import InvertedIndex
from .pipeline import PipelineConfig, RetrievalPipeline, RetrievalResult
from .stdlib_corpus import stdlib_documents
from .tokenizer import ENGLISH_STOPWORDS, Tokenizer

__all__ = [
    "HNSW",
    "FlatIndex",
    "InvertedIndex",
    "BM25Params",
    "BM25_METHODS",
    "Tokenizer",
    "ENGLISH_STOPWORDS",
    "CountMinSketch",
    "HotQueryCache",
    "fuse",
    "convex_combination",
    "reciprocal_rank_fusion",
    "distribution_based_fusion",
    "top_k",
    "RetrievalPipeline",
    "PipelineConfig",
    "RetrievalResult",
    "HashingEmbedder",
    "default_embedder",
    "load_sentence_embedder",
    "stdlib_documents",
] + errors.__all__
