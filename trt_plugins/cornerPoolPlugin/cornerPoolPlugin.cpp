/*
 * CornerPool TensorRT plugin (IPluginV3): see cornerPoolPlugin.h and README.md.
 */
#include "cornerPoolPlugin.h"

#include "cornerPoolKernel.cuh"

#include <array>
#include <cstdio>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>

using nvinfer1::DataType;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::ILogger;
using nvinfer1::IPluginCapability;
using nvinfer1::IPluginV3;
using nvinfer1::PluginCapabilityType;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginFieldType;
using nvinfer1::PluginTensorDesc;
using nvinfer1::TensorFormat;

namespace cornernet
{
namespace plugin
{
namespace
{

// BEGIN PLUGIN FIELDS
// The plugin's one list of fields: the creator's getFieldNames(), what createPlugin() parses and what
// getFieldsToSerialize() writes all come from it. trt_plugins/fields.py parses these entries; a test checks them
// against trt_plugins.fields.FIELDS, which the ONNX export writes as node attributes.
struct FieldSpec
{
    char const* name;
    PluginFieldType type;
    int32_t CornerPoolParams::*member; // every field is one int32 value
};

constexpr FieldSpec kFIELDS[] = {
    {"mode", PluginFieldType::kINT32, &CornerPoolParams::mode},
};
// END PLUGIN FIELDS

constexpr size_t kNB_FIELDS = sizeof(kFIELDS) / sizeof(kFIELDS[0]);

//! An error reported through the TensorRT logger by the noexcept method that catches it.
class PluginError : public std::runtime_error
{
public:
    using std::runtime_error::runtime_error;
};

//! Keeps the ILoggerFinder that TensorRT hands over through setLoggerFinder().
class LoggerFinderHolder
{
public:
    void set(nvinfer1::ILoggerFinder* finder)
    {
        std::lock_guard<std::mutex> lock(mMutex);
        mFinder = finder;
    }

    ILogger* logger()
    {
        std::lock_guard<std::mutex> lock(mMutex);
        return mFinder != nullptr ? mFinder->findLogger() : nullptr;
    }

private:
    std::mutex mMutex;
    nvinfer1::ILoggerFinder* mFinder{nullptr};
};

LoggerFinderHolder gLoggerFinder;

void logMessage(ILogger::Severity severity, std::string const& message) noexcept
{
    try
    {
        std::string const text = std::string{"[cornernet::CornerPool] "} + message;
        ILogger* logger = gLoggerFinder.logger();
        if (logger != nullptr)
        {
            logger->log(severity, text.c_str());
        }
        else if (severity <= ILogger::Severity::kWARNING)
        {
            std::fprintf(stderr, "%s\n", text.c_str());
        }
    }
    catch (...)
    {
        // Nothing sensible is left to report to.
    }
}

void logException(char const* method) noexcept
{
    try
    {
        throw;
    }
    catch (std::exception const& e)
    {
        logMessage(ILogger::Severity::kERROR, std::string{method} + ": " + e.what());
    }
    catch (...)
    {
        logMessage(ILogger::Severity::kERROR, std::string{method} + ": unknown exception");
    }
}

char const* dataTypeName(DataType type)
{
    switch (type)
    {
    case DataType::kFLOAT: return "kFLOAT";
    case DataType::kHALF: return "kHALF";
    case DataType::kBF16: return "kBF16";
    default: return "an unsupported type";
    }
}

bool isSupportedType(DataType type)
{
    return type == DataType::kFLOAT || type == DataType::kHALF || type == DataType::kBF16;
}

void checkIoCounts(int32_t nbInputs, int32_t nbOutputs)
{
    if (nbInputs != 1 || nbOutputs != 1)
    {
        throw PluginError("expects 1 input and 1 output, got " + std::to_string(nbInputs) + " and "
            + std::to_string(nbOutputs));
    }
}

void checkRank(int32_t nbDims)
{
    if (nbDims != 4)
    {
        throw PluginError("expects a 4-D NCHW input, got " + std::to_string(nbDims) + "-D");
    }
}

void checkParams(CornerPoolParams const& params)
{
    if (params.mode < 0 || params.mode >= kNB_CORNER_POOL_MODES)
    {
        throw PluginError(
            "field 'mode' must be 0 (top), 1 (bottom), 2 (left) or 3 (right), got " + std::to_string(params.mode));
    }
}

} // namespace

// ----------------------------------------------------------------------------------------------------------------
// CornerPoolPlugin
//
// Methods that only return a constant or a member (names, version, output count, workspace size, field names)
// have nothing that can throw; every other noexcept method catches everything, logs it through TensorRT's logger
// and returns an error value (-1, nullptr or false).

CornerPoolPlugin::CornerPoolPlugin(CornerPoolParams const& params)
    : mParams(params)
{
    checkParams(mParams);
}

IPluginCapability* CornerPoolPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    try
    {
        switch (type)
        {
        case PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
        case PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
        case PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
        }
        throw PluginError("unknown capability type " + std::to_string(static_cast<int32_t>(type)));
    }
    catch (...)
    {
        logException("getCapabilityInterface");
    }
    return nullptr;
}

IPluginV3* CornerPoolPlugin::clone() noexcept
{
    try
    {
        return new CornerPoolPlugin(mParams);
    }
    catch (...)
    {
        logException("clone");
    }
    return nullptr;
}

char const* CornerPoolPlugin::getPluginName() const noexcept
{
    return kCORNER_POOL_PLUGIN_NAME;
}

char const* CornerPoolPlugin::getPluginVersion() const noexcept
{
    return kCORNER_POOL_PLUGIN_VERSION;
}

char const* CornerPoolPlugin::getPluginNamespace() const noexcept
{
    return kCORNER_POOL_PLUGIN_NAMESPACE;
}

int32_t CornerPoolPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        checkIoCounts(nbInputs, nbOutputs);
        if (in == nullptr || out == nullptr)
        {
            throw PluginError("null tensor descriptions");
        }
        checkRank(in[0].desc.dims.nbDims);
        if (!isSupportedType(in[0].desc.type) || out[0].desc.type != in[0].desc.type)
        {
            throw PluginError(std::string{"input and output must share kFLOAT, kHALF or kBF16; got "}
                + dataTypeName(in[0].desc.type) + " and " + dataTypeName(out[0].desc.type));
        }
        return 0;
    }
    catch (...)
    {
        logException("configurePlugin");
    }
    return -1;
}

