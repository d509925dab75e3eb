/*
 * A small SIMT emulator: runs CUDA C++ kernels on the CPU so the CornerPool kernels' logic can be tested on a
 * machine without a GPU (tests/test_corner_pool_kernel_emulated.py).
 *
 * What it models: every thread of a block is a fiber (ucontext) on one OS thread; blocks run one after another.
 * __syncthreads() waits for all threads of the block; __shfl_*_sync() exchange values between the 32 lanes of a
 * warp with CUDA's documented `width` segments and out-of-range rules. A barrier that some threads never reach
 * (a divergent __syncthreads or shuffle) is detected and reported instead of hanging, as are lanes of one warp
 * executing different shuffles, masks other than "all 32 lanes", and launch configurations CUDA would refuse.
 * __shared__ variables become function statics, which is exact because only one block runs at a time.
 *
 * What it does not model: the GPU's memory model, timing, or anything about speed. Out-of-bounds and
 * misaligned accesses are caught by building with -fsanitize=address,undefined, not by this header.
 */
#ifndef CORNERNET_TESTS_SIMT_H
#define CORNERNET_TESTS_SIMT_H

#include <ucontext.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define SIMT_ASAN 1
#else
#define SIMT_ASAN 0
#endif

// ---- CUDA built-in types, qualifiers and variables ----------------------------------------------------------

struct uint3
{
    unsigned int x, y, z;
};

struct dim3
{
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
        : x(vx)
        , y(vy)
        , z(vz)
    {
    }
};

#define __global__
#define __host__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};
constexpr int warpSize = 32;

// ---- The parts of the CUDA runtime API the kernels call -----------------------------------------------------

enum cudaError_t
{
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevice = 101,
    cudaErrorLaunchFailure = 719,
};

enum cudaDeviceAttr
{
    cudaDevAttrMultiProcessorCount = 16,
};

struct CUstream_st;
using cudaStream_t = CUstream_st*;
struct CUevent_st;
using cudaEvent_t = CUevent_st*;

namespace simt
{

//! Emulated devices: index -> SM count (0 = a 132-SM H100/H200-sized GPU, 1 = a 1-SM GPU).
inline int const kSM_COUNTS[] = {132, 1};
inline int gCurrentDevice = 0;
inline cudaError_t gLastError = cudaSuccess;
//! Text of the last emulator fault (a divergent barrier, a bad shuffle), empty if none.
inline std::string gFault;

} // namespace simt

inline cudaError_t cudaGetDevice(int* device)
{
    *device = simt::gCurrentDevice;
    return cudaSuccess;
}

inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device)
{
    if (device < 0 || device >= static_cast<int>(sizeof(simt::kSM_COUNTS) / sizeof(int)))
    {
        return cudaErrorInvalidDevice;
    }
    if (attribute != cudaDevAttrMultiProcessorCount)
    {
        return cudaErrorInvalidValue;
    }
    *value = simt::kSM_COUNTS[device];
    return cudaSuccess;
}

inline cudaError_t cudaGetLastError()
{
    cudaError_t const error = simt::gLastError;
    simt::gLastError = cudaSuccess;
    return error;
}

inline char const* cudaGetErrorString(cudaError_t error)
{
    switch (error)
    {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    }
    return "unrecognized error code";
}

inline char const* cudaGetErrorName(cudaError_t error)
{
    switch (error)
    {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    }
    return "cudaErrorUnknown";
}

inline float __uint_as_float(unsigned int bits)
{
    float value;
    std::memcpy(&value, &bits, sizeof(value));
    return value;
}

// ---- The emulator -------------------------------------------------------------------------------------------

