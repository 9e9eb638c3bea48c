# gotd server image (CPU). Build: docker build -t gotd .
# Run:   docker run -p 50051:50051 -p 9090:9090 -v gotd-data:/data \
#          -e GOTD_AUTH_TOKEN=... -e GOTD_TLS_CERT=/certs/tls.crt -e GOTD_TLS_KEY=/certs/tls.key gotd
# The image listens on 0.0.0.0 and refuses to start without a token or TLS, unless told that a proxy
# in front of it authenticates every call: -e GOTD_TRUSTED_PROXY=true. A token without TLS is logged
# as a warning (it travels in plaintext). Redis, when used, must be private to gotd (docs/reliability.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    GOTD_LISTEN=0.0.0.0:50051 \
    GOTD_DATA_DIR=/data \
    GOTD_METRICS_PORT=9090 \
    GOTD_METRICS_HOST=0.0.0.0

WORKDIR /app
# CPU torch first, from the CPU index: a plain `torch` requirement would pull a multi-GB CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY server ./server
COPY cache ./cache
COPY client ./client
# lab/ is part of the distribution's package list (installed without its extra's dependencies).
COPY lab ./lab
RUN pip install '.[server]' \
    && useradd --create-home --uid 10001 gotd \
    && mkdir -p /data && chown gotd:gotd /data

USER gotd
VOLUME ["/data"]
EXPOSE 50051 9090
# gRPC health of the overall service ("") through the standard health protocol.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import grpc,sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; \
s=g.HealthStub(grpc.insecure_channel('127.0.0.1:50051')); \
sys.exit(0 if s.Check(h.HealthCheckRequest(service=''), timeout=4).status == 1 else 1)"
ENTRYPOINT ["gotd", "serve"]
