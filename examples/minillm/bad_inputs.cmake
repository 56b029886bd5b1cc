# Bad inputs to minillm: each must exit non-zero with exactly one line on stderr starting "minillm: error:", never crash.
# Run by CTest: cmake -DMINILLM=<binary> -DWORK=<scratch dir> -P bad_inputs.cmake
file(REMOVE_RECURSE "${WORK}")
file(MAKE_DIRECTORY "${WORK}/empty_dir")
file(WRITE "${WORK}/empty.txt" "")
file(WRITE "${WORK}/blank.txt" "\n%\n   \n%\n")
file(WRITE "${WORK}/corpus.txt" "")
foreach(i RANGE 1 200)
  file(APPEND "${WORK}/corpus.txt" "The quick brown fox number ${i} jumps over the lazy dog and runs far away.\n%\n")
endforeach()
file(WRITE "${WORK}/garbage.pt" "this is not a torch checkpoint")

set(cases
  "missing corpus|--corpus,${WORK}/does_not_exist"
  "empty corpus file|--corpus,${WORK}/empty.txt"
  "empty corpus folder|--corpus,${WORK}/empty_dir"
  "corpus of blank records|--corpus,${WORK}/blank.txt"
  "unreadable checkpoint|--corpus,${WORK}/corpus.txt,--teacher,${WORK}/garbage.pt,--smoke,--vocab,60,--max-records,0"
  "missing checkpoint|--corpus,${WORK}/corpus.txt,--teacher,${WORK}/nope.pt,--smoke,--vocab,60,--max-records,0"
  "unknown flag|--no-such-flag"
  "bad number|--steps,abc")
foreach(c IN LISTS cases)
  string(FIND "${c}" "|" bar)
  string(SUBSTRING "${c}" 0 ${bar} name)
  math(EXPR bar "${bar} + 1")
  string(SUBSTRING "${c}" ${bar} -1 args)
  string(REPLACE "," ";" args "${args}")
  execute_process(COMMAND ${MINILLM} ${args} --out ${WORK}/out --cache ${WORK}/cache
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 50)
  # Progress and info lines may precede the failure (checkpoint cases); exactly one error line must follow.
  string(REPLACE ";" "," err_nosemi "${err}")  # a ';' in a message would split the CMake list
  string(REGEX MATCHALL "minillm: error:[^\n]*" errs "${err_nosemi}")
  list(LENGTH errs n_err)
  if(rc EQUAL 0 OR NOT rc MATCHES "^[0-9]+$" OR rc GREATER 2)
    message(FATAL_ERROR "${name}: expected exit code 1 or 2, got '${rc}'\nstderr:\n${err}")
  endif()
  if(NOT n_err EQUAL 1)
    message(FATAL_ERROR "${name}: expected exactly one 'minillm: error:' line, got ${n_err}\nstderr:\n${err}")
  endif()
  string(FIND "${err}" "Segmentation" seg)
  string(FIND "${err}" "terminate called" term)
  if(NOT seg EQUAL -1 OR NOT term EQUAL -1)
    message(FATAL_ERROR "${name}: crashed\n${err}")
  endif()
  message(STATUS "${name}: rc ${rc}: ${errs}")
endforeach()
