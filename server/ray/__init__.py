"""Ray scale-out (extra ``gotd[ray]``): sharded scoring and distributed ingest."""