namespace simt
{

//! Thrown inside a fiber to abandon the kernel after a fault.
struct Fault : std::runtime_error
{
    using std::runtime_error::runtime_error;
};

struct Barrier
{
    int expected = 0;
    int arrived = 0;
    uint64_t generation = 0;
};

enum class ShuffleKind : int
{
    kIDX,
    kUP,
    kDOWN,
};

struct Slot
{
    unsigned char bytes[16];
    ShuffleKind kind;
    int width;
};

struct Fiber
{
    ucontext_t context;
    std::unique_ptr<char[]> stack;
    uint3 index;
    int linear = 0;
    bool done = false;
    Barrier const* waitingOn = nullptr;
    uint64_t waitGeneration = 0;
    void* fakeStack = nullptr; // AddressSanitizer's bookkeeping for this fiber's stack
};

constexpr size_t kSTACK_BYTES = size_t{256} << 10;

//! One block in flight: its fibers, the block barrier, and per-warp barriers and shuffle slots.
struct Block
{
    std::vector<Fiber> fibers;
    Barrier sync;
    std::vector<Barrier> warpBarriers;
    std::vector<Slot> slots; // 32 per warp
    ucontext_t scheduler;
    Fiber* current = nullptr;
    void (*body)(void*) = nullptr;
    void* argument = nullptr;
    std::string fault;
#if SIMT_ASAN
    void* fakeStack = nullptr;
    void const* schedulerStack = nullptr;
    size_t schedulerStackSize = 0;
#endif
};

inline thread_local Block* gBlock = nullptr;

inline void switchToScheduler(Fiber& fiber, bool finished)
{
    Block& block = *gBlock;
#if SIMT_ASAN
    __sanitizer_start_switch_fiber(finished ? nullptr : &fiber.fakeStack, block.schedulerStack,
        block.schedulerStackSize);
#endif
    swapcontext(&fiber.context, &block.scheduler);
#if SIMT_ASAN
    __sanitizer_finish_switch_fiber(fiber.fakeStack, &block.schedulerStack, &block.schedulerStackSize);
#endif
    (void) finished;
}

//! Wait at `barrier` until `expected` threads have arrived; the last one to arrive continues without switching.
inline void arrive(Barrier& barrier)
{
    Block& block = *gBlock;
    Fiber& fiber = *block.current;
    uint64_t const generation = barrier.generation;
    if (++barrier.arrived == barrier.expected)
    {
        barrier.arrived = 0;
        ++barrier.generation;
        return;
    }
    fiber.waitingOn = &barrier;
    fiber.waitGeneration = generation;
    switchToScheduler(fiber, false);
    if (!block.fault.empty())
    {
        throw Fault(block.fault);
    }
}

inline void fail(std::string const& message)
{
    if (gBlock->fault.empty())
    {
        gBlock->fault = message;
    }
    throw Fault(message);
}

inline void fiberEntry()
{
    Block& block = *gBlock;
    Fiber& fiber = *block.current;
#if SIMT_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &block.schedulerStack, &block.schedulerStackSize);
#endif
    try
    {
        block.body(block.argument);
    }
    catch (Fault const&)
    {
    }
    catch (std::exception const& error)
    {
        if (block.fault.empty())
        {
            block.fault = std::string("exception in kernel: ") + error.what();
        }
    }
    fiber.done = true;
    switchToScheduler(fiber, true);
}

inline std::string describe(Fiber const& fiber, Block const& block)
{
    char text[160];
    char const* where = fiber.waitingOn == &block.sync ? "__syncthreads()" : "a warp shuffle";
    std::snprintf(text, sizeof(text), "thread (%u,%u,%u) of block (%u,%u,%u) waits at %s", fiber.index.x,
        fiber.index.y, fiber.index.z, blockIdx.x, blockIdx.y, blockIdx.z, where);
    return text;
}

//! Point `fiber` at the start of the kernel again, on its own stack.
[[gnu::noinline]] inline void restart(Fiber& fiber)
{
    fiber.done = false;
    fiber.waitingOn = nullptr;
    getcontext(&fiber.context);
    fiber.context.uc_stack.ss_sp = fiber.stack.get();
    fiber.context.uc_stack.ss_size = kSTACK_BYTES;
    fiber.context.uc_link = nullptr;
    makecontext(&fiber.context, fiberEntry, 0);
}

//! Switch from the scheduler to `fiber` until it waits at a barrier or finishes. Kept out of line so that no
//! caller's locals live across swapcontext().
[[gnu::noinline]] inline void resume(Block& block, Fiber& fiber)
{
    threadIdx = fiber.index;
    block.current = &fiber;
#if SIMT_ASAN
    __sanitizer_start_switch_fiber(&block.fakeStack, fiber.stack.get(), kSTACK_BYTES);
#endif
    swapcontext(&block.scheduler, &fiber.context);
#if SIMT_ASAN
    __sanitizer_finish_switch_fiber(block.fakeStack, nullptr, nullptr);
#endif
}

//! Run every thread of one block to completion. Returns false (with block.fault set) on a fault.
inline bool runBlock(Block& block)
{
    for (Fiber& fiber : block.fibers)
    {
        restart(fiber);
    }
    block.sync.arrived = 0;
    for (Barrier& barrier : block.warpBarriers)
    {
        barrier.arrived = 0;
    }
    size_t remaining = block.fibers.size();
    while (remaining > 0 && block.fault.empty())
    {
        bool progressed = false;
        for (Fiber& fiber : block.fibers)
        {
            if (fiber.done || (fiber.waitingOn != nullptr && fiber.waitingOn->generation == fiber.waitGeneration))
            {
                continue;
            }
            fiber.waitingOn = nullptr;
            progressed = true;
            resume(block, fiber);
            if (fiber.done)
            {
                --remaining;
            }
            if (!block.fault.empty())
            {
                break;
            }
        }
        if (!progressed && block.fault.empty())
        {
            for (Fiber const& fiber : block.fibers)
            {
                if (!fiber.done)
                {
                    block.fault = "deadlock: " + describe(fiber, block)
                        + " that other threads of its block/warp never reach (divergent barrier)";
                    break;
                }
            }
        }
    }
    // Fibers abandoned after a fault hold only trivially destructible kernel locals.
    return block.fault.empty();
}

template <typename Kernel, typename Params>
struct Invocation
{
    Kernel kernel;
    Params params;

