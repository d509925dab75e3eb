// The 16-bit float types of cuda_fp16.h and cuda_bf16.h under the SIMT emulator: storage and the conversions the
// kernels use (exact, so comparisons in float order values as the GPU does).
#pragma once
#include <cstdint>
#include <cstring>

#include "simt.h"

struct __half
{
    uint16_t bits;
};

struct __nv_bfloat16
{
    uint16_t bits;
};

inline __half __ushort_as_half(unsigned short bits)
{
    return __half{bits};
}

inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short bits)
{
    return __nv_bfloat16{bits};
}

//! IEEE binary16 -> binary32, exact for every value (subnormals, +-inf; NaN payloads shifted into place).
inline float __half2float(__half h)
{
    uint32_t const sign = static_cast<uint32_t>(h.bits & 0x8000U) << 16;
    uint32_t const exponent = (h.bits >> 10) & 0x1fU;
    uint32_t mantissa = h.bits & 0x3ffU;
    uint32_t bits = 0;
    if (exponent == 0x1fU)
    {
        bits = sign | 0x7f800000U | (mantissa << 13);
    }
    else if (exponent != 0)
    {
        bits = sign | ((exponent + 112U) << 23) | (mantissa << 13);
    }
    else if (mantissa == 0)
    {
        bits = sign;
    }
    else
    {
        // Subnormal: normalise the mantissa; the value is mantissa * 2^-24.
        uint32_t shift = 0;
        while ((mantissa & 0x400U) == 0)
        {
            mantissa <<= 1;
            ++shift;
        }
        bits = sign | ((113U - shift) << 23) | ((mantissa & 0x3ffU) << 13);
    }
    float value;
    std::memcpy(&value, &bits, sizeof(value));
    return value;
}

//! bfloat16 is the upper half of a binary32, so the conversion is a shift.
inline float __bfloat162float(__nv_bfloat16 h)
{
    uint32_t const bits = static_cast<uint32_t>(h.bits) << 16;
    float value;
    std::memcpy(&value, &bits, sizeof(value));
    return value;
}
