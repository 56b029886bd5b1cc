# CTest driver of one fuzz smoke run: a fresh, empty working corpus (so every run is the same run), the read-only seed
# corpus, a fixed seed and a fixed number of executions. Fails when the fuzzer reports a crash, a leak, a sanitizer
# error or a violated invariant (non-zero exit status).
#   cmake -DEXE=<fuzzer> -DWORK=<dir> -DSEEDS=<dir> -DRUNS=<n> -P run_smoke.cmake
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
set(_dirs ${WORK})
if(EXISTS ${SEEDS})
  list(APPEND _dirs ${SEEDS})
endif()
execute_process(COMMAND ${EXE} -runs=${RUNS} -seed=1 -max_len=4096 -timeout=60 -print_final_stats=1
                        -artifact_prefix=${WORK}/ ${_dirs}
                RESULT_VARIABLE _rc)
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "fuzz smoke run of ${EXE} failed (exit status ${_rc}); the crashing input is in ${WORK}/")
endif()
