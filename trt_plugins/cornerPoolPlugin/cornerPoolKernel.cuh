/*
 * CornerPool CUDA kernels: running max of an NCHW tensor along H or W (CornerNet corner pooling).
 *
 * Pure CUDA, no TensorRT. Used by the TensorRT plugin (cornerPoolPlugin.cpp) and, through the C entry
 * points below, by the Python wrapper trt_plugins/kernels.py.
 *
 * Values are bit-identical to mmdet's `flip + torch.cummax + flip`: the element that is later in scan order
 * wins when it is NaN or >= the running value, and a NaN running value is only replaced by a later NaN.
 */
#ifndef CORNERNET_CORNER_POOL_KERNEL_CUH
#define CORNERNET_CORNER_POOL_KERNEL_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#define CORNER_POOL_API __attribute__((visibility("default")))

namespace cornernet
{

//! Direction of the running max; the values are the plugin field `mode` and mmcv's `mode`.
enum class CornerPoolMode : int32_t
{
    kTOP = 0,    //!< out[h] = max over in[h' >= h] (scan from the bottom row up)
    kBOTTOM = 1, //!< out[h] = max over in[h' <= h]
    kLEFT = 2,   //!< out[w] = max over in[w' >= w] (scan from the right column leftwards)
    kRIGHT = 3,  //!< out[w] = max over in[w' <= w]
};

constexpr int32_t kNB_CORNER_POOL_MODES = 4;

//!
//! \brief Corner pooling of a contiguous NCHW tensor, enqueued on `stream`.
//!
//! \param planes N * C.
//! \param input, output device pointers to planes * height * width elements; they must not overlap.
//!
//! Allocates nothing and never synchronises. Empty tensors launch nothing.
//!
//! \return cudaSuccess, cudaErrorInvalidValue for bad arguments, or the launch error (cudaGetLastError()).
//!
template <typename T>
cudaError_t cornerPoolImpl(cudaStream_t stream, T const* input, T* output, int64_t planes, int32_t height,
    int32_t width, CornerPoolMode mode);

} // namespace cornernet

extern "C"
{
    //! Element types of cornerPoolForward().
    enum CornerPoolDataType
    {
        kCORNER_POOL_FLOAT32 = 0,
        kCORNER_POOL_FLOAT16 = 1,
        kCORNER_POOL_BFLOAT16 = 2,
    };

    //! C entry point over cornerPoolImpl(): `dtype` is a CornerPoolDataType, `mode` a CornerPoolMode value.
    //! Returns a cudaError_t value (0 = success).
    CORNER_POOL_API int cornerPoolForward(void const* input, void* output, int dtype, int n, int c, int h, int w,
        int mode, cudaStream_t stream);

    //! Text of a cudaError_t value returned by cornerPoolForward().
    CORNER_POOL_API char const* cornerPoolErrorString(int code);
}

#endif // CORNERNET_CORNER_POOL_KERNEL_CUH
