# Small declarative helpers in the style of absl_cc_library. Every target is
# aliased snapback::NAME; sources are listed explicitly, never globbed.
include_guard(GLOBAL)

set(SNAPBACK_WARNINGS -Wall -Wextra -Werror)
# clang checks the ABSL_GUARDED_BY / ABSL_EXCLUSIVE_LOCKS_REQUIRED annotations
# at compile time (the `clang` preset; ./dev test builds it).
if(CMAKE_CXX_COMPILER_ID MATCHES "Clang")
  list(APPEND SNAPBACK_WARNINGS -Wthread-safety)
endif()

# snapback_cc_library(NAME n SRCS ... HDRS ... DEPS ... [PUBLIC_INCLUDE dir])
function(snapback_cc_library)
  cmake_parse_arguments(A "" "NAME" "SRCS;HDRS;DEPS" ${ARGN})
  set(_target snapback_${A_NAME})
  if(A_SRCS)
    add_library(${_target} STATIC ${A_SRCS} ${A_HDRS})
    target_compile_options(${_target} PRIVATE ${SNAPBACK_WARNINGS})
    target_link_libraries(${_target} PUBLIC ${A_DEPS})
    target_include_directories(${_target} PUBLIC ${PROJECT_SOURCE_DIR}
                                                 ${PROJECT_SOURCE_DIR}/include)
  else()
    add_library(${_target} INTERFACE)
    target_link_libraries(${_target} INTERFACE ${A_DEPS})
    target_include_directories(${_target} INTERFACE ${PROJECT_SOURCE_DIR}
                                                    ${PROJECT_SOURCE_DIR}/include)
  endif()
  add_library(snapback::${A_NAME} ALIAS ${_target})
endfunction()

# snapback_cc_binary(NAME n SRCS ... DEPS ... [OUTPUT_NAME name])
function(snapback_cc_binary)
  cmake_parse_arguments(A "" "NAME;OUTPUT_NAME" "SRCS;DEPS" ${ARGN})
  add_executable(${A_NAME} ${A_SRCS})
  target_compile_options(${A_NAME} PRIVATE ${SNAPBACK_WARNINGS})
  target_link_libraries(${A_NAME} PRIVATE ${A_DEPS})
  if(A_OUTPUT_NAME)
    set_target_properties(${A_NAME} PROPERTIES OUTPUT_NAME ${A_OUTPUT_NAME})
  endif()
  set_target_properties(${A_NAME} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bin)
endfunction()

# snapback_cc_test(NAME n SRCS ... DEPS ... [LABELS ...] [TIMEOUT s])
function(snapback_cc_test)
  if(NOT SNAPBACK_BUILD_TESTS)
    return()
  endif()
  cmake_parse_arguments(A "" "NAME;TIMEOUT" "SRCS;DEPS;LABELS" ${ARGN})
  add_executable(${A_NAME} ${A_SRCS})
  target_compile_options(${A_NAME} PRIVATE ${SNAPBACK_WARNINGS})
  target_link_libraries(${A_NAME} PRIVATE ${A_DEPS} GTest::gtest GTest::gtest_main)
  set_target_properties(${A_NAME} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/tests)
  add_test(NAME ${A_NAME} COMMAND ${A_NAME})
  if(NOT A_TIMEOUT)
    set(A_TIMEOUT 600)
  endif()
  set_tests_properties(${A_NAME} PROPERTIES TIMEOUT ${A_TIMEOUT}
                       ENVIRONMENT "SNAPBACK_BIN_DIR=${PROJECT_BINARY_DIR}/bin")
  if(A_LABELS)
    set_tests_properties(${A_NAME} PROPERTIES LABELS "${A_LABELS}")
  endif()
endfunction()

# snapback_cc_bench(NAME n SRCS ... DEPS ...): built into build/bench/, run by ./dev bench.
function(snapback_cc_bench)
  cmake_parse_arguments(A "" "NAME" "SRCS;DEPS" ${ARGN})
  add_executable(${A_NAME} ${A_SRCS})
  target_compile_options(${A_NAME} PRIVATE ${SNAPBACK_WARNINGS})
  target_link_libraries(${A_NAME} PRIVATE ${A_DEPS})
  set_target_properties(${A_NAME} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bench)
endfunction()

# snapback_proto_library(NAME n PROTOS ... [GRPC]): C++ messages (+ gRPC stubs).
function(snapback_proto_library)
  cmake_parse_arguments(A "GRPC" "NAME" "PROTOS" ${ARGN})
  set(_srcs)
  set(_hdrs)
  foreach(_proto ${A_PROTOS})
    get_filename_component(_abs ${_proto} ABSOLUTE)
    file(RELATIVE_PATH _rel ${PROJECT_SOURCE_DIR}/proto ${_abs})
    string(REGEX REPLACE "\\.proto$" "" _base ${_rel})
    set(_out ${PROJECT_BINARY_DIR}/proto_gen)
    set(_gen ${_out}/${_base}.pb.cc ${_out}/${_base}.pb.h)
    set(_args --cpp_out=${_out})
    if(A_GRPC)
      list(APPEND _gen ${_out}/${_base}.grpc.pb.cc ${_out}/${_base}.grpc.pb.h)
      list(APPEND _args --grpc_out=${_out} --plugin=protoc-gen-grpc=${SNAPBACK_GRPC_CPP_PLUGIN})
    endif()
    add_custom_command(
      OUTPUT ${_gen}
      COMMAND ${CMAKE_COMMAND} -E make_directory ${_out}
      COMMAND protobuf::protoc -I ${PROJECT_SOURCE_DIR}/proto ${_args} ${_abs}
      DEPENDS ${_abs} protobuf::protoc
      COMMENT "protoc ${_rel}")
    list(APPEND _srcs ${_gen})
  endforeach()
  add_library(snapback_${A_NAME} STATIC ${_srcs})
  target_include_directories(snapback_${A_NAME} PUBLIC ${PROJECT_BINARY_DIR}/proto_gen)
  target_link_libraries(snapback_${A_NAME} PUBLIC protobuf::libprotobuf)
  if(A_GRPC)
    target_link_libraries(snapback_${A_NAME} PUBLIC gRPC::grpc++)
  endif()
  add_library(snapback::${A_NAME} ALIAS snapback_${A_NAME})
endfunction()
