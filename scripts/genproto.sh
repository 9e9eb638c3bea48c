#!/usr/bin/env bash
# Regenerate the checked-in protobuf/gRPC code and typing stubs beside the .proto files.
# Uses the pinned grpcio-tools and mypy-protobuf from the [dev] extra.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
rm -f proto/gotd/v1/*_pb2.py proto/gotd/v1/*_pb2_grpc.py proto/gotd/v1/*_pb2.pyi proto/gotd/v1/*_pb2_grpc.pyi
"$PY" -m grpc_tools.protoc -I proto \
  --python_out=proto --grpc_python_out=proto \
  --mypy_out=proto --mypy_grpc_out=proto \
  --plugin=protoc-gen-mypy="$(dirname "$PY")/protoc-gen-mypy" \
  --plugin=protoc-gen-mypy_grpc="$(dirname "$PY")/protoc-gen-mypy_grpc" \
  proto/gotd/v1/*.proto
