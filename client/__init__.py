"""gotd.client: typed Python client for the gotd gRPC service and the ``gotd`` command line."""
