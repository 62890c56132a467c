#!/usr/bin/env bash
# Regenerate the committed protobuf/gRPC code and .pyi stubs. Usage: scripts/gen_protos.sh [OUT_DIR]
# The .proto files live in proto/v1; they are compiled through the fused/ import root, so the
# generated modules import each other as fused.proto.v1.* and land in OUT_DIR/fused/proto/v1.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.}"
py="${PYTHON:-.venv/bin/python}"
bindir="$(dirname "$py")"
mkdir -p "$out"
PATH="$bindir:$PATH" "$py" -m grpc_tools.protoc -I . \
  --python_out="$out" --grpc_python_out="$out" --mypy_out="$out" --mypy_grpc_out="$out" \
  fused/proto/v1/*.proto
