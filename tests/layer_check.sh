#!/usr/bin/env bash
# The layers of include/kd/ (docs/architecture.md), checked on every header's #include lines; no header includes one above
# its layer:
#   0 divergences/   (and version.hpp) the row math: functors and the registry. Includes only divergences/ and version.hpp; never xsimd,
#                    Eigen or <thread> (it compiles under nvcc).
#   1 value types    version, status, tensor, options, pg_options, divergence_spec, counter_rng, fused_linear_options,
#                    communicator, topk_teacher_input (top level).
#   2 detail/        kernels (SIMD row kernels, reference rows, per-position PG math, validation).
#   3 backend/       drivers and backends.
#   4 API            every other top-level header.
# Usage: layer_check.sh INCLUDE_DIR/kd
set -u
root=$1
fail=0
value_types="status.hpp tensor.hpp options.hpp pg_options.hpp divergence_spec.hpp counter_rng.hpp fused_linear_options.hpp communicator.hpp topk_teacher_input.hpp"
layer_of() {  # path relative to include/kd -> layer number
  case "$1" in
    divergences/*|version.hpp) echo 0 ;;
    detail/*) echo 2 ;;
    backend/*) echo 3 ;;
    *) for v in $value_types; do [ "$1" = "$v" ] && { echo 1; return; }; done; echo 4 ;;
  esac
}
for f in $(cd "$root" && find . -name '*.hpp' | sed 's|^\./||' | sort); do
  lf=$(layer_of "$f")
  dir=$(dirname "$f")
  while read -r inc; do
    [ -z "$inc" ] && continue
    target=$(realpath -m --relative-to="$root" "$root/$dir/$inc")
    lt=$(layer_of "$target")
    if [ "$lt" -gt "$lf" ]; then
      echo "layer_check: $f (layer $lf) includes $target (layer $lt)"
      fail=1
    fi
  done < <(grep -o '^#include "[^"]*"' "$root/$f" | sed 's/#include "\(.*\)"/\1/')
  if [ "$lf" = 0 ] && grep -qE '^#include <(xsimd|Eigen|thread)' "$root/$f"; then
    echo "layer_check: $f (row math) includes xsimd, Eigen or <thread>"
    fail=1
  fi
done
[ $fail = 0 ] && echo "layer_check: all $(cd "$root" && find . -name '*.hpp' | wc -l) headers respect the layers"
exit $fail
