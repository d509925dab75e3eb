// Stand-in for CUDA's cuda_fp16.h under the SIMT emulator: the storage type and the conversions the kernels use.
#pragma once
#include <cstdint>
#include <cstring>

#include "simt.h"

struct __half
{
    uint16_t bits;
};

inline __half __ushort_as_half(unsigned short bits)
{
    return __half{bits};
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
