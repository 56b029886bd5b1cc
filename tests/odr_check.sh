#!/usr/bin/env bash
# One-definition-rule check of kd::dispatch against a user translation unit compiled with other instruction-set flags
# (docs/simd.md, "One-definition rule"). USER_OBJ is tests/odr/odr_user.cpp compiled with -mavx2 -mfma, USER_EXE the
# program linking it with kd::dispatch. Fails when
#   - the program fails (header-only simd_backend<> and dispatch_backend disagree; skipped on CPUs without AVX2+FMA), or
#   - a kd symbol (any defined, global or weak symbol whose name mentions kd::) is defined both in the user object and in
#     a dispatch object compiled with different flags, or in two dispatch objects compiled with different flags: the
#     linker would keep one of the two encodings for both callers.
# Usage: odr_check.sh USER_OBJ USER_EXE DISPATCH_LIB
set -eu
USER_OBJ="$(readlink -f "$1")"; USER_EXE="$(readlink -f "$2")"; LIB="$(readlink -f "$3")"
TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT
NM="${NM:-nm}"

# Flags of each object: the user's (-mavx2 -mfma) and those of src/dispatch/CMakeLists.txt. dispatch.cpp has no -m
# flags, i.e. the x86-64 baseline, which is what -msse2 gives too.
flags_of() {
  case "$1" in
    user | isa_avx2.cpp.o) echo "avx2,fma" ;;
    dispatch.cpp.o | isa_sse2.cpp.o) echo "baseline" ;;
    isa_sse4_2.cpp.o) echo "sse4.2" ;;
    isa_avx512.cpp.o) echo "avx512" ;;
    *) echo "unknown:$1" ;;
  esac
}

# defined global / weak / unique symbols (local ones cannot clash), mangled, restricted to those naming kd::
syms() {
  "$NM" --defined-only "$1" | awk '$2 ~ /^[A-Zuvw]$/ && $2 != "U" {print $3}' | sort -u >"$TMP/all"
  c++filt <"$TMP/all" | paste "$TMP/all" - | awk -F '\t' 'index($2, "kd::") {print $1}' | sort -u
}

if grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo; then
  "$USER_EXE" || { echo "odr_check: FAIL: $USER_EXE"; exit 1; }
else
  echo "odr_check: CPU without AVX2+FMA: the program is not run, only the symbol check"
fi

mkdir "$TMP/lib"
(cd "$TMP/lib" && ar x "$LIB")
names="user"
syms "$USER_OBJ" >"$TMP/user.syms"
for o in "$TMP"/lib/*.o; do
  b="$(basename "$o")"; names="$names $b"
  syms "$o" >"$TMP/$b.syms"
done

clashes=0; pairs=0
for a in $names; do
  for b in $names; do
    [ "$a" \< "$b" ] || continue
    [ "$(flags_of "$a")" = "$(flags_of "$b")" ] && continue
    pairs=$((pairs + 1))
    comm -12 "$TMP/$a.syms" "$TMP/$b.syms" >"$TMP/common"
    n="$(wc -l <"$TMP/common")"
    if [ "$n" -gt 0 ]; then
      echo "odr_check: $n kd symbol(s) defined in both $a [$(flags_of "$a")] and $b [$(flags_of "$b")], e.g.:"
      head -5 "$TMP/common" | c++filt | cut -c1-240 | sed 's/^/    /'
      clashes=$((clashes + n))
    fi
  done
done
echo "odr_check: $(wc -l <"$TMP/user.syms") kd symbols in the user object, $pairs object pairs with different flags," \
  "$clashes shared symbol(s)"
[ "$clashes" = 0 ]
