// Stand-in for CUDA's cuda_fp16.h under the SIMT emulator (see simt_float16.h).
#pragma once
#include "simt_float16.h"