int32_t CornerPoolPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    try
    {
        checkIoCounts(nbInputs, nbOutputs);
        if (outputTypes == nullptr || inputTypes == nullptr)
        {
            throw PluginError("null type arrays");
        }
        if (!isSupportedType(inputTypes[0]))
        {
            throw PluginError(std::string{"input type must be kFLOAT, kHALF or kBF16, got "} + dataTypeName(inputTypes[0]));
        }
        outputTypes[0] = inputTypes[0];
        return 0;
    }
    catch (...)
    {
        logException("getOutputDataTypes");
    }
    return -1;
}

int32_t CornerPoolPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept
{
    try
    {
        checkIoCounts(nbInputs, nbOutputs);
        if (inputs == nullptr || outputs == nullptr)
        {
            throw PluginError("null shape arrays");
        }
        checkRank(inputs[0].nbDims);
        outputs[0] = inputs[0];
        return 0;
    }
    catch (...)
    {
        logException("getOutputShapes");
    }
    return -1;
}

bool CornerPoolPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    try
    {
        if (inOut == nullptr || nbInputs != 1 || nbOutputs != 1 || pos < 0 || pos > 1)
        {
            return false;
        }
        PluginTensorDesc const& desc = inOut[pos].desc;
        if (desc.format != TensorFormat::kLINEAR)
        {
            return false;
        }
        return pos == 0 ? isSupportedType(desc.type) : desc.type == inOut[0].desc.type;
    }
    catch (...)
    {
        logException("supportsFormatCombination");
    }
    return false;
}

int32_t CornerPoolPlugin::getNbOutputs() const noexcept
{
    return 1;
}

size_t CornerPoolPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    return 0;
}

int32_t CornerPoolPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        checkIoCounts(nbInputs, nbOutputs);
        if (in == nullptr || out == nullptr)
        {
            throw PluginError("null tensor descriptions");
        }
        checkRank(in[0].dims.nbDims);
        if (in[0].type != out[0].type)
        {
            throw PluginError(std::string{"output type "} + dataTypeName(out[0].type) + " differs from input type "
                + dataTypeName(in[0].type));
        }
        return 0;
    }
    catch (...)
    {
        logException("onShapeChange");
    }
    return -1;
}

int32_t CornerPoolPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    try
    {
        if (inputDesc == nullptr || inputs == nullptr || outputs == nullptr)
        {
            throw PluginError("null tensor arguments");
        }
        nvinfer1::Dims const& dims = inputDesc[0].dims;
        checkRank(dims.nbDims);
        constexpr int64_t kINT32_MAX = std::numeric_limits<int32_t>::max();
        if (dims.d[2] > kINT32_MAX || dims.d[3] > kINT32_MAX)
        {
            throw PluginError("H and W must fit in int32");
        }
        int64_t const planes = dims.d[0] * dims.d[1];
        auto const height = static_cast<int32_t>(dims.d[2]);
        auto const width = static_cast<int32_t>(dims.d[3]);
        auto const mode = static_cast<CornerPoolMode>(mParams.mode);
        cudaError_t status = cudaErrorInvalidValue;
        switch (inputDesc[0].type)
        {
        case DataType::kFLOAT:
            status = cornerPoolImpl(stream, static_cast<float const*>(inputs[0]), static_cast<float*>(outputs[0]),
                planes, height, width, mode);
            break;
        case DataType::kHALF:
            status = cornerPoolImpl(stream, static_cast<__half const*>(inputs[0]), static_cast<__half*>(outputs[0]),
                planes, height, width, mode);
            break;
        case DataType::kBF16:
            status = cornerPoolImpl(stream, static_cast<__nv_bfloat16 const*>(inputs[0]),
                static_cast<__nv_bfloat16*>(outputs[0]), planes, height, width, mode);
            break;
        default: throw PluginError(std::string{"unsupported input type "} + dataTypeName(inputDesc[0].type));
        }
        if (status != cudaSuccess)
        {
            throw PluginError(std::string{"kernel launch failed: "} + cudaGetErrorName(status) + " ("
                + cudaGetErrorString(status) + ")");
        }
        return 0;
    }
    catch (...)
    {
        logException("enqueue");
    }
    return -1;
}

