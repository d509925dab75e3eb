// Drives the CornerPool IPluginV3 (cornerPoolPlugin.cpp) through TensorRT's plugin interfaces the way TensorRT
// does, with the kernels on the SIMT emulator: library entry points, creator, capabilities, build-time queries,
// serialisation round trip, attachToContext, onShapeChange and enqueue. Needs TensorRT's headers only (no
// libnvinfer, no GPU).
//
// First it runs its own checks of the build-time interface and the error paths and prints "checks ok". Then,
// like corner_pool_driver.cpp, it reads cases in case_io.h's format from stdin and enqueues each through a
// runtime plugin (dtype 0 kFLOAT, 1 kHALF, 2 kBF16), printing "ok" or "error TEXT". Any failed check prints
// "FAIL ..." and exits 1.
#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

#include "NvInferRuntime.h"
#include "case_io.h"
#include "cuda_runtime_api.h"

extern "C" void setLoggerFinder(nvinfer1::ILoggerFinder* finder);
extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);

using namespace nvinfer1;

namespace
{

#define CHECK(condition)                                                                                               \
    do                                                                                                                 \
    {                                                                                                                  \
        if (!(condition))                                                                                              \
        {                                                                                                              \
            std::cout << "FAIL line " << __LINE__ << ": " #condition << std::endl;                                    \
            std::exit(1);                                                                                              \
        }                                                                                                              \
    } while (0)

//! Collects what the plugin logs, as TensorRT's logger would receive it.
class CapturingLogger : public ILogger
{
public:
    void log(Severity severity, char const* message) noexcept override
    {
        messages.emplace_back(severity, message);
    }

    bool saw(Severity severity, char const* text) const
    {
        return std::any_of(messages.begin(), messages.end(), [&](auto const& entry) {
            return entry.first == severity && entry.second.find(text) != std::string::npos;
        });
    }

    std::vector<std::pair<Severity, std::string>> messages;
};

class LoggerFinder : public ILoggerFinder
{
public:
    explicit LoggerFinder(ILogger* logger)
        : mLogger(logger)
    {
    }
    ILogger* findLogger() override
    {
        return mLogger;
    }

private:
    ILogger* mLogger;
};

CapturingLogger gLogger;
LoggerFinder gFinder(&gLogger);

IPluginCreatorV3One* creator()
{
    int32_t count = -1;
    IPluginCreatorInterface* const* creators = getCreators(count);
    CHECK(creators != nullptr && count == 1);
    InterfaceInfo const info = creators[0]->getInterfaceInfo();
    CHECK(std::string(info.kind) == "PLUGIN CREATOR_V3ONE" && info.major == 1 && info.minor == 0);
    return static_cast<IPluginCreatorV3One*>(creators[0]);
}

IPluginV3* createWithMode(int32_t mode, TensorRTPhase phase, PluginFieldType type = PluginFieldType::kINT32)
{
    PluginField field("mode", &mode, type, 1);
    PluginFieldCollection fields{1, &field};
    return creator()->createPlugin("pool_layer", &fields, phase);
}

constexpr TensorFormat kLINEAR = TensorFormat::kLINEAR;

DynamicPluginTensorDesc dynamicDesc(DataType type, TensorFormat format)
{
    DynamicPluginTensorDesc desc{};
    desc.desc.type = type;
    desc.desc.format = format;
    desc.desc.dims.nbDims = 4;
    for (int i = 0; i < 4; ++i)
    {
        desc.desc.dims.d[i] = -1;
        desc.min.d[i] = 1;
        desc.max.d[i] = 512;
    }
    desc.min.nbDims = desc.max.nbDims = 4;
    return desc;
}

void checkBuildInterface()
{
    IPluginCreatorV3One* const c = creator();
    CHECK(std::string(c->getPluginName()) == "CornerPool");
    CHECK(std::string(c->getPluginVersion()) == "1");
    CHECK(std::string(c->getPluginNamespace()) == "cornernet");
    PluginFieldCollection const* names = c->getFieldNames();
    CHECK(names != nullptr && names->nbFields == 1 && std::string(names->fields[0].name) == "mode");
    CHECK(names->fields[0].type == PluginFieldType::kINT32);

    IPluginV3* const plugin = createWithMode(2, TensorRTPhase::kBUILD);
    CHECK(plugin != nullptr);
    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime
        = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    CHECK(core != nullptr && build != nullptr && runtime != nullptr);
    CHECK(std::string(core->getInterfaceInfo().kind) == "PLUGIN_V3ONE_CORE");
    CHECK(std::string(build->getInterfaceInfo().kind) == "PLUGIN_V3ONE_BUILD");
    CHECK(std::string(runtime->getInterfaceInfo().kind) == "PLUGIN_V3ONE_RUNTIME");
    CHECK(std::string(core->getPluginName()) == "CornerPool" && std::string(core->getPluginNamespace()) == "cornernet");
    CHECK(build->getNbOutputs() == 1);

    // Output type = input type for fp32/fp16/bf16; anything else is refused and logged.
    for (DataType type : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16})
    {
        DataType out = DataType::kINT32;
        CHECK(build->getOutputDataTypes(&out, 1, &type, 1) == 0 && out == type);
    }
    DataType const int8 = DataType::kINT8;
    DataType out = DataType::kFLOAT;
    CHECK(build->getOutputDataTypes(&out, 1, &int8, 1) == -1);
    CHECK(gLogger.saw(ILogger::Severity::kERROR, "getOutputDataTypes: input type must be"));

