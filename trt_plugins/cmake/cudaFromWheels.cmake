# Before project(): when no CUDA compiler is given (CMAKE_CUDA_COMPILER, CUDACXX) and none is on PATH, in
# CUDA_HOME/CUDA_PATH or in /usr/local/cuda, use the nvidia-cuda-nvcc wheel of the python3 on PATH:
# CUDA 13 wheels install site-packages/nvidia/cu13/{bin,include,lib}, CUDA 12 ones nvidia/cuda_nvcc/bin.
# Wheels have lib/ but no lib64/ and no unversioned libcudart.so, so the directory is passed to the linker for
# CMake's compiler checks and FindCUDAToolkit is told where libcudart.so.<major> is.
# CORNERNET_PYTHON (python -m trt_plugins.build passes its own interpreter) says whose wheels to use;
# CORNERNET_SYSTEM_NVCC_PATHS (default /usr/local/cuda/bin) where a system install may be.
if(DEFINED CMAKE_CUDA_COMPILER OR DEFINED ENV{CUDACXX})
    return()
endif()
if(NOT DEFINED CORNERNET_SYSTEM_NVCC_PATHS)
    set(CORNERNET_SYSTEM_NVCC_PATHS /usr/local/cuda/bin)
endif()
find_program(_system_nvcc nvcc HINTS ENV CUDA_HOME ENV CUDA_PATH PATH_SUFFIXES bin PATHS ${CORNERNET_SYSTEM_NVCC_PATHS})
if(_system_nvcc)
    return()
endif()
if(CORNERNET_PYTHON)
    set(_wheel_python "${CORNERNET_PYTHON}")
else()
    find_program(_wheel_python NAMES python3 python)
endif()
if(NOT _wheel_python)
    return()
endif()
execute_process(
    COMMAND "${_wheel_python}" -c "import importlib.util as u\ns = u.find_spec('nvidia')\nprint(*(s.submodule_search_locations or []) if s else [], sep=';')"
    OUTPUT_VARIABLE _wheel_dirs OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
foreach(_dir IN LISTS _wheel_dirs)
    foreach(_root "${_dir}/cu13" "${_dir}/cuda_nvcc")
        if(EXISTS "${_root}/bin/nvcc")
            set(CMAKE_CUDA_COMPILER "${_root}/bin/nvcc" CACHE FILEPATH "CUDA compiler (nvidia-cuda-nvcc wheel)")
            set(CUDAToolkit_ROOT "${_root}")
            foreach(_lib "${_root}/lib" "${_dir}/cuda_runtime/lib")
                if(EXISTS "${_lib}")
                    string(APPEND CMAKE_CUDA_FLAGS_INIT " -L${_lib}")
                    list(APPEND CMAKE_LIBRARY_PATH "${_lib}")
                    file(GLOB _cudart "${_lib}/libcudart.so.[0-9]*")
                    if(_cudart AND NOT DEFINED CUDA_CUDART)
                        list(GET _cudart 0 _cudart)
                        set(CUDA_CUDART "${_cudart}" CACHE FILEPATH "CUDA runtime library (nvidia-cuda-runtime wheel)")
                    endif()
                endif()
            endforeach()
            message(STATUS "Using the CUDA compiler of the nvidia-cuda-nvcc wheel: ${CMAKE_CUDA_COMPILER}")
            return()
        endif()
    endforeach()
endforeach()
