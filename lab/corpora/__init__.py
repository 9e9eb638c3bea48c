"""Labelled corpora for evaluation and the demo (wiki topics, State of the Union speakers)."""
