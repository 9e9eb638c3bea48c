"""The LMDB candidate store: pools, target sets, sketches, the text-embedding cache and the FAISS index."""
