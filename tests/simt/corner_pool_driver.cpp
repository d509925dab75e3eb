// Runs cornerPoolForward() of trt_plugins/cornerPoolPlugin/cornerPoolKernel.cu on the SIMT emulator.
//
// stdin: one case per line, "dtype n c h w mode device offset input.bin output.bin" (dtype and mode as in
// cornerPoolKernel.cuh, device an emulated device of simt.h, offset elements of slack before the data so
// the pointers are misaligned). Each buffer is its own heap block ending at its last element, so an
// out-of-bounds access past the end is caught by AddressSanitizer. stdout: one line per case, "ok" or
// "error CODE TEXT".
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "cuda_runtime_api.h"

extern "C" int cornerPoolForward(void const* input, void* output, int dtype, int n, int c, int h, int w, int mode,
    cudaStream_t stream);

namespace
{

size_t elementBytes(int dtype)
{
    return dtype == 0 ? 4 : 2;
}

} // namespace

int main()
{
    std::string line;
    while (std::getline(std::cin, line))
    {
        if (line.empty())
        {
            continue;
        }
        std::istringstream fields(line);
        int dtype = 0, n = 0, c = 0, h = 0, w = 0, mode = 0, device = 0;
        size_t offset = 0;
        std::string inputPath, outputPath;
        if (!(fields >> dtype >> n >> c >> h >> w >> mode >> device >> offset >> inputPath >> outputPath))
        {
            std::cout << "error -1 bad manifest line: " << line << std::endl;
            return 2;
        }
        size_t const count = static_cast<size_t>(n) * c * h * w;
        size_t const bytes = (count + offset) * elementBytes(dtype);
        std::vector<char> host(count * elementBytes(dtype));
        std::ifstream(inputPath, std::ios::binary).read(host.data(), static_cast<std::streamsize>(host.size()));
        char* input = static_cast<char*>(std::malloc(bytes > 0 ? bytes : 1));
        char* output = static_cast<char*>(std::malloc(bytes > 0 ? bytes : 1));
        char* in = input + offset * elementBytes(dtype);
        char* out = output + offset * elementBytes(dtype);
        std::copy(host.begin(), host.end(), in);
        simt::gCurrentDevice = device;
        simt::gFault.clear();
        int const status = cornerPoolForward(in, out, dtype, n, c, h, w, mode, nullptr);
        if (status != 0)
        {
            std::cout << "error " << status << ' ' << cudaGetErrorString(static_cast<cudaError_t>(status)) << ' '
                      << simt::gFault << std::endl;
        }
        else
        {
            std::ofstream(outputPath, std::ios::binary).write(out, static_cast<std::streamsize>(host.size()));
            std::cout << "ok" << std::endl;
        }
        std::free(input);
        std::free(output);
    }
    return 0;
}
