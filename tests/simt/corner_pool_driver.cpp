// Runs cornerPoolForward() of trt_plugins/cornerPoolPlugin/cornerPoolKernel.cu on the SIMT emulator.
//
// stdin: one case per line in case_io.h's format. stdout: one line per case, "ok" or "error CODE TEXT".
#include <iostream>
#include <string>

#include "case_io.h"
#include "cuda_runtime_api.h"

extern "C" int cornerPoolForward(void const* input, void* output, int dtype, int n, int c, int h, int w, int mode,
    cudaStream_t stream);

int main()
{
    std::string line;
    while (std::getline(std::cin, line))
    {
        if (line.empty())
        {
            continue;
        }
        PoolCase poolCase;
        if (!poolCase.parse(line))
        {
            std::cout << "error -1 bad manifest line: " << line << std::endl;
            return 2;
        }
        PoolBuffers buffers(poolCase);
        simt::gCurrentDevice = poolCase.device;
        simt::gFault.clear();
        int const status = cornerPoolForward(buffers.input(), buffers.output(), poolCase.dtype, poolCase.n,
            poolCase.c, poolCase.h, poolCase.w, poolCase.mode, nullptr);
        if (status != 0)
        {
            std::cout << "error " << status << ' ' << cudaGetErrorString(static_cast<cudaError_t>(status)) << ' '
                      << simt::gFault << std::endl;
            continue;
        }
        buffers.writeOutput();
        std::cout << "ok" << std::endl;
    }
    return 0;
}
