/*
 * CornerPool CUDA kernels (see cornerPoolKernel.cuh and README.md).
 *
 * Both kernels read every element once and write it once; the work is a memory-bound scan.
 * - verticalScanKernel (top/bottom, scan along H, row stride W): one thread per column pack of V elements
 *   (coalesced across a warp), the running max in registers. When N*C*W/V columns cannot fill the GPU, the
 *   block's y dimension splits H: each thread scans kROWS_PER_THREAD consecutive rows in registers, the
 *   chunk totals meet in shared memory, and each thread fixes its chunk up with the max of the chunks before it.
 * - horizontalScanKernel (left/right, scan along contiguous W): a group of G lanes (G <= 32, a power of two)
 *   per row, each lane a pack of V elements; a shuffle scan over the lanes and a carry between G*V-wide
 *   tiles. Reverse directions walk the tiles from the end of the row and shuffle downwards.
 */
#include "cornerPoolKernel.cuh"

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace cornernet
{
namespace
{

constexpr int32_t kBLOCK_THREADS = 256;
constexpr int32_t kWARP_SIZE = 32;
constexpr uint32_t kFULL_MASK = 0xffffffffU;
//! Rows one thread of the vertical kernel holds in registers per step (loads in flight per thread).
constexpr int32_t kROWS_PER_THREAD = 8;
//! Most threads that share one column in the vertical kernel (blockDim.y).
constexpr int32_t kMAX_SPLIT = 8;
//! Threads per SM the vertical kernel aims for before it stops splitting H.
constexpr int64_t kTARGET_THREADS_PER_SM = 1024;
#ifndef CORNER_POOL_MAX_GRID_BLOCKS
#define CORNER_POOL_MAX_GRID_BLOCKS (int64_t{1} << 20)
#endif
//! Grid size cap; larger tensors take the kernels' grid-stride loops (tests lower it to reach them).
constexpr int64_t kMAX_GRID_BLOCKS = CORNER_POOL_MAX_GRID_BLOCKS;
constexpr int32_t kMAX_DEVICES = 64;
constexpr int32_t kFALLBACK_SM_COUNT = 132;

//! V consecutive elements moved with one vector load/store (4, 8 or 16 bytes).
template <typename T, int32_t V>
struct alignas(sizeof(T) * V) Pack
{
    T v[V];
};

__device__ __forceinline__ float toFloat(float x)
{
    return x;
}

__device__ __forceinline__ float toFloat(__half x)
{
    return __half2float(x);
}

__device__ __forceinline__ float toFloat(__nv_bfloat16 x)
{
    return __bfloat162float(x);
}

template <typename T>
__device__ __forceinline__ T negativeInfinity();

template <>
__device__ __forceinline__ float negativeInfinity<float>()
{
    return __uint_as_float(0xff800000U);
}

template <>
__device__ __forceinline__ __half negativeInfinity<__half>()
{
    return __ushort_as_half(static_cast<unsigned short>(0xfc00U));
}

template <>
__device__ __forceinline__ __nv_bfloat16 negativeInfinity<__nv_bfloat16>()
{
    return __ushort_as_bfloat16(static_cast<unsigned short>(0xff80U));
}

//! torch.cummax's update rule (ATen ScanUtils): the later element (in scan order) wins when it is NaN or >= the
//! earlier one; a NaN earlier value is kept unless the later one is NaN too. The rule selects "the last NaN,
//! else the last maximum" of a sequence, so it is associative and -inf is its identity on either side.
//! The comparison is exact in float for half and bfloat16; the selected operand keeps its own bits.
template <typename T>
__device__ __forceinline__ T combine(T earlier, T later)
{
    float const e = toFloat(earlier);
    float const l = toFloat(later);
    return (l != l || l >= e) ? later : earlier;
}

template <typename T, int32_t V>
__device__ __forceinline__ Pack<T, V> combine(Pack<T, V> const& earlier, Pack<T, V> const& later)
{
    Pack<T, V> result;
#pragma unroll
    for (int32_t i = 0; i < V; ++i)
    {
        result.v[i] = combine(earlier.v[i], later.v[i]);
    }
    return result;
}

template <typename T, int32_t V>
__device__ __forceinline__ Pack<T, V> filledPack(T value)
{
    Pack<T, V> result;
#pragma unroll
    for (int32_t i = 0; i < V; ++i)
    {
        result.v[i] = value;
    }
    return result;
}

//!
//! Top/bottom. Column c (0 <= c < planes * packsPerRow) is the pack c % packsPerRow of plane c / packsPerRow.
//! blockDim = (columns per block, split). Logical row i is row `reverse ? height-1-i : i`.
//!
template <typename T, int32_t V>
__global__ void __launch_bounds__(kBLOCK_THREADS) verticalScanKernel(T const* __restrict__ input,
    T* __restrict__ output, int64_t nbColumns, int32_t packsPerRow, int32_t height, bool reverse)
{
    using P = Pack<T, V>;
    __shared__ P sTotals[2][kBLOCK_THREADS];

    P const* __restrict__ in = reinterpret_cast<P const*>(input);
    P* __restrict__ out = reinterpret_cast<P*>(output);
    int32_t const columnsPerBlock = static_cast<int32_t>(blockDim.x);
    int32_t const split = static_cast<int32_t>(blockDim.y);
    int32_t const tx = static_cast<int32_t>(threadIdx.x);
    int32_t const ty = static_cast<int32_t>(threadIdx.y);
    int32_t const rowsPerSegment = split * kROWS_PER_THREAD;
    int64_t const planeSize = static_cast<int64_t>(height) * packsPerRow;
    P const lowest = filledPack<T, V>(negativeInfinity<T>());
    int32_t buffer = 0;

    // Loop bounds are uniform over the block, so every thread reaches each __syncthreads().
    for (int64_t tileStart = static_cast<int64_t>(blockIdx.x) * columnsPerBlock; tileStart < nbColumns;
         tileStart += static_cast<int64_t>(gridDim.x) * columnsPerBlock)
    {
        int64_t const column = tileStart + tx;
        bool const active = column < nbColumns;
        int64_t base = 0;
        if (active)
        {
            int64_t const plane = column / packsPerRow;
            base = plane * planeSize + (column - plane * packsPerRow);
        }

        P carry = lowest; // running max of all rows before this segment
        for (int32_t segment = 0; segment < height; segment += rowsPerSegment)
        {
            int32_t const first = segment + ty * kROWS_PER_THREAD;
            P x[kROWS_PER_THREAD];
#pragma unroll
            for (int32_t r = 0; r < kROWS_PER_THREAD; ++r)
            {
                int32_t const i = first + r;
                if (active && i < height)
                {
                    int32_t const h = reverse ? height - 1 - i : i;
                    x[r] = in[base + static_cast<int64_t>(h) * packsPerRow];
                }
                else
                {
                    x[r] = lowest;
                }
            }
#pragma unroll
            for (int32_t r = 1; r < kROWS_PER_THREAD; ++r)
            {
                x[r] = combine(x[r - 1], x[r]);
            }

            P prefix = carry; // max of every row before this thread's chunk
            if (split > 1)
            {
                sTotals[buffer][ty * columnsPerBlock + tx] = x[kROWS_PER_THREAD - 1];
                __syncthreads();
                for (int32_t k = 0; k < split; ++k)
                {
                    P const total = sTotals[buffer][k * columnsPerBlock + tx];
                    if (k < ty)
                    {
                        prefix = combine(prefix, total);
                    }
                    carry = combine(carry, total);
                }
                // Double buffering: the next segment writes the other buffer, and the one after that can only
                // start once every thread has passed the next barrier, i.e. finished reading this one.
                buffer ^= 1;
            }
            else
            {
                carry = combine(carry, x[kROWS_PER_THREAD - 1]);
            }

#pragma unroll
            for (int32_t r = 0; r < kROWS_PER_THREAD; ++r)
            {
                int32_t const i = first + r;
                if (active && i < height)
                {
                    int32_t const h = reverse ? height - 1 - i : i;
                    out[base + static_cast<int64_t>(h) * packsPerRow] = combine(prefix, x[r]);
                }
            }
        }
    }
}

//!
//! Left/right. A group of 2^groupLog2 lanes scans one row of packsPerRow packs; a warp holds 32 >> groupLog2 rows.
//!
template <typename T, int32_t V>
__global__ void __launch_bounds__(kBLOCK_THREADS) horizontalScanKernel(T const* __restrict__ input,
    T* __restrict__ output, int64_t nbRows, int32_t packsPerRow, int32_t groupLog2, bool reverse)
{
    using P = Pack<T, V>;
    P const* __restrict__ in = reinterpret_cast<P const*>(input);
    P* __restrict__ out = reinterpret_cast<P*>(output);

    int32_t const groupSize = 1 << groupLog2;
    int32_t const lane = static_cast<int32_t>(threadIdx.x) & (kWARP_SIZE - 1);
    int32_t const member = lane & (groupSize - 1);
    int64_t const rowsPerWarp = kWARP_SIZE >> groupLog2;
    int64_t const warpsPerBlock = blockDim.x / kWARP_SIZE;
    int64_t const warp = static_cast<int64_t>(blockIdx.x) * warpsPerBlock + threadIdx.x / kWARP_SIZE;
    int64_t const warpStride = static_cast<int64_t>(gridDim.x) * warpsPerBlock;
    int32_t const nbTiles = (packsPerRow + groupSize - 1) >> groupLog2;
    T const lowest = negativeInfinity<T>();
    // In scan order the neighbour before a lane is member-1 (forward) or member+1 (reverse).
    bool const hasPrevious = reverse ? member + 1 < groupSize : member > 0;
    int32_t const lastMember = reverse ? 0 : groupSize - 1;

    // firstRow is uniform over the warp, so all 32 lanes take part in every shuffle.
    for (int64_t firstRow = warp * rowsPerWarp; firstRow < nbRows; firstRow += warpStride * rowsPerWarp)
    {
        int64_t const row = firstRow + (lane >> groupLog2);
        bool const rowValid = row < nbRows;
        int64_t const base = rowValid ? row * packsPerRow : 0;

        auto packIndex = [&](int32_t step) {
            int32_t const tile = reverse ? nbTiles - 1 - step : step;
            return (tile << groupLog2) + member;
        };
        auto load = [&](int32_t step) {
            int32_t const p = packIndex(step);
            return (rowValid && p < packsPerRow) ? in[base + p] : filledPack<T, V>(lowest);
        };

        T carry = lowest; // running max of the tiles already done
        P next = load(0);
        for (int32_t step = 0; step < nbTiles; ++step)
        {
            P x = next;
            if (step + 1 < nbTiles)
            {
                next = load(step + 1); // issued before this tile's shuffles
            }

            // Scan inside the pack, in scan order.
            if (reverse)
            {
#pragma unroll
                for (int32_t i = V - 2; i >= 0; --i)
                {
                    x.v[i] = combine(x.v[i + 1], x.v[i]);
                }
            }
            else
            {
#pragma unroll
                for (int32_t i = 1; i < V; ++i)
                {
                    x.v[i] = combine(x.v[i - 1], x.v[i]);
                }
            }
            T inclusive = reverse ? x.v[0] : x.v[V - 1];

            // Inclusive scan of the lane totals over the group (Hillis-Steele); `other` is always earlier.
            for (int32_t d = 1; d < groupSize; d <<= 1)
            {
                if (reverse)
                {
                    T const other = __shfl_down_sync(kFULL_MASK, inclusive, d, groupSize);
                    if (member + d < groupSize)
                    {
                        inclusive = combine(other, inclusive);
                    }
                }
                else
                {
                    T const other = __shfl_up_sync(kFULL_MASK, inclusive, d, groupSize);
                    if (member >= d)
                    {
                        inclusive = combine(other, inclusive);
                    }
                }
            }
            T const previous = reverse ? __shfl_down_sync(kFULL_MASK, inclusive, 1, groupSize)
                                       : __shfl_up_sync(kFULL_MASK, inclusive, 1, groupSize);
            T const tileTotal = __shfl_sync(kFULL_MASK, inclusive, lastMember, groupSize);
            T const prefix = hasPrevious ? combine(carry, previous) : carry;
            carry = combine(carry, tileTotal);

            int32_t const p = packIndex(step);
            if (rowValid && p < packsPerRow)
            {
#pragma unroll
                for (int32_t i = 0; i < V; ++i)
                {
                    x.v[i] = combine(prefix, x.v[i]);
                }
                out[base + p] = x;
            }
        }
    }
}

int64_t ceilDiv(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

//! SM count of the current device, cached per device (enqueue must stay cheap).
int32_t multiProcessorCount()
{
    static std::atomic<int32_t> sCounts[kMAX_DEVICES];
    int32_t device = 0;
    if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMAX_DEVICES)
    {
        return kFALLBACK_SM_COUNT;
    }
    int32_t count = sCounts[device].load(std::memory_order_relaxed);
    if (count <= 0)
    {
        if (cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || count <= 0)
        {
            return kFALLBACK_SM_COUNT;
        }
        sCounts[device].store(count, std::memory_order_relaxed);
    }
    return count;
}

template <typename T, int32_t V>
cudaError_t launchVertical(
    cudaStream_t stream, T const* input, T* output, int64_t planes, int32_t height, int32_t width, bool reverse)
{
    int32_t const packsPerRow = width / V;
    int64_t const nbColumns = planes * packsPerRow;
    int64_t const targetThreads = multiProcessorCount() * kTARGET_THREADS_PER_SM;
    int64_t const chunks = ceilDiv(height, kROWS_PER_THREAD);
    int32_t split = 1;
    while (split < kMAX_SPLIT && 2 * split <= chunks && nbColumns * split < targetThreads)
    {
        split *= 2;
    }
    dim3 const block(kBLOCK_THREADS / split, split);
    int64_t const blocks = std::min(ceilDiv(nbColumns, block.x), kMAX_GRID_BLOCKS);
    verticalScanKernel<T, V><<<static_cast<uint32_t>(blocks), block, 0, stream>>>(
        input, output, nbColumns, packsPerRow, height, reverse);
    return cudaGetLastError();
}

template <typename T, int32_t V>
cudaError_t launchHorizontal(
    cudaStream_t stream, T const* input, T* output, int64_t planes, int32_t height, int32_t width, bool reverse)
{
    int32_t const packsPerRow = width / V;
    int64_t const nbRows = planes * height;
    int32_t groupLog2 = 0;
    while ((1 << groupLog2) < packsPerRow && (1 << groupLog2) < kWARP_SIZE)
    {
        ++groupLog2;
    }
    int64_t const rowsPerBlock = (kBLOCK_THREADS / kWARP_SIZE) * (kWARP_SIZE >> groupLog2);
    int64_t const blocks = std::min(ceilDiv(nbRows, rowsPerBlock), kMAX_GRID_BLOCKS);
    horizontalScanKernel<T, V><<<static_cast<uint32_t>(blocks), kBLOCK_THREADS, 0, stream>>>(
        input, output, nbRows, packsPerRow, groupLog2, reverse);
    return cudaGetLastError();
}

template <typename T, int32_t V>
cudaError_t launch(cudaStream_t stream, T const* input, T* output, int64_t planes, int32_t height, int32_t width,
    CornerPoolMode mode)
{
    bool const reverse = mode == CornerPoolMode::kTOP || mode == CornerPoolMode::kLEFT;
    if (mode == CornerPoolMode::kTOP || mode == CornerPoolMode::kBOTTOM)
    {
        return launchVertical<T, V>(stream, input, output, planes, height, width, reverse);
    }
    return launchHorizontal<T, V>(stream, input, output, planes, height, width, reverse);
}

bool isAligned(void const* pointer, uintptr_t bytes)
{
    return reinterpret_cast<uintptr_t>(pointer) % bytes == 0;
}

} // namespace

template <typename T>
cudaError_t cornerPoolImpl(cudaStream_t stream, T const* input, T* output, int64_t planes, int32_t height,
    int32_t width, CornerPoolMode mode)
{
    auto const modeValue = static_cast<int32_t>(mode);
    if (planes < 0 || height < 0 || width < 0 || modeValue < 0 || modeValue >= kNB_CORNER_POOL_MODES)
    {
        return cudaErrorInvalidValue;
    }
    if (planes == 0 || height == 0 || width == 0)
    {
        return cudaSuccess;
    }
    if (input == nullptr || output == nullptr || input == output)
    {
        return cudaErrorInvalidValue;
    }
    // Widest pack (16 bytes) that divides a row and fits the pointers' alignment; 2 elements; else 1.
    constexpr int32_t kWIDE = static_cast<int32_t>(16 / sizeof(T));
    auto const fits = [&](int32_t v) {
        return width % v == 0 && isAligned(input, v * sizeof(T)) && isAligned(output, v * sizeof(T));
    };
    if (fits(kWIDE))
    {
        return launch<T, kWIDE>(stream, input, output, planes, height, width, mode);
    }
    if (fits(2))
    {
        return launch<T, 2>(stream, input, output, planes, height, width, mode);
    }
    return launch<T, 1>(stream, input, output, planes, height, width, mode);
}

template cudaError_t cornerPoolImpl<float>(cudaStream_t, float const*, float*, int64_t, int32_t, int32_t,
    CornerPoolMode);
template cudaError_t cornerPoolImpl<__half>(cudaStream_t, __half const*, __half*, int64_t, int32_t, int32_t,
    CornerPoolMode);
template cudaError_t cornerPoolImpl<__nv_bfloat16>(cudaStream_t, __nv_bfloat16 const*, __nv_bfloat16*, int64_t,
    int32_t, int32_t, CornerPoolMode);

} // namespace cornernet

