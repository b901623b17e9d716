# strata_add_plugin(<name> SOURCES <files...> [LIBRARIES <targets...>] [OUTPUT_DIRECTORY <dir>]
#                   [KEEP_LOADED])
#
# Builds a Strata plugin: a shared module named libstrata_<name>.so, linked against the core,
# exporting only its `strata_plugin` entry point, and placed where the `strata` tool looks for
# plugins (build/lib/strata) unless OUTPUT_DIRECTORY says otherwise.
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
    set(ARG_OUTPUT_DIRECTORY ${STRATA_PLUGIN_DIR})
  endif()
  set(target strata_${name})
  add_library(${target} MODULE ${ARG_SOURCES})
  target_link_libraries(${target} PRIVATE strata::core strata_warnings strata_native ${ARG_LIBRARIES})
  set_target_properties(${target} PROPERTIES
    PREFIX "lib"
    LIBRARY_OUTPUT_DIRECTORY ${ARG_OUTPUT_DIRECTORY}
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON)
  if(ARG_KEEP_LOADED)
    target_link_options(${target} PRIVATE LINKER:-z,nodelete)
  endif()
  if(ARG_OUTPUT_DIRECTORY STREQUAL STRATA_PLUGIN_DIR)
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
