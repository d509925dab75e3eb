// Stand-in for CUDA's cuda_bf16.h under the SIMT emulator: the storage type and the conversions the kernels use.
#pragma once
#include <cstdint>
#include <cstring>

#include "simt.h"

struct __nv_bfloat16
{
    uint16_t bits;
};

inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short bits)
{
    return __nv_bfloat16{bits};
}

//! bfloat16 is the upper half of a binary32, so the conversion is a shift.
inline float __bfloat162float(__nv_bfloat16 h)
{
    uint32_t const bits = static_cast<uint32_t>(h.bits) << 16;
    float value;
    std::memcpy(&value, &bits, sizeof(value));
    return value;
}
