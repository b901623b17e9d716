# strata_add_layer(NAME SOURCES ... [PUBLIC ...] [PRIVATE ...] [EXPORT] [SDK_HEADERS]): one layer
# of the architecture (docs/architecture.md): the shared library libstrata_NAME with the alias
# strata::NAME, its headers in <folder>/include, C++20 and the project's warnings.
#   PUBLIC, PRIVATE  what it links (only layers below it: tests/scripts/test_layering.sh checks)
#   EXPORT           part of the installed CMake package (StrataTargets), not only installed
#   SDK_HEADERS      its headers are installed too
function(strata_add_layer name)
  cmake_parse_arguments(ARG "EXPORT;SDK_HEADERS" "" "SOURCES;PUBLIC;PRIVATE" ${ARGN})
  set(target strata_${name})
  add_library(${target} SHARED ${ARG_SOURCES})
  add_library(strata::${name} ALIAS ${target})
  target_include_directories(${target} PUBLIC
    $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/include>
    $<INSTALL_INTERFACE:include>)
  # Plugins and programs built against an installed Strata get C++20 from the target itself.
  target_compile_features(${target} PUBLIC cxx_std_20)
  target_link_libraries(${target} PUBLIC ${ARG_PUBLIC} PRIVATE strata_warnings ${ARG_PRIVATE})
  set_target_properties(${target} PROPERTIES OUTPUT_NAME ${target} EXPORT_NAME ${name})
  if(ARG_EXPORT)
    install(TARGETS ${target} EXPORT StrataTargets LIBRARY DESTINATION lib INCLUDES DESTINATION include)
  else()
    install(TARGETS ${target} LIBRARY DESTINATION lib)
  endif()
  if(ARG_SDK_HEADERS)
    install(DIRECTORY include/strata DESTINATION include)
  endif()
endfunction()
