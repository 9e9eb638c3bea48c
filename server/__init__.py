"""gotd.server: OT math, selection engine, embedder, gRPC servicer, configuration and metrics."""
