#!/usr/bin/env bash
# Installs kd into a temporary prefix and builds tests/consumer against it with find_package(kd CONFIG), then again with
# add_subdirectory; runs both. The consumer links kd::kd and kd::dispatch (the installed static library, or the one built
# in its tree) and checks a dispatch_backend result. Also checks that the reference texts the headers cite are installed
# (share/doc/kd). Usage: consumer_check.sh SOURCE_DIR
set -eu
SRC="$(cd "$1" && pwd)"; TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT
G=""; command -v ninja >/dev/null && G="-G Ninja"
cmake -S "$SRC" -B "$TMP/kd" $G -DKD_BUILD_TESTS=OFF -DKD_BUILD_TOOLS=OFF -DKD_BUILD_BENCH=OFF -DKD_BUILD_EXAMPLES=OFF \
  -DKD_INSTALL=ON -DCMAKE_INSTALL_PREFIX="$TMP/prefix" >"$TMP/log" 2>&1 || { cat "$TMP/log"; exit 1; }
cmake --build "$TMP/kd" >>"$TMP/log" 2>&1 || { cat "$TMP/log"; exit 1; }
cmake --install "$TMP/kd" >>"$TMP/log" 2>&1 || { cat "$TMP/log"; exit 1; }
for f in lib/libkd_dispatch.a lib/cmake/kd/kdConfig.cmake share/doc/kd/pitfalls.md share/doc/kd/math.md; do
  [ -f "$TMP/prefix/$f" ] || { echo "consumer_check: $f not installed"; cat "$TMP/log"; exit 1; }
done
cmake -S "$SRC/tests/consumer" -B "$TMP/pkg" $G -DCMAKE_PREFIX_PATH="$TMP/prefix" >>"$TMP/log" 2>&1 || { cat "$TMP/log"; exit 1; }
cmake --build "$TMP/pkg" >>"$TMP/log" 2>&1 || { cat "$TMP/log"; exit 1; }
"$TMP/pkg/consumer"
cmake -S "$SRC/tests/consumer" -B "$TMP/sub" $G -DKD_CONSUMER_MODE=subdirectory -DKD_SOURCE_DIR="$SRC" \
  >>"$TMP/log" 2>&1 || { cat "$TMP/log"; exit 1; }
cmake --build "$TMP/sub" >>"$TMP/log" 2>&1 || { cat "$TMP/log"; exit 1; }
"$TMP/sub/consumer"
echo "consumer_check: 2 passed, 0 failed"
