#!/usr/bin/env bash
# Builds hdc-otelcol (a minimal OpenTelemetry Collector: OTLP receiver, file and debug exporters) from the
# Go module in hack/otelcol into a cache outside the repo, keyed by a hash of its sources, and prints the
# binary's path as its last line. A second run is a no-op. Test tooling only, never product code.
set -euo pipefail
src="$(cd "$(dirname "$0")/otelcol" && pwd)"
tools="${HDC_TOOLS_DIR:-$HOME/.cache/hd-compute/tools}"
pin="$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha256sum | cut -c1-12)"
out="$tools/otelcol-$pin/bin/hdc-otelcol"
if [ -x "$out" ]; then
  echo "$out"
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "build-otelcol: Go is not installed; it is needed to build the test OpenTelemetry Collector" >&2
  exit 1
fi
echo "build-otelcol: building hdc-otelcol (first time: a few minutes) ..." >&2
mkdir -p "$(dirname "$out")"
if ! (cd "$src" && GOFLAGS=-mod=mod go build -trimpath -o "$out.tmp" .); then
  echo "build-otelcol: go build failed; is the Go module proxy reachable (GOPROXY=$(go env GOPROXY))?" >&2
  exit 1
fi
mv "$out.tmp" "$out"
echo "$out"
