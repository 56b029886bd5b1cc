#!/usr/bin/env bash
# Compiles tests/header_check.cpp with every available compiler as C++17 and C++20, warnings as errors, and runs it;
# then compiles each public header alone.
# Usage: header_check.sh SOURCE_DIR
set -eu
SRC="$1"; TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT
EIGEN="$(dirname "$(find /usr/include /usr/local/include -maxdepth 3 -name signature_of_eigen3_matrix_library 2>/dev/null | head -1)")"
n=0; failed=0
seen=""
for cxx in g++ clang++-14 clang++; do
  path="$(command -v "$cxx" 2>/dev/null)" || continue
  real="$(readlink -f "$path")"; case " $seen " in *" $real "*) continue;; esac; seen="$seen $real"
  for std in c++17 c++20; do
    if "$cxx" -std=$std -O1 -Wall -Wextra -Wpedantic -Werror -I"$SRC/include" -I"$EIGEN" "$SRC/tests/header_check.cpp" \
         -o "$TMP/hc" 2>"$TMP/log" && "$TMP/hc"; then
      echo "ok: $cxx -std=$std"
    else
      echo "FAIL: $cxx -std=$std"; cat "$TMP/log" | head -40; failed=$((failed + 1))
    fi
    n=$((n + 1))
  done
done
# each public header compiles on its own (no hidden include-order dependencies)
for h in "$SRC"/include/kd/*.hpp "$SRC"/include/kd/backend/*.hpp; do
  rel="${h#"$SRC"/include/}"
  if echo "#include <$rel>" | g++ -std=c++17 -fsyntax-only -Wall -Wextra -Wpedantic -Werror -I"$SRC/include" -I"$EIGEN" \
       -x c++ - 2>"$TMP/log"; then :; else
    echo "FAIL: $rel alone"; head -20 "$TMP/log"; failed=$((failed + 1))
  fi
  n=$((n + 1))
done
# trainers built without exceptions (docs/errors.md): the whole library compiles with -fno-exceptions
if echo "#include <kd/kd.hpp>" | g++ -std=c++17 -fno-exceptions -fsyntax-only -Wall -Wextra -Werror -I"$SRC/include" \
     -I"$EIGEN" -x c++ - 2>"$TMP/log"; then :; else
  echo "FAIL: kd/kd.hpp with -fno-exceptions"; head -20 "$TMP/log"; failed=$((failed + 1))
fi
n=$((n + 1))
echo "header_check: $((n - failed)) passed, $failed failed"
[ "$failed" = 0 ] && [ "$n" -gt 0 ]
