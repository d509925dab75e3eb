// One CornerPool test case as the drivers read it from stdin, and its host buffers.
//
// Line format: "dtype n c h w mode device offset input.bin output.bin" (dtype and mode as in
// cornerPoolKernel.cuh, device an emulated device of simt.h, offset elements of slack before the data so the
// pointers are misaligned). Each buffer is its own heap block ending at its last element, so an access past
// the end is caught by AddressSanitizer.
#pragma once
#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

struct PoolCase
{
    int dtype = 0, n = 0, c = 0, h = 0, w = 0, mode = 0, device = 0;
    size_t offset = 0;
    std::string inputPath, outputPath;

    //! Parse one manifest line; false if it is malformed.
    bool parse(std::string const& line)
    {
        std::istringstream fields(line);
        return static_cast<bool>(fields >> dtype >> n >> c >> h >> w >> mode >> device >> offset >> inputPath
            >> outputPath);
    }

    size_t elementBytes() const
    {
        return dtype == 0 ? 4 : 2;
    }

    size_t dataBytes() const
    {
        return static_cast<size_t>(n) * c * h * w * elementBytes();
    }
};

//! The input (read from the case's file) and output buffers of a case, `offset` elements into their blocks.
class PoolBuffers
{
public:
    explicit PoolBuffers(PoolCase const& poolCase)
        : mCase(poolCase)
    {
        size_t const bytes = poolCase.offset * poolCase.elementBytes() + poolCase.dataBytes();
        mInputBlock = static_cast<char*>(std::malloc(bytes > 0 ? bytes : 1));
        mOutputBlock = static_cast<char*>(std::malloc(bytes > 0 ? bytes : 1));
        std::vector<char> host(poolCase.dataBytes());
        std::ifstream(poolCase.inputPath, std::ios::binary)
            .read(host.data(), static_cast<std::streamsize>(host.size()));
        std::copy(host.begin(), host.end(), input());
    }
    PoolBuffers(PoolBuffers const&) = delete;
    PoolBuffers& operator=(PoolBuffers const&) = delete;
    ~PoolBuffers()
    {
        std::free(mInputBlock);
        std::free(mOutputBlock);
    }

    char* input() const
    {
        return mInputBlock + mCase.offset * mCase.elementBytes();
    }

    char* output() const
    {
        return mOutputBlock + mCase.offset * mCase.elementBytes();
    }

    void writeOutput() const
    {
        std::ofstream(mCase.outputPath, std::ios::binary)
            .write(output(), static_cast<std::streamsize>(mCase.dataBytes()));
    }

private:
    PoolCase mCase;
    char* mInputBlock;
    char* mOutputBlock;
};
