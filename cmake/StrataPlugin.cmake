# strata_add_plugin(<name> SOURCES <files...> [LIBRARIES <targets...>] [OUTPUT_DIRECTORY <dir>]
#                   [KEEP_LOADED])
#
# Builds a Strata plugin: a shared module named libstrata_<name>.so, linked against the core,
# exporting only its `strata_plugin` entry point (and `strata_conformance_cases`, when defined).
# Works in two places:
#   - inside the Strata source tree: the module goes to build/lib/strata, where the `strata` tool
#     looks for plugins, unless OUTPUT_DIRECTORY says otherwise, and is installed to lib/strata;
#   - in a separate project after find_package(Strata) (this file is installed beside
#     StrataConfig.cmake): the module goes to the project's build folder (CMAKE_CURRENT_BINARY_DIR)
#     unless OUTPUT_DIRECTORY says otherwise. Load it through an experiment's `plugins:` list,
#     STRATA_PLUGIN_PATH, or install it into STRATA_PLUGIN_INSTALL_DIR.
#
# Optimized by default: with no CMAKE_BUILD_TYPE the plugin is compiled with the Release flags
# (CMAKE_CXX_FLAGS_RELEASE, -O3 -DNDEBUG), as a property of the plugin target only.
#
# KEEP_LOADED: once loaded, the library is never unmapped (linked with -z nodelete). Use it for a
# plugin whose libraries start threads that outlive its objects, as oneTBB's workers do: unloading
# libtbb under its sleeping workers crashes the process at exit.
function(strata_add_plugin name)
  cmake_parse_arguments(ARG "KEEP_LOADED" "OUTPUT_DIRECTORY" "SOURCES;LIBRARIES" ${ARGN})
  if(NOT ARG_SOURCES)
    message(FATAL_ERROR "strata_add_plugin(${name}): SOURCES is required")
  endif()
  if(NOT ARG_OUTPUT_DIRECTORY)
    if(DEFINED STRATA_PLUGIN_DIR)
      set(ARG_OUTPUT_DIRECTORY ${STRATA_PLUGIN_DIR})
    else()
      set(ARG_OUTPUT_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})
    endif()
  endif()
  set(target strata_${name})
  add_library(${target} MODULE ${ARG_SOURCES})
  target_link_libraries(${target} PRIVATE strata::core ${ARG_LIBRARIES})
  # In the source tree: the project's warning flags (-Werror) and -march=native.
  foreach(flags strata_warnings strata_native)
    if(TARGET ${flags})
      target_link_libraries(${target} PRIVATE ${flags})
    endif()
  endforeach()
  # A plugin is numeric code: built with no build type (CMake's empty configuration, what a plain
  # `cmake -S . -B build` gives) it would get no optimization at all, about 40 % slower end to end.
  # Then this target alone gets the Release flags; an explicit CMAKE_BUILD_TYPE (Debug included)
  # or a multi-config generator's choice is left as it is.
  separate_arguments(release_flags UNIX_COMMAND "${CMAKE_CXX_FLAGS_RELEASE}")
  if(release_flags)
    target_compile_options(${target} PRIVATE "$<$<STREQUAL:$<CONFIG>,>:${release_flags}>")
  endif()
  set_target_properties(${target} PROPERTIES
    PREFIX "lib"
    LIBRARY_OUTPUT_DIRECTORY ${ARG_OUTPUT_DIRECTORY}
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON
    # Installed plugins live in PREFIX/lib/strata and find libstrata_core in PREFIX/lib.
    INSTALL_RPATH "$ORIGIN/..")
  if(ARG_KEEP_LOADED)
    target_link_options(${target} PRIVATE LINKER:-z,nodelete)
  endif()
  if(DEFINED STRATA_PLUGIN_DIR AND ARG_OUTPUT_DIRECTORY STREQUAL STRATA_PLUGIN_DIR)
    set_property(GLOBAL APPEND PROPERTY STRATA_PLUGIN_TARGETS ${target})
  endif()
endfunction()

# strata_add_plugin_folders(): add_subdirectory() for every folder below the current one that has a
# CMakeLists.txt, in name order, so a new plugin is a new folder and nothing else.
function(strata_add_plugin_folders)
  file(GLOB children LIST_DIRECTORIES true RELATIVE ${CMAKE_CURRENT_SOURCE_DIR} CONFIGURE_DEPENDS
       ${CMAKE_CURRENT_SOURCE_DIR}/*)
  list(SORT children)
  foreach(child IN LISTS children)
    if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${child}/CMakeLists.txt)
      add_subdirectory(${child})
    endif()
  endforeach()
endfunction()
