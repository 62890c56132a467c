#!/usr/bin/env bash
# Regenerate the committed protobuf/gRPC code and .pyi stubs. Usage: scripts/gen_protos.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.}"
py="${PYTHON:-.venv/bin/python}"
bindir="$(dirname "$py")"
mkdir -p "$out"
PATH="$bindir:$PATH" "$py" -m grpc_tools.protoc -I . \
  --python_out="$out" --grpc_python_out="$out" --mypy_out="$out" --mypy_grpc_out="$out" \
  proto/fused/v1/*.proto
