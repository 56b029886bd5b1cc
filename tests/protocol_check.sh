#!/usr/bin/env bash
# The backend protocol's compile-time check (kd/backend/protocol.hpp): passing kd::softmax a backend that lacks
# run_softmax fails to compile with the message naming the operation; the control (kd::reference_backend) compiles.
# Usage: protocol_check.sh <c++ compiler> <kd include dir> <eigen include dir> <source dir>
set -euo pipefail
CXX="$1"; INC="$2"; EIGEN="$3"; SRC="$4/tests/protocol/missing_operation.cpp"
flags=(-std=c++17 -fsyntax-only -I"$INC" -isystem "$EIGEN")
if ! "$CXX" "${flags[@]}" -DKD_PROTOCOL_CONTROL "$SRC"; then
  echo "protocol_check: the control (reference backend) does not compile" >&2; exit 1
fi
if out=$("$CXX" "${flags[@]}" "$SRC" 2>&1); then
  echo "protocol_check: a backend without run_softmax compiled" >&2; exit 1
fi
msg="kd::softmax: the backend passed does not implement this operation"
if ! grep -qF "$msg" <<<"$out"; then
  echo "protocol_check: the error does not name the operation; compiler said:" >&2; echo "$out" | head -20 >&2; exit 1
fi
n=$(grep -c "error" <<<"$out" || true)
echo "protocol_check: ok ($n error line(s); the first names the operation)"
