"""gotd.lab: evaluation, benchmarks, corpora and the demo (extra ``gotd[lab]``); the server never uses it."""