    // The output shape is the input shape (the expressions are passed through, never evaluated here).
    static int dummies[4];
    DimsExprs in{};
    in.nbDims = 4;
    for (int i = 0; i < 4; ++i)
    {
        in.d[i] = reinterpret_cast<IDimensionExpr const*>(&dummies[i]);
    }
    DimsExprs shape{};
    alignas(16) static unsigned char unusedBuilder[64]; // getOutputShapes must not touch the builder
    IExprBuilder& builder = *reinterpret_cast<IExprBuilder*>(unusedBuilder);
    CHECK(build->getOutputShapes(&in, 1, nullptr, 0, &shape, 1, builder) == 0);
    CHECK(shape.nbDims == 4 && std::equal(in.d, in.d + 4, shape.d));
    DimsExprs in3 = in;
    in3.nbDims = 3;
    CHECK(build->getOutputShapes(&in3, 1, nullptr, 0, &shape, 1, builder) == -1);
    CHECK(gLogger.saw(ILogger::Severity::kERROR, "expects a 4-D NCHW input, got 3-D"));

    // Formats: linear fp32/fp16/bf16 with the output matching the input; nothing else.
    for (DataType type : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16, DataType::kINT8, DataType::kINT32})
    {
        bool const supported = type == DataType::kFLOAT || type == DataType::kHALF || type == DataType::kBF16;
        DynamicPluginTensorDesc io[2] = {dynamicDesc(type, kLINEAR), dynamicDesc(type, kLINEAR)};
        CHECK(build->supportsFormatCombination(0, io, 1, 1) == supported);
        if (supported)
        {
            CHECK(build->supportsFormatCombination(1, io, 1, 1));
            io[1].desc.type = type == DataType::kFLOAT ? DataType::kHALF : DataType::kFLOAT;
            CHECK(!build->supportsFormatCombination(1, io, 1, 1));
            io[1] = io[0];
            io[0].desc.format = TensorFormat::kCHW32;
            CHECK(!build->supportsFormatCombination(0, io, 1, 1));
            DynamicPluginTensorDesc good[2] = {dynamicDesc(type, kLINEAR), dynamicDesc(type, kLINEAR)};
            CHECK(build->configurePlugin(&good[0], 1, &good[1], 1) == 0);
            CHECK(build->getWorkspaceSize(&good[0], 1, &good[1], 1) == 0);
        }
    }
    DynamicPluginTensorDesc mixed[2] = {dynamicDesc(DataType::kFLOAT, kLINEAR), dynamicDesc(DataType::kHALF, kLINEAR)};
    CHECK(build->configurePlugin(&mixed[0], 1, &mixed[1], 1) == -1);

    // Serialisation round trip: the fields written are the fields a runtime-phase creation reads.
    PluginFieldCollection const* saved = runtime->getFieldsToSerialize();
    CHECK(saved != nullptr && saved->nbFields == 1 && std::string(saved->fields[0].name) == "mode");
    CHECK(saved->fields[0].type == PluginFieldType::kINT32 && saved->fields[0].length == 1);
    CHECK(*static_cast<int32_t const*>(saved->fields[0].data) == 2);
    IPluginV3* const restored = c->createPlugin("pool_layer", saved, TensorRTPhase::kRUNTIME);
    CHECK(restored != nullptr);
    auto* restoredRuntime
        = static_cast<IPluginV3OneRuntime*>(restored->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    CHECK(*static_cast<int32_t const*>(restoredRuntime->getFieldsToSerialize()->fields[0].data) == 2);
    IPluginV3* const cloned = plugin->clone();
    CHECK(cloned != nullptr && cloned != plugin);
    delete cloned;
    delete restored;
    delete plugin;

    // Bad fields: a clear error through the logger and no plugin; a missing field: a warning and the default.
    size_t const before = gLogger.messages.size();
    CHECK(createWithMode(7, TensorRTPhase::kBUILD) == nullptr);
    CHECK(gLogger.saw(
        ILogger::Severity::kERROR, "field 'mode' must be 0 (top), 1 (bottom), 2 (left) or 3 (right), got 7"));
    CHECK(createWithMode(1, TensorRTPhase::kBUILD, PluginFieldType::kFLOAT32) == nullptr);
    CHECK(gLogger.saw(ILogger::Severity::kERROR, "pool_layer: field 'mode' must be one kINT32 value"));
    PluginFieldCollection empty{0, nullptr};
    IPluginV3* const defaulted = c->createPlugin("pool_layer", &empty, TensorRTPhase::kBUILD);
    CHECK(defaulted != nullptr);
    CHECK(gLogger.saw(ILogger::Severity::kWARNING, "pool_layer: field 'mode' not given, using its default 0"));
    delete defaulted;
    CHECK(gLogger.messages.size() > before);
}

