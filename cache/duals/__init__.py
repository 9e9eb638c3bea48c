"""The dual cache: target potentials in Redis (versioned codec, keys) with an in-process fallback."""
