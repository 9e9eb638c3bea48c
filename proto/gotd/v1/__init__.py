"""gotd wire contract, version 1 (package ``gotd.v1``); the modules beside this file are generated."""
