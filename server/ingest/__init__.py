"""Ingest: the embedding model and the pipeline that turns records into stored rows."""