    static void run(void* self)
    {
        auto* invocation = static_cast<Invocation*>(self);
        Params copy = invocation->params; // each CUDA thread has its own copy of the arguments
        std::apply(invocation->kernel, copy);
    }
};

//! `kernel<<<grid, block, sharedBytes, stream>>>(args...)`, run to completion before returning. A fault sets
//! cudaGetLastError() to cudaErrorLaunchFailure and gFault to its description.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t sharedBytes, cudaStream_t stream,
    Args&&... args)
{
    (void) stream;
    uint64_t const threads = uint64_t{block.x} * block.y * block.z;
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || threads == 0 || threads > 1024 || block.x > 1024
        || block.y > 1024 || block.z > 64 || grid.y > 65535 || grid.z > 65535 || grid.x > 0x7fffffffU
        || sharedBytes > (48U << 10))
    {
        gLastError = cudaErrorInvalidConfiguration;
        return;
    }
    using Tuple = std::tuple<std::decay_t<Params>...>;
    Invocation<void (*)(Params...), Tuple> invocation{kernel, Tuple(std::forward<Args>(args)...)};

    Block state;
    state.body = &decltype(invocation)::run;
    state.argument = &invocation;
    state.sync.expected = static_cast<int>(threads);
    int const warps = static_cast<int>((threads + 31) / 32);
    state.warpBarriers.resize(static_cast<size_t>(warps));
    for (int w = 0; w < warps; ++w)
    {
        int const lanes = static_cast<int>(threads) - 32 * w;
        state.warpBarriers[static_cast<size_t>(w)].expected = lanes < 32 ? lanes : 32;
    }
    state.slots.resize(static_cast<size_t>(warps) * 32);
    state.fibers.resize(static_cast<size_t>(threads));
    int linear = 0;
    for (unsigned z = 0; z < block.z; ++z)
    {
        for (unsigned y = 0; y < block.y; ++y)
        {
            for (unsigned x = 0; x < block.x; ++x)
            {
                Fiber& fiber = state.fibers[static_cast<size_t>(linear)];
                fiber.index = uint3{x, y, z};
                fiber.linear = linear++;
                fiber.stack.reset(new char[kSTACK_BYTES]);
            }
        }
    }

    Block* const outer = gBlock;
    gBlock = &state;
    gridDim = grid;
    blockDim = block;
    for (unsigned bz = 0; bz < grid.z && state.fault.empty(); ++bz)
    {
        for (unsigned by = 0; by < grid.y && state.fault.empty(); ++by)
        {
            for (unsigned bx = 0; bx < grid.x && state.fault.empty(); ++bx)
            {
                blockIdx = uint3{bx, by, bz};
                runBlock(state);
            }
        }
    }
    gBlock = outer;
    if (!state.fault.empty())
    {
        gFault = state.fault;
        gLastError = cudaErrorLaunchFailure;
    }
}

