# Finds TensorRT's headers. The plugin only implements TensorRT's interfaces, so no TensorRT library is linked.
#
# Looks in TENSORRT_INCLUDE_DIR, then TENSORRT_ROOT(/include) (CMake or environment variables), the include/
# folder of pip-installed tensorrt packages (the PyPI wheels ship none today), then system paths (Debian's
# libnvinfer-dev installs into /usr/include/<triplet>).
#
# Sets TensorRTHeaders_FOUND, TENSORRT_INCLUDE_DIR (cache) and TensorRTHeaders_VERSION (major.minor.patch).
set(_trt_hints)
foreach(_var TENSORRT_INCLUDE_DIR TENSORRT_ROOT)
    if(DEFINED ENV{${_var}})
        list(APPEND _trt_hints "$ENV{${_var}}" "$ENV{${_var}}/include")
    endif()
endforeach()
if(DEFINED TENSORRT_ROOT)
    list(APPEND _trt_hints "${TENSORRT_ROOT}" "${TENSORRT_ROOT}/include")
endif()
if(CORNERNET_PYTHON)
    set(_trt_python "${CORNERNET_PYTHON}")
else()
    find_program(_trt_python NAMES python3 python)
endif()
if(_trt_python)
    execute_process(
        COMMAND "${_trt_python}" -c "import importlib.util as u\nfor n in ('tensorrt', 'tensorrt_libs'):\n    s = u.find_spec(n)\n    print(*(s.submodule_search_locations or []) if s else [], sep=';', end=';')"
        OUTPUT_VARIABLE _trt_packages OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    foreach(_dir IN LISTS _trt_packages)
        if(_dir)
            list(APPEND _trt_hints "${_dir}/include")
        endif()
    endforeach()
endif()

find_path(TENSORRT_INCLUDE_DIR NAMES NvInferRuntime.h
    HINTS ${_trt_hints}
    PATHS /usr/include/${CMAKE_LIBRARY_ARCHITECTURE} /usr/local/tensorrt/include /usr/local/TensorRT/include
          /opt/tensorrt/include
    DOC "TensorRT include directory (holds NvInferRuntime.h)")

if(TENSORRT_INCLUDE_DIR AND EXISTS "${TENSORRT_INCLUDE_DIR}/NvInferVersion.h")
    file(STRINGS "${TENSORRT_INCLUDE_DIR}/NvInferVersion.h" _trt_defines REGEX "^#define [A-Z_]+ [A-Z_0-9]+")
    set(TensorRTHeaders_VERSION)
    foreach(_part MAJOR MINOR PATCH)
        # NV_TENSORRT_MAJOR is a number (10.0-10.x) or names TRT_MAJOR_ENTERPRISE (later headers).
        set(_name "NV_TENSORRT_${_part}")
        foreach(_hop RANGE 2)
            string(REGEX MATCH "#define ${_name} ([A-Z_0-9]+)" _match "${_trt_defines}")
            if(_match)
                set(_name "${CMAKE_MATCH_1}")
            endif()
        endforeach()
        list(APPEND TensorRTHeaders_VERSION "${_name}")
    endforeach()
    list(JOIN TensorRTHeaders_VERSION "." TensorRTHeaders_VERSION)
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(TensorRTHeaders
    REQUIRED_VARS TENSORRT_INCLUDE_DIR
    VERSION_VAR TensorRTHeaders_VERSION)
if(TensorRTHeaders_FOUND AND TensorRTHeaders_VERSION VERSION_LESS 10)
    message(STATUS "TensorRT ${TensorRTHeaders_VERSION} headers in ${TENSORRT_INCLUDE_DIR} predate IPluginV3 (10.0): ignored")
    set(TensorRTHeaders_FOUND FALSE)
endif()
