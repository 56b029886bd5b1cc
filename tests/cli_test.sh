#!/usr/bin/env bash
# End-to-end checks of the kd tool: `kd loss` values against math.md / pitfalls.md, its error exits, and `kd gradcheck`.
# Usage: cli_test.sh path/to/kd path/to/tests/data
set -u
KD="$1"; DATA="$2"; TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT
pass=0; fail=0
ok()  { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
# value of a JSON number field from a one-line object
field() { sed -n "s/.*\"$1\": \([-0-9.eE+]*\).*/\1/p"; }
near() { awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= t * (1 + (b < 0 ? -b : b))) }'; }

# mknpy PATH DTYPE SHAPE VALUES: a small .npy from a Python literal (python3 standard library only; no numpy needed).
mknpy() {
  python3 - "$@" <<'PY'
import struct, sys, math
path, dt, shape, vals = sys.argv[1], sys.argv[2], eval(sys.argv[3]), eval(sys.argv[4], {"nan": math.nan, "inf": math.inf})
code = {"<f4": "f", "<f8": "d", "<i8": "q", "|u1": "B"}[dt]
h = "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (dt, repr(tuple(shape)))
h += " " * (63 - (10 + len(h)) % 64) + "\n"
with open(path, "wb") as f:
    f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h.encode() + struct.pack("<%d%s" % (len(vals), code), *vals))
