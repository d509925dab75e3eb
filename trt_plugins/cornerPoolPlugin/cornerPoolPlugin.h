/*
 * CornerPool TensorRT plugin (IPluginV3, TensorRT 10.x and 11.x): the TensorRT interface only.
 * The kernels are in cornerPoolKernel.cu; semantics, fields and formats in README.md.
 */
#ifndef CORNERNET_CORNER_POOL_PLUGIN_H
#define CORNERNET_CORNER_POOL_PLUGIN_H

#include "NvInferRuntime.h"

#include <cstdint>
#include <vector>

namespace cornernet
{
namespace plugin
{

constexpr char const* kCORNER_POOL_PLUGIN_NAME{"CornerPool"};
constexpr char const* kCORNER_POOL_PLUGIN_VERSION{"1"};
constexpr char const* kCORNER_POOL_PLUGIN_NAMESPACE{"cornernet"};

//! Values of the plugin fields, with their defaults (the field list itself is kFIELDS in cornerPoolPlugin.cpp).
struct CornerPoolParams
{
    int32_t mode{0}; //!< 0 top, 1 bottom, 2 left, 3 right (cornernet::CornerPoolMode)
};

class CornerPoolPlugin : public nvinfer1::IPluginV3,
                         public nvinfer1::IPluginV3OneCore,
                         public nvinfer1::IPluginV3OneBuild,
                         public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit CornerPoolPlugin(CornerPoolParams const& params);
    CornerPoolPlugin(CornerPoolPlugin const&) = delete;
    CornerPoolPlugin& operator=(CornerPoolPlugin const&) = delete;
    ~CornerPoolPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    CornerPoolParams mParams;
    std::vector<nvinfer1::PluginField> mFieldsToSerialize;
    nvinfer1::PluginFieldCollection mFieldCollectionToSerialize{};
};

class CornerPoolPluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    CornerPoolPluginCreator();
    ~CornerPoolPluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

} // namespace plugin
} // namespace cornernet

//! Entry points for IPluginRegistry::loadLibrary (Python `get_plugin_registry().load_library`) and
//! `trtexec --dynamicPlugins`.
extern "C" __attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* finder);
extern "C" __attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(
    int32_t& nbCreators);

#endif // CORNERNET_CORNER_POOL_PLUGIN_H