DataType dataType(int code)
{
    return code == 0 ? DataType::kFLOAT : code == 1 ? DataType::kHALF : DataType::kBF16;
}

} // namespace

int main()
{
    setLoggerFinder(&gFinder);
    checkBuildInterface();
    std::cout << "checks ok" << std::endl;

    std::string line;
    while (std::getline(std::cin, line))
    {
        if (line.empty())
        {
            continue;
        }
        PoolCase poolCase;
        CHECK(poolCase.parse(line));

        // As at deserialisation: creator (runtime phase) -> attachToContext -> onShapeChange -> enqueue.
        IPluginV3* const built = createWithMode(poolCase.mode, TensorRTPhase::kRUNTIME);
        CHECK(built != nullptr);
        auto* builtRuntime
            = static_cast<IPluginV3OneRuntime*>(built->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        IPluginV3* const attached = builtRuntime->attachToContext(nullptr);
        CHECK(attached != nullptr);
        auto* runtime
            = static_cast<IPluginV3OneRuntime*>(attached->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        PluginTensorDesc desc[2]{};
        for (PluginTensorDesc& d : desc)
        {
            d.type = dataType(poolCase.dtype);
            d.format = TensorFormat::kLINEAR;
            d.dims.nbDims = 4;
            d.dims.d[0] = poolCase.n;
            d.dims.d[1] = poolCase.c;
            d.dims.d[2] = poolCase.h;
            d.dims.d[3] = poolCase.w;
        }
        CHECK(runtime->onShapeChange(&desc[0], 1, &desc[1], 1) == 0);

        PoolBuffers buffers(poolCase);
        simt::gCurrentDevice = poolCase.device;
        void const* inputs[] = {buffers.input()};
        void* outputs[] = {buffers.output()};
        if (runtime->enqueue(&desc[0], &desc[1], inputs, outputs, nullptr, nullptr) == 0)
        {
            buffers.writeOutput();
            std::cout << "ok" << std::endl;
        }
        else
        {
            std::cout << "error " << (gLogger.messages.empty() ? "" : gLogger.messages.back().second) << std::endl;
        }
        delete attached;
        delete built;
    }
    return 0;
}
