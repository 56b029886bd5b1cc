#!/usr/bin/env bash
# End-to-end checks of `kd pg` (MiniLLM policy gradient) on the fixtures tests/data/pg_*.npy:
# B = 2 sequences, L = 3, V = 4; student logits all 0 (q uniform), teacher logits [ln 2, 0, 0, 0] (p = [.4, .2, .2, .2]);
# tokens [[0, 1, 0], [1, 0, 99]], mask [[1, 1, 1], [1, 1, 0]] (the padded position holds NaN logits and token 99: never read).
# Rewards: token 0 -> a = ln(0.4 / 0.25) = ln 1.6, token 1 -> b = ln 0.8. Paper length norm: A = mean of future rewards.
# Usage: pg_cli_test.sh path/to/kd path/to/tests/data
set -u
KD="$1"; DATA="$2"; TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT
pass=0; fail=0
ok()  { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
field() { sed -n "s/.*\"$1\": \([-0-9.eE+]*\).*/\1/p"; }
first() { sed -n "s/.*\"$1\": \[\[\([-0-9.eE+]*\),.*/\1/p"; }   # first element of a [B, L] array
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
IN="--student $DATA/pg_student.npy --teacher $DATA/pg_teacher.npy --tokens $DATA/pg_tokens.npy --mask $DATA/pg_mask.npy"
A=0.47000362924573558; B=-0.22314355131420976

out=$("$KD" pg $IN --grad "$TMP/g.npy")
near "$(echo "$out" | first rewards)" $A 1e-6 && ok || bad "reward ln 1.6: $out"
near "$(echo "$out" | first advantages)" "$(awk -v a=$A -v b=$B 'BEGIN { print (a + b) / 2 }')" 1e-6 && ok || bad "paper advantage: $out"
near "$(echo "$out" | field token_reverse_kl)" 0.049856757602714 1e-6 && ok || bad "token reverse KL: $out"
[ "$(echo "$out" | field valid_tokens)" = 5 ] && ok || bad "valid_tokens: $out"
[ "$(wc -c <"$TMP/g.npy")" = 224 ] && ok || bad "--grad: float32 [2, 3, 4] .npy expected"
# reference variant: A_0 = (a + b + a) / 3 (current reward included, divided by n_t = 3)
out=$("$KD" pg $IN --length-norm reference)
near "$(echo "$out" | first advantages)" "$(awk -v a=$A -v b=$B 'BEGIN { print (2 * a + b) / 3 }')" 1e-6 && ok || bad "reference advantage: $out"
# the reference backend agrees
ref=$("$KD" pg $IN --backend reference)
near "$(echo "$ref" | field loss)" "$(echo "$("$KD" pg $IN)" | field loss)" 1e-6 && ok || bad "reference backend loss"
# teacher-mixed sampling with old log-probs: per-token weight q / (alpha p + (1 - alpha) q) at token 0 = .25 / (.2*.4 + .8*.25)
out=$("$KD" pg $IN --alpha 0.2 --old-logprobs "$DATA/pg_old.npy" --clip 0.2 --whiten on --gamma 0.95)
near "$(echo "$out" | first importance_weights)" 0.89285714285714 1e-6 && ok || bad "importance weight: $out"

expect_exit() {  # expected-code description command...
  local code="$1" what="$2"; shift 2
  "$@" >"$TMP/out" 2>"$TMP/err"; local rc=$?
  if [ "$rc" = "$code" ] && [ "$(wc -l <"$TMP/err")" -le 1 ]; then ok; else bad "$what: exit $rc, stderr: $(cat "$TMP/err")"; fi
}
expect_exit 2 "token outside [0, V) at a valid position" "$KD" pg --student "$DATA/pg_student.npy" \
  --teacher "$DATA/pg_teacher.npy" --tokens "$DATA/pg_tokens_bad.npy" --mask "$DATA/pg_mask.npy"
expect_exit 2 "mask shape" "$KD" pg --student "$DATA/pg_student.npy" --teacher "$DATA/pg_teacher.npy" \
  --tokens "$DATA/pg_tokens.npy" --mask "$DATA/pg_mask_badshape.npy"
expect_exit 2 "float tokens" "$KD" pg --student "$DATA/pg_student.npy" --teacher "$DATA/pg_teacher.npy" \
  --tokens "$DATA/pg_student.npy" --mask "$DATA/pg_mask.npy"
expect_exit 2 "2-D logits" "$KD" pg --student "$DATA/caseA_student.npy" --teacher "$DATA/caseA_teacher.npy" \
  --tokens "$DATA/pg_tokens.npy" --mask "$DATA/pg_mask.npy"
expect_exit 2 "not a .npy" "$KD" pg --student "$DATA/notnpy.npy" --teacher "$DATA/pg_teacher.npy" \
  --tokens "$DATA/pg_tokens.npy" --mask "$DATA/pg_mask.npy"
expect_exit 2 "missing --tokens" "$KD" pg --student "$DATA/pg_student.npy" --teacher "$DATA/pg_teacher.npy" \
  --mask "$DATA/pg_mask.npy"
expect_exit 2 "gamma out of range" "$KD" pg $IN --gamma 2
expect_exit 2 "bad --length-norm" "$KD" pg $IN --length-norm mean
expect_exit 2 "bad --single-step" "$KD" pg $IN --single-step maybe
expect_exit 1 "NaN logits at a valid position" "$KD" pg --student "$DATA/pg_student_nan.npy" \
  --teacher "$DATA/pg_teacher.npy" --tokens "$DATA/pg_tokens.npy" --mask "$DATA/pg_mask.npy"

expect_err() {  # expected-code stderr-substring description command...
  local code="$1" pat="$2" what="$3"; shift 3
  "$@" >"$TMP/out" 2>"$TMP/err"; local rc=$?
  if [ "$rc" = "$code" ] && [ "$(wc -l <"$TMP/err")" -le 1 ] && grep -qF -- "$pat" "$TMP/err"; then ok
  else bad "$what: exit $rc, stderr: $(cat "$TMP/err")"; fi
}
expect_err 2 "--alpha" "repeated --alpha" "$KD" pg $IN --alpha 0.2 --alpha 0.3
expect_err 2 "--mask" "repeated --mask" "$KD" pg $IN --mask "$DATA/pg_mask.npy"
expect_err 2 "--gamma" "hexadecimal --gamma" "$KD" pg $IN --gamma 0x1p-1

# NaN in --mask (issue "Correctness round" 3.2): an error naming --mask, not a valid position.
mknpy "$TMP/mask_nan.npy" "<f4" "[2, 3]" "[1, 1, 1, 1, nan, 0]"
expect_err 2 "--mask" "NaN in a float mask" "$KD" pg --student "$DATA/pg_student.npy" --teacher "$DATA/pg_teacher.npy" \
  --tokens "$DATA/pg_tokens.npy" --mask "$TMP/mask_nan.npy"
# Without --mask, a fully masked student row (all -inf) is padding, exactly as --mask 0 there: here the padded position
# [1, 2] has student logits all -inf (its token 99 is never read), so the output equals the run with pg_mask.npy.
mknpy "$TMP/s_masked.npy" "<f4" "[2, 3, 4]" "[0.0] * 20 + [-inf] * 4"
with_mask=$("$KD" pg --student "$TMP/s_masked.npy" --teacher "$DATA/pg_teacher.npy" --tokens "$DATA/pg_tokens.npy" \
  --mask "$DATA/pg_mask.npy")
no_mask=$("$KD" pg --student "$TMP/s_masked.npy" --teacher "$DATA/pg_teacher.npy" --tokens "$DATA/pg_tokens.npy")
[ -n "$no_mask" ] && [ "$no_mask" = "$with_mask" ] && ok || bad "no --mask, fully masked row: $no_mask vs $with_mask"
[ "$(echo "$no_mask" | field valid_tokens)" = 5 ] && ok || bad "no --mask: valid_tokens: $no_mask"
# Marked valid by --mask, the same row is a value error (its sampled token has probability 0): exit 1.
mknpy "$TMP/mask_all.npy" "|u1" "[2, 3]" "[1] * 6"
mknpy "$TMP/tok_ok.npy" "<i8" "[2, 3]" "[0, 1, 0, 1, 0, 0]"
expect_err 1 "student" "fully masked row marked valid" "$KD" pg --student "$TMP/s_masked.npy" \
  --teacher "$DATA/pg_teacher.npy" --tokens "$TMP/tok_ok.npy" --mask "$TMP/mask_all.npy"

# Every field of kd::pg_options has a flag (issue "Correctness round" 3.4): a new field without one fails here.
HDR="$DATA/../../include/kd/pg_options.hpp"
fields=$(sed -n '/^struct pg_options {/,/^  static/p' "$HDR" | sed -n 's/^  [A-Za-z0-9:_]* \([a-z_]*\) = .*/\1/p')
[ "$(echo "$fields" | wc -l)" = 16 ] && ok || bad "could not read the fields of pg_options: $fields"
help=$("$KD" pg --help)
for f in $fields; do
  case "$f" in
    iw_form) flag=--iw ;; clip_range) flag=--clip ;; *) flag="--$(echo "$f" | tr _ -)" ;;
  esac
  echo "$help" | grep -q -- "^  $flag " && ok || bad "pg_options::$f has no flag $flag in kd pg --help"
  "$KD" pg $IN $flag 2>&1 | grep -q "unknown option" && bad "kd pg does not accept $flag" || ok