IPluginV3* CornerPoolPlugin::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept
{
    // No per-context resources: a context gets its own copy of the parameters.
    return clone();
}

PluginFieldCollection const* CornerPoolPlugin::getFieldsToSerialize() noexcept
{
    try
    {
        // Rebuilt on every call so the pointers always refer to this object's parameters.
        mFieldsToSerialize.clear();
        for (FieldSpec const& spec : kFIELDS)
        {
            mFieldsToSerialize.emplace_back(spec.name, &(mParams.*(spec.member)), spec.type, 1);
        }
        mFieldCollectionToSerialize.nbFields = static_cast<int32_t>(mFieldsToSerialize.size());
        mFieldCollectionToSerialize.fields = mFieldsToSerialize.data();
        return &mFieldCollectionToSerialize;
    }
    catch (...)
    {
        logException("getFieldsToSerialize");
    }
    return nullptr;
}

// ----------------------------------------------------------------------------------------------------------------
// CornerPoolPluginCreator

CornerPoolPluginCreator::CornerPoolPluginCreator()
{
    for (FieldSpec const& spec : kFIELDS)
    {
        mFields.emplace_back(spec.name, nullptr, spec.type, 1);
    }
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
}

char const* CornerPoolPluginCreator::getPluginName() const noexcept
{
    return kCORNER_POOL_PLUGIN_NAME;
}

char const* CornerPoolPluginCreator::getPluginVersion() const noexcept
{
    return kCORNER_POOL_PLUGIN_VERSION;
}

char const* CornerPoolPluginCreator::getPluginNamespace() const noexcept
{
    return kCORNER_POOL_PLUGIN_NAMESPACE;
}

PluginFieldCollection const* CornerPoolPluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

IPluginV3* CornerPoolPluginCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept
{
    try
    {
        std::string const layer = name != nullptr ? name : "<unnamed>";
        CornerPoolParams params; // defaults for fields that are not given
        std::array<bool, kNB_FIELDS> given{};
        int32_t const nbFields = fc != nullptr && fc->fields != nullptr ? fc->nbFields : 0;
        for (int32_t i = 0; i < nbFields; ++i)
        {
            PluginField const& field = fc->fields[i];
            size_t index = 0;
            while (index < kNB_FIELDS && (field.name == nullptr || std::strcmp(field.name, kFIELDS[index].name) != 0))
            {
                ++index;
            }
            if (index == kNB_FIELDS)
            {
                logMessage(ILogger::Severity::kWARNING,
                    layer + ": ignoring unknown field '" + (field.name != nullptr ? field.name : "<null>") + "'");
                continue;
            }
            FieldSpec const& spec = kFIELDS[index];
            if (field.type != spec.type || field.length != 1 || field.data == nullptr)
            {
                throw PluginError(layer + ": field '" + spec.name + "' must be one kINT32 value (got type "
                    + std::to_string(static_cast<int32_t>(field.type)) + ", length " + std::to_string(field.length)
                    + ")");
            }
            params.*(spec.member) = *static_cast<int32_t const*>(field.data);
            given[index] = true;
        }
        if (phase == nvinfer1::TensorRTPhase::kBUILD)
        {
            for (size_t index = 0; index < kNB_FIELDS; ++index)
            {
                if (!given[index])
                {
                    logMessage(ILogger::Severity::kWARNING,
                        layer + ": field '" + kFIELDS[index].name + "' not given, using its default "
                            + std::to_string(params.*(kFIELDS[index].member)));
                }
            }
        }
        return new CornerPoolPlugin(params);
    }
    catch (...)
    {
        logException("createPlugin");
    }
    return nullptr;
}

} // namespace plugin
} // namespace cornernet

// --------------------------------------------------------------------------------------------------------------------
// Library entry points

extern "C" void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    try
    {
        cornernet::plugin::gLoggerFinder.set(finder);
    }
    catch (...)
    {
        // std::mutex::lock failed: keep logging to stderr rather than let an exception cross the C boundary.
    }
}

extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    nbCreators = 0;
    try
    {
        static cornernet::plugin::CornerPoolPluginCreator sCornerPoolCreator;
        static nvinfer1::IPluginCreatorInterface* const sCreators[] = {&sCornerPoolCreator};
        nbCreators = static_cast<int32_t>(sizeof(sCreators) / sizeof(sCreators[0]));
        return sCreators;
    }
    catch (...)
    {
        cornernet::plugin::logException("getCreators");
    }
    return nullptr;
}