//! The shuffle of lane `lane` in a `width`-lane segment: CUDA's rules for lanes whose source is out of range.
inline int sourceLane(ShuffleKind kind, int lane, int argument, int width)
{
    int const segmentStart = lane & ~(width - 1);
    int const inSegment = lane & (width - 1);
    switch (kind)
    {
    case ShuffleKind::kIDX: return segmentStart + (argument & (width - 1));
    case ShuffleKind::kUP: return inSegment >= argument ? lane - argument : lane;
    case ShuffleKind::kDOWN: return inSegment + argument < width ? lane + argument : lane;
    }
    return lane;
}

template <typename T>
T shuffle(unsigned int mask, T value, int argument, int width, ShuffleKind kind)
{
    static_assert(sizeof(T) <= sizeof(Slot::bytes), "shuffled type too large");
    Block& block = *gBlock;
    Fiber& fiber = *block.current;
    int const warp = fiber.linear / 32;
    int const lane = fiber.linear % 32;
    Barrier& barrier = block.warpBarriers[static_cast<size_t>(warp)];
    if (barrier.expected != 32 || mask != 0xffffffffU)
    {
        fail("a shuffle with a mask other than all 32 lanes of a full warp");
    }
    if (width < 1 || width > 32 || (width & (width - 1)) != 0)
    {
        fail("a shuffle width that is not a power of two in [1, 32]: " + std::to_string(width));
    }
    if (kind != ShuffleKind::kIDX && argument < 0)
    {
        fail("a negative shuffle delta");
    }
    Slot* const slots = &block.slots[static_cast<size_t>(warp) * 32];
    std::memcpy(slots[lane].bytes, &value, sizeof(T));
    slots[lane].kind = kind;
    slots[lane].width = width;
    arrive(barrier); // every lane has published its value
    for (int other = 0; other < 32; ++other)
    {
        if (slots[other].kind != kind || slots[other].width != width)
        {
            fail("lanes of one warp execute different shuffles (divergent control flow)");
        }
    }
    T result;
    std::memcpy(&result, slots[sourceLane(kind, lane, argument, width)].bytes, sizeof(T));
    arrive(barrier); // every lane has read before any lane publishes its next value
    return result;
}

} // namespace simt

inline void __syncthreads()
{
    simt::arrive(simt::gBlock->sync);
}

template <typename T>
T __shfl_sync(unsigned int mask, T value, int sourceLane, int width = warpSize)
{
    return simt::shuffle(mask, value, sourceLane, width, simt::ShuffleKind::kIDX);
}

template <typename T>
T __shfl_up_sync(unsigned int mask, T value, unsigned int delta, int width = warpSize)
{
    return simt::shuffle(mask, value, static_cast<int>(delta), width, simt::ShuffleKind::kUP);
}

template <typename T>
T __shfl_down_sync(unsigned int mask, T value, unsigned int delta, int width = warpSize)
{
    return simt::shuffle(mask, value, static_cast<int>(delta), width, simt::ShuffleKind::kDOWN);
}

#endif // CORNERNET_TESTS_SIMT_H