done
# TRL's default MiniLLM advantage A_t = r_t (gamma 0, current reward included): advantages == rewards, padding 0.
out=$("$KD" pg $IN --gamma 0 --current-reward include --length-norm discounted)
rw=$(echo "$out" | sed -n 's/.*"rewards": \(\[\[[^]]*\], \[[^]]*\]\]\).*/\1/p')
ad=$(echo "$out" | sed -n 's/.*"advantages": \(\[\[[^]]*\], \[[^]]*\]\]\).*/\1/p')
[ -n "$rw" ] && [ "$rw" = "$ad" ] && ok || bad "TRL default: advantages $ad != rewards $rw"
out=$("$KD" pg $IN --gamma 0 --current-reward include --length-norm none)
[ "$(echo "$out" | sed -n 's/.*"advantages": \(\[\[[^]]*\], \[[^]]*\]\]\).*/\1/p')" = "$rw" ] && ok || bad "gamma 0 none: $out"
# The three length normalizations at gamma = 0.5 on sequence 0 (rewards [a, b, a], all valid), position 0, by hand:
#   paper      A = R_{t+1} / 2            = (b + 0.5 a) / 2
#   reference  A = (a + 0.5 (b + 0.5 a)) / 3         (LMOps: / n_t)
#   discounted A = (a + 0.5 (b + 0.5 a)) / 1.75      (TRL: / (1 + 0.5 + 0.25))
for v in "paper:(b + 0.5 * a) / 2" "reference:(a + 0.5 * (b + 0.5 * a)) / 3" "discounted:(a + 0.5 * (b + 0.5 * a)) / 1.75"; do
  name=${v%%:*}; expr=${v#*:}
  out=$("$KD" pg $IN --gamma 0.5 --length-norm "$name")
  want=$(awk -v a=$A -v b=$B "BEGIN { printf \"%.17g\", $expr }")
  near "$(echo "$out" | first advantages)" "$want" 1e-6 && ok || bad "--length-norm $name: want $want: $out"
done
# presets, the normalizer reduction, the LM term
out=$("$KD" pg $IN --preset reference-code)
echo "$out" | grep -q '"length_norm": "reference"' && [ "$(echo "$out" | field gamma)" = 0.94999999999999996 ] && ok ||
  bad "--preset reference-code: $out"
[ "$(echo "$("$KD" pg $IN --preset reference-code --gamma 1)" | field gamma)" = 1 ] && ok || bad "flag overrides the preset"
near "$(echo "$("$KD" pg $IN --normalizer 5)" | field loss)" "$(echo "$("$KD" pg $IN)" | field loss)" 1e-12 && ok ||
  bad "--normalizer 5 (= valid tokens) differs from the token mean"
mknpy "$TMP/lm.npy" "<i8" "[2, 3]" "[2, -100, 3, 0, -100, -100]"
out=$("$KD" pg $IN --lm-weight 0.5 --lm-labels "$TMP/lm.npy")
# q is uniform over V = 4 at every position: CE = ln 4 at the 3 labelled positions
near "$(echo "$out" | field lm_loss)" 1.3862943611198906 1e-6 && [ "$(echo "$out" | field lm_tokens)" = 3 ] && ok ||
  bad "LM term: $out"
expect_err 2 "--lm-labels" "--lm-weight without labels" "$KD" pg $IN --lm-weight 1
expect_err 2 "--normalizer" "--reduction normalizer without N" "$KD" pg $IN --reduction normalizer
expect_err 2 "--current-reward" "bad --current-reward" "$KD" pg $IN --current-reward maybe
expect_err 2 "--clip:" "range errors name the flag, not the C++ field" "$KD" pg $IN --clip 1.5
expect_err 2 "--reward-scale:" "range errors name the flag" "$KD" pg $IN --reward-scale 0
expect_err 2 "--tokens:" "a token outside [0, V) names --tokens" "$KD" pg --student "$DATA/pg_student.npy" \
  --teacher "$DATA/pg_teacher.npy" --tokens "$DATA/pg_tokens_bad.npy" --mask "$DATA/pg_mask.npy"

echo "pg cli: $pass passed, $fail failed"
[ "$fail" = 0 ]
