"""gotd.cache: what the server keeps between requests and restarts.

LMDB candidate store and target sets, FAISS index, text-embedding cache, and the dual (target
potential) cache in Redis with an in-process fallback. Never imports ``gotd.server``.
"""