PY
}
# npyvals PATH: "descr v0 v1 ..." of a little-endian float .npy (values with 17 significant digits)
npyvals() {
  python3 - "$1" <<'PY'
import struct, sys, ast
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<H", b[8:10])[0]
h = ast.literal_eval(b[10:10 + n].decode())
code = {"<f4": "f", "<f8": "d"}[h["descr"]]
data = b[10 + n:]
vals = struct.unpack("<%d%s" % (len(data) // struct.calcsize(code), code), data)
print(h["descr"], " ".join("%.17g" % v for v in vals))
PY
}

out=$("$KD" loss --loss fkl --student "$DATA/caseA_student.npy" --teacher "$DATA/caseA_teacher.npy" --grad "$TMP/g.npy")
near "$(echo "$out" | field loss)" 1.9853054691715395 1e-6 && ok || bad "fkl case A: $out"
[ -s "$TMP/g.npy" ] && ok || bad "--grad wrote no file"
out=$("$KD" loss --loss jsd --beta 0.5 --student "$DATA/caseA_student.npy" --teacher "$DATA/caseA_teacher.npy")
near "$(echo "$out" | field loss)" 0.37547803313492988 1e-6 && ok || bad "jsd case A: $out"
out=$("$KD" loss --loss fkl --temperature 2 --student "$DATA/caseA_student.npy" --teacher "$DATA/caseA_teacher.npy")
near "$(echo "$out" | field loss)" 0.58457648846186432 1e-6 && ok || bad "fkl T=2: $out"
out=$("$KD" loss --loss fkl --student "$DATA/p7_student_logp.npy" --teacher "$DATA/p7_teacher_logp.npy" \
      --student-kind log_probs --teacher-kind log_probs --reduction sum)
near "$(echo "$out" | field loss)" 0.5848836 1e-6 && ok || bad "pitfall 7 sum: $out"
out=$("$KD" loss --loss fkl --student "$DATA/p7_student_logp.npy" --teacher "$DATA/p7_teacher_logp.npy" \
      --student-kind log_probs --teacher-kind log_probs)
near "$(echo "$out" | field loss)" 0.2924418 1e-6 && ok || bad "pitfall 7 mean: $out"
out=$("$KD" loss --loss rkl --student "$DATA/b3_student_f16.npy" --teacher "$DATA/b3_teacher_f16.npy" \
      --labels "$DATA/b3_labels.npy" --ignore-index -100)
[ "$(echo "$out" | field valid_rows)" = 3 ] && ok || bad "3-D float16 with labels: $out"

expect_exit() {  # expected-code description command...
  local code="$1" what="$2"; shift 2
  "$@" >"$TMP/out" 2>"$TMP/err"; local rc=$?
  if [ "$rc" = "$code" ] && [ "$(wc -l <"$TMP/err")" -le 1 ]; then ok; else bad "$what: exit $rc, stderr: $(cat "$TMP/err")"; fi
}
expect_exit 2 "beta out of range" "$KD" loss --loss jsd --beta 1.5 --student "$DATA/caseA_student.npy" --teacher "$DATA/caseA_teacher.npy"
expect_exit 2 "not a .npy" "$KD" loss --loss fkl --student "$DATA/notnpy.npy" --teacher "$DATA/caseA_teacher.npy"
expect_exit 2 "missing file" "$KD" loss --loss fkl --student "$TMP/none.npy" --teacher "$DATA/caseA_teacher.npy"
expect_exit 2 "integer logits" "$KD" loss --loss fkl --student "$DATA/bad_int_logits.npy" --teacher "$DATA/caseA_teacher.npy"
expect_exit 2 "1-D logits" "$KD" loss --loss fkl --student "$DATA/shape1d.npy" --teacher "$DATA/shape1d.npy"
expect_exit 2 "shape mismatch" "$KD" loss --loss fkl --student "$DATA/caseA_student.npy" --teacher "$DATA/p7_teacher_logp.npy"
expect_exit 2 "unknown loss" "$KD" loss --loss xyz --student "$DATA/caseA_student.npy" --teacher "$DATA/caseA_teacher.npy"
expect_exit 2 "unknown option" "$KD" loss --los fkl
expect_exit 2 "missing --student" "$KD" loss --loss fkl --teacher "$DATA/caseA_teacher.npy"
expect_exit 1 "NaN student" "$KD" loss --loss rkl --student "$DATA/nan_student.npy" --teacher "$DATA/caseA_teacher.npy"
expect_exit 2 "unknown command" "$KD" frobnicate
# Argument parsing (issue "Correctness round" 3.1): each must exit 2 with one line naming the flag.
expect_err() {  # expected-code stderr-substring description command...
  local code="$1" pat="$2" what="$3"; shift 3
  "$@" >"$TMP/out" 2>"$TMP/err"; local rc=$?
  if [ "$rc" = "$code" ] && [ "$(wc -l <"$TMP/err")" -le 1 ] && grep -qF -- "$pat" "$TMP/err"; then ok
  else bad "$what: exit $rc, stderr: $(cat "$TMP/err")"; fi
}
CA="--student $DATA/caseA_student.npy --teacher $DATA/caseA_teacher.npy"
expect_err 2 "--loss" "repeated --loss" "$KD" loss --loss fkl --loss rkl $CA
expect_err 2 "--temperature" "repeated --temperature (= form)" "$KD" loss --loss fkl --temperature=1 --temperature 2 $CA
expect_err 2 "--t2-scale" "repeated valueless flag" "$KD" loss --loss fkl --t2-scale --t2-scale $CA
expect_err 2 "--ignore-index" "--ignore-index beyond int64 (was clamped)" "$KD" loss --loss rkl \
  --student "$DATA/b3_student_f16.npy" --teacher "$DATA/b3_teacher_f16.npy" --labels "$DATA/b3_labels.npy" \
  --ignore-index 99999999999999999999
expect_err 2 "--ignore-index" "--ignore-index below int64" "$KD" loss --loss rkl \
  --student "$DATA/b3_student_f16.npy" --teacher "$DATA/b3_teacher_f16.npy" --labels "$DATA/b3_labels.npy" \
  --ignore-index -99999999999999999999
expect_err 2 "--ignore-index" "--ignore-index hexadecimal" "$KD" loss --loss rkl \
  --student "$DATA/b3_student_f16.npy" --teacher "$DATA/b3_teacher_f16.npy" --labels "$DATA/b3_labels.npy" \
  --ignore-index 0x10
expect_err 2 "--temperature" "hexadecimal float (strtod accepted it)" "$KD" loss --loss fkl --temperature 0x1p1 $CA
expect_err 2 "--beta" "hexadecimal float" "$KD" loss --loss jsd --beta 0x0.8p0 $CA
expect_err 2 "--temperature" "inf is not a decimal number" "$KD" loss --loss fkl --temperature inf $CA
expect_err 2 "--temperature" "nan is not a decimal number" "$KD" loss --loss fkl --temperature nan $CA
expect_err 2 "--temperature" "leading blank" "$KD" loss --loss fkl --temperature " 2" $CA
expect_err 2 "--temperature" "out of double range" "$KD" loss --loss fkl --temperature 1e999 $CA
expect_err 2 "--beta:" "range errors name the flag" "$KD" loss --loss jsd --beta 1.5 $CA
expect_err 2 "--temperature:" "range errors name the flag" "$KD" loss --loss fkl --temperature -1 $CA
expect_err 2 "--seed" "leading blank in an integer" "$KD" gradcheck --seed " 3"
expect_err 2 "--rows" "gradcheck --rows without limit (was bad_alloc)" "$KD" gradcheck --rows 100000000000
expect_err 2 "--vocab" "gradcheck --vocab without limit (was bad_alloc)" "$KD" gradcheck --vocab 100000000000
expect_err 2 "--rows" "gradcheck --rows 0" "$KD" gradcheck --rows 0
expect_err 2 "--seed" "gradcheck --seed beyond uint32" "$KD" gradcheck --seed 4294967296
out=$("$KD" loss --loss fkl --temperature 2.0e0 $CA)
near "$(echo "$out" | field loss)" 0.58457648846186432 1e-6 && ok || bad "decimal exponent form: $out"
# float64 in -> float64 out (issue "Correctness round" 3.5): per_row and --grad keep the input precision, so case A
# (math.md) checks to ~1e-15 with the double reference; float32 inputs still give float32 gradients.
mknpy "$TMP/a64_s.npy" "<f8" "[1, 4]" "[1, 2, 3, 4]"
mknpy "$TMP/a64_t.npy" "<f8" "[1, 4]" "[4, 3, 2, 1]"
out=$("$KD" loss --loss fkl --reduction none --backend reference --student "$TMP/a64_s.npy" --teacher "$TMP/a64_t.npy" \
      --grad "$TMP/g64.npy")
pr=$(echo "$out" | sed -n 's/.*"per_row": \[\([-0-9.eE+]*\)\].*/\1/p')
near "$pr" 1.9853054691715395 1e-14 && ok || bad "float64 per_row to 1e-14: $out"
near "$(echo "$out" | field loss)" 1.9853054691715395 1e-14 && ok || bad "float64 loss to 1e-14: $out"
g=$(npyvals "$TMP/g64.npy")
[ "${g%% *}" = "<f8" ] && ok || bad "float64 input: --grad dtype ${g%% *}, want <f8"
i=0
for want in -0.611855656608 -0.149738499348 0.149738499348 0.611855656608; do  # dFKL/dz, math.md (12 digits)
  i=$((i + 1)); got=$(echo "$g" | cut -d' ' -f$((i + 1)))
  near "$got" "$want" 1e-11 && ok || bad "float64 grad[$i] $got, want $want"
done
# rkl with labels, T = 2, t2-scale, mean: per-row values still those of each row (reduced loss = their mean)
mknpy "$TMP/b64_s.npy" "<f8" "[3, 4]" "[1, 2, 3, 4, 0.5, -1, 2, 0, 3, 1, 4, 1]"
mknpy "$TMP/b64_t.npy" "<f8" "[3, 4]" "[4, 3, 2, 1, 1, 1, 0, 2, 2, 0.25, 1, 3]"
mknpy "$TMP/b64_l.npy" "<i8" "[3]" "[1, -100, 2]"
o64=$("$KD" loss --loss rkl --temperature 2 --t2-scale --labels "$TMP/b64_l.npy" --backend reference \
      --student "$TMP/b64_s.npy" --teacher "$TMP/b64_t.npy")
ref=$(for r in 0 2; do
  mknpy "$TMP/r_s.npy" "<f8" "[1, 4]" "$(python3 -c "v=[1, 2, 3, 4, 0.5, -1, 2, 0, 3, 1, 4, 1]; print(v[$r*4:$r*4+4])")"
  mknpy "$TMP/r_t.npy" "<f8" "[1, 4]" "$(python3 -c "v=[4, 3, 2, 1, 1, 1, 0, 2, 2, 0.25, 1, 3]; print(v[$r*4:$r*4+4])")"
  "$KD" loss --loss rkl --temperature 2 --t2-scale --reduction sum --backend reference --student "$TMP/r_s.npy" \
    --teacher "$TMP/r_t.npy" | field loss
done | tr '\n' ' ')
pr=$(echo "$o64" | sed -n 's/.*"per_row": \[\([^]]*\)\].*/\1/p' | tr -d ',')
set -- $pr; p0=$1; p1=$2; p2=$3; set -- $ref
[ "$p0" = "$1" ] && [ "$p1" = 0 ] && [ "$p2" = "$2" ] && ok || bad "float64 per_row $pr vs single-row losses $ref"
"$KD" loss --loss fkl --student "$DATA/caseA_student.npy" --teacher "$DATA/caseA_teacher.npy" --grad "$TMP/g32.npy" >/dev/null
g=$(npyvals "$TMP/g32.npy"); [ "${g%% *}" = "<f4" ] && ok || bad "float32 input: --grad dtype ${g%% *}, want <f4"
"$KD" gradcheck >"$TMP/gc" 2>&1 && grep -q " 0 failed" "$TMP/gc" && ok || bad "kd gradcheck: $(tail -3 "$TMP/gc")"

echo "cli: $pass passed, $fail failed"
[ "$fail" = 0 ]