extern "C" CORNER_POOL_API int cornerPoolForward(void const* input, void* output, int dtype, int n, int c, int h,
    int w, int mode, cudaStream_t stream)
{
    using cornernet::cornerPoolImpl;
    if (n < 0 || c < 0)
    {
        return static_cast<int>(cudaErrorInvalidValue);
    }
    int64_t const planes = static_cast<int64_t>(n) * c;
    auto const poolMode = static_cast<cornernet::CornerPoolMode>(mode);
    cudaError_t status = cudaErrorInvalidValue;
    switch (dtype)
    {
    case kCORNER_POOL_FLOAT32:
        status = cornerPoolImpl(stream, static_cast<float const*>(input), static_cast<float*>(output), planes, h, w,
            poolMode);
        break;
    case kCORNER_POOL_FLOAT16:
        status = cornerPoolImpl(stream, static_cast<__half const*>(input), static_cast<__half*>(output), planes, h,
            w, poolMode);
        break;
    case kCORNER_POOL_BFLOAT16:
        status = cornerPoolImpl(stream, static_cast<__nv_bfloat16 const*>(input),
            static_cast<__nv_bfloat16*>(output), planes, h, w, poolMode);
        break;
    default: break;
    }
    return static_cast<int>(status);
}

extern "C" CORNER_POOL_API char const* cornerPoolErrorString(int code)
{
    return cudaGetErrorString(static_cast<cudaError_t>(code));
}
