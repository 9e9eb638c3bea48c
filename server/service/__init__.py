"""The gRPC service: app, servicer, interceptors, conversion, config, metrics, engine, jobs, target sets."""
